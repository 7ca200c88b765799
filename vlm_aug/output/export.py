"""Export the kept samples of an output directory for VLM fine-tuning.

- `llava`: `llava.json` (a list of LLaVA conversation records) + `images/SHARD/KEY.EXT` (KEY flat:
  `file_stem`).
- `messages`: `data/SHARD.parquet` with `messages` (chat turns) and `images` (a list of
  images, bytes embedded), the layout Hugging Face VLM fine-tuning (e.g. TRL's SFT) reads;
  `datasets.load_dataset("parquet", data_files=...)` decodes `images` as PIL images.
Every exported sample carries `provenance` = {shard, key, image_sha256, run_id}, enough for
`vlm-aug trace OUT KEY --shard SHARD` to print its full history. Image bytes are copied, never re-encoded.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from vlm_aug.formats import IMAGE_EXTS
from vlm_aug.shards.layout import OutputDir

FORMATS = ("llava", "messages")
DEFAULT_INSTRUCTION = "Describe this image in detail."
# Hugging Face `datasets` reads these features from the parquet metadata: images decode to PIL.
HF_FEATURES = {
    "messages": [{"role": {"dtype": "string", "_type": "Value"},
                  "content": [{"type": {"dtype": "string", "_type": "Value"},
                               "text": {"dtype": "string", "_type": "Value"}}]}],
    "images": [{"_type": "Image"}],
    "provenance": {k: {"dtype": "string", "_type": "Value"} for k in ("shard", "key", "image_sha256", "run_id")},
}
MESSAGES_SCHEMA = pa.schema([
    ("messages", pa.list_(pa.struct([("role", pa.string()),
                                     ("content", pa.list_(pa.struct([("type", pa.string()),
                                                                      ("text", pa.string())])))]))),
    ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
    ("provenance", pa.struct([(k, pa.string()) for k in ("shard", "key", "image_sha256", "run_id")])),
], metadata={"huggingface": json.dumps({"info": {"features": HF_FEATURES}})})


def kept_samples(out: OutputDir, shard: str) -> Iterator[tuple[str, bytes, str, dict]]:
    """(image ext, image bytes, training caption, provenance link) for each sample in a shard's tar."""
    for sample in out.iter_tar_samples(shard):
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None or "txt" not in sample or "json" not in sample:
            raise ValueError(f"{out.file(shard, 'tar')}: sample {sample['__key__']!r} lacks an image, .txt or "
                             ".json member; is this a vlm_aug output? rerun the shard with --overwrite")
        record = json.loads(sample["json"])
        link = {"shard": shard, "key": sample["__key__"], "image_sha256": hashlib.sha256(sample[ext]).hexdigest(),
                "run_id": record["pipeline"]["run_id"]}
        yield ext, sample[ext], sample["txt"].decode("utf-8"), link


def file_stem(key: str) -> str:
    """A sample key as one flat file name: a key's folders (`a/k`) and '%' percent-encoded, so a member
    path never becomes a path here and two keys never share a file; plain keys stay as they are."""
    return urllib.parse.quote(key, safe="")


def _llava(out: OutputDir, dest: Path, instruction: str) -> int:
    entries = []
    for shard in out.complete_names():
        (dest / "images" / shard).mkdir(parents=True, exist_ok=True)
        for ext, image, caption, link in kept_samples(out, shard):
            relative = f"images/{shard}/{file_stem(link['key'])}.{ext}"
            (dest / relative).write_bytes(image)
            entries.append({"id": f"{shard}/{link['key']}", "image": relative,
                            "conversations": [{"from": "human", "value": f"<image>\n{instruction}"},
                                              {"from": "gpt", "value": caption}],
                            "provenance": link})
    (dest / "llava.json").write_text(json.dumps(entries, indent=1, ensure_ascii=False), encoding="utf-8")
    return len(entries)


def _messages(out: OutputDir, dest: Path, instruction: str) -> int:
    (dest / "data").mkdir(parents=True, exist_ok=True)
    total = 0
    for shard in out.complete_names():
        rows = []
        for ext, image, caption, link in kept_samples(out, shard):
            user = {"role": "user", "content": [{"type": "image", "text": None},
                                                {"type": "text", "text": instruction}]}
            assistant = {"role": "assistant", "content": [{"type": "text", "text": caption}]}
            rows.append({"messages": [user, assistant],
                         "images": [{"bytes": image, "path": f"{file_stem(link['key'])}.{ext}"}], "provenance": link})
        if rows:  # one file per shard keeps memory bounded by the largest shard
            pq.write_table(pa.Table.from_pylist(rows, schema=MESSAGES_SCHEMA), dest / "data" / f"{shard}.parquet")
        total += len(rows)
    return total


def export(output: str, dest: str, fmt: str, instruction: str = DEFAULT_INSTRUCTION) -> int:
    """Write the kept samples of `output` to `dest` in `fmt`; returns how many were exported."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out, target = OutputDir(output), Path(dest)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"export destination {dest} is a file: give a new or empty directory")
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"export destination {dest} is not empty: choose a new directory or empty it")
    target.mkdir(parents=True, exist_ok=True)
    return (_llava if fmt == "llava" else _messages)(out, target, instruction)
