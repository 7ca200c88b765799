"""Export the kept samples of an output directory for VLM fine-tuning.

- `llava`: `llava.json` (a list of LLaVA conversation records) + `images/SHARD/KEY.EXT` (KEY flat:
  `file_stem`).
- `messages`: `data/SHARD.parquet` with `messages` (chat turns) and `images` (a list of
  images, bytes embedded), the layout Hugging Face VLM fine-tuning (e.g. TRL's SFT) reads;
  `datasets.load_dataset("parquet", data_files=...)` decodes `images` as PIL images.
Every exported sample carries `provenance` = {shard, key, image_sha256, run_id}, enough for
`vlm-aug trace OUT KEY --shard SHARD` to print its full history. Image bytes are copied, never re-encoded.
The export is written into a hidden folder beside DEST and renamed to DEST when whole, so a failed
export leaves nothing behind and can be run again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import urllib.parse
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from vlm_aug.formats import IMAGE_EXTS
from vlm_aug.output.query import configurations, failed_inputs, unfinished
from vlm_aug.shards.layout import OutputDir

FORMATS = ("llava", "messages")
STEM_MAX = 200  # bytes of a file name's stem (most file systems allow 255 for the whole name)


class ExportError(ValueError):
    """An output that cannot be exported as it is; the message names the file and the fix."""
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
    try:
        yield from _kept_samples(out, shard)
    except (tarfile.TarError, EOFError, UnicodeDecodeError, json.JSONDecodeError, KeyError) as exc:
        raise ExportError(f"{out.file(shard, 'tar')} cannot be read ({type(exc).__name__}: {exc}): the shard is "
                          f"damaged; remove {out.file(shard, 'stats')} and rerun the run's command to redo it") from None


def _kept_samples(out: OutputDir, shard: str) -> Iterator[tuple[str, bytes, str, dict]]:
    for sample in out.iter_tar_samples(shard):
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None or "txt" not in sample or "json" not in sample:
            raise ValueError(f"{out.file(shard, 'tar')}: sample {sample['__key__']!r} lacks an image, .txt or "
                             ".json member; is this a vlm_aug output? rerun the shard with --overwrite")
        record = json.loads(sample["json"])
        # the input image's sha256, as `trace` shows it (the written image differs when it was re-encoded)
        link = {"shard": shard, "key": sample["__key__"], "image_sha256": record["source"]["image_sha256"],
                "run_id": record["pipeline"]["run_id"]}
        yield ext, sample[ext], sample["txt"].decode("utf-8"), link


def file_stem(key: str) -> str:
    """A sample key as one flat file name: a key's folders (`a/k`) and '%' percent-encoded, so a member
    path never becomes a path here and two keys never share a file; plain keys stay as they are. A
    stem over STEM_MAX bytes (a long key, or one of many non-ASCII characters, each 9 bytes encoded)
    is cut at a whole character and ends in '~' and 16 hex digits of the key's sha256."""
    stem = urllib.parse.quote(key, safe="")
    if len(stem) <= STEM_MAX:
        return stem
    cut = STEM_MAX - 17
    while "%" in stem[cut - 2: cut]:  # not inside a %XX
        cut -= 1
    return f"{stem[:cut]}~{hashlib.sha256(key.encode('utf-8')).hexdigest()[:16]}"


def _llava(out: OutputDir, dest: Path, instruction: str) -> int:
    """llava.json written entry by entry (the bytes `json.dumps(entries, indent=1)` gives), so memory
    holds one entry, not the whole list (~2.7 KB a sample)."""
    n = 0
    with open(dest / "llava.json", "w", encoding="utf-8") as handle:
        handle.write("[")
        for shard in out.complete_names():
            (dest / "images" / shard).mkdir(parents=True, exist_ok=True)
            for ext, image, caption, link in kept_samples(out, shard):
                relative = f"images/{shard}/{file_stem(link['key'])}.{ext}"
                (dest / relative).write_bytes(image)
                entry = {"id": f"{shard}/{link['key']}", "image": relative,
                         "conversations": [{"from": "human", "value": f"<image>\n{instruction}"},
                                           {"from": "gpt", "value": caption}],
                         "provenance": link}
                text = json.dumps(entry, indent=1, ensure_ascii=False).replace("\n", "\n ")  # one level deeper
                handle.write(f"{',' if n else ''}\n {text}")
                n += 1
        handle.write("\n]" if n else "]")
    return n


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
    if "://" in dest or "::" in dest:  # Path() took s3://b/x for a local folder ./s3:/b/x and said it was done
        raise ExportError(f"export writes to a local folder, and {dest} is a URL: export to a local folder, then "
                          "copy it (e.g. `aws s3 sync LOCAL s3://...`); the output it reads may be remote")
    out, target = OutputDir(output), Path(dest)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"export destination {dest} is a file: give a new or empty directory")
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"export destination {dest} is not empty: choose a new directory or empty it")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.partial-{os.getpid()}"  # renamed to DEST when whole
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        n = (_llava if fmt == "llava" else _messages)(out, partial, instruction)
        if target.exists():
            target.rmdir()  # empty, checked above
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return n


def completeness(output: str) -> list[str]:
    """What a user should know of an output being exported that is not whole: a run writing it now or
    stopped part way (`query.unfinished`), shards its last run failed, shards made by a dry run."""
    out = OutputDir(output)
    manifest = out.manifest()
    all_stats = out.all_stats()
    notes = unfinished(out, manifest, all_stats, done="exported")
    failed = list(failed_inputs(manifest, {s["shard"] for s in all_stats}))
    if failed:
        notes.append(f"the last run failed {len(failed)} input shard(s) ({', '.join(map(str, failed[:3]))}"
                     f"{', ...' if len(failed) > 3 else ''}): not in the output, so not exported; rerun to retry them")
    configs = list(configurations(out, all_stats, manifest).values())
    dry = [c for c in configs if (c.get("settings") or {}).get("dry_run")]
    if dry:  # their kept samples hold the input's captions: said, as they are exported as training text
        which = (f"{sum(c['shards'] for c in dry)} shard(s) of {output} were" if len(dry) < len(configs)
                 else f"{output} was")
        notes.append(f"{which} written by a dry run (no model): their {sum(c['kept'] for c in dry)} sample(s) "
                     "were exported with their original captions, not rewrites")
    return notes
