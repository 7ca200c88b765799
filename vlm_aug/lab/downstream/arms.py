"""Training sets ("arms") of the A/B, each a list of WebDataset shards open_clip_train can read.

`original`: the input shards of a vlm_aug run with their original captions, rewritten as
image + `txt` tars (the trainer reads only `txt`; the input may keep captions in json).
`unfiltered`: the same images with every VLM rewrite the run made (from its parquet), kept
whatever the policy decided: the filter's value without a second VLM pass.
Any vlm_aug output directory: its `shards/*.tar` as written (training caption in `txt`).
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from vlm_aug.lab.downstream import DownstreamError
from vlm_aug.shards.layout import OutputDir, OutputError
from vlm_aug.shards.write import add_member


@dataclass
class Arm:
    name: str
    urls: list[str]
    samples: int
    source: str
    skipped: dict[str, int] = field(default_factory=dict)

    def describe(self) -> dict:
        return {"name": self.name, "samples": self.samples, "shards": len(self.urls),
                "source": self.source, "skipped": self.skipped}


def read_manifest(out_root: Path) -> dict:
    try:
        manifest = OutputDir(str(out_root)).manifest()
    except OutputError:
        manifest = {}
    if not manifest:
        raise DownstreamError(f"{Path(out_root) / 'manifest.json'} not found: give the output directory of a "
                              "finished `vlm-aug run` (it writes manifest.json at the end)")
    return manifest


def output_arm(name: str, out_root) -> Arm:
    """The shards a vlm_aug run wrote, counted from their sizes.json (empty shards left out)."""
    out_root = Path(out_root)
    manifest = read_manifest(out_root)
    out = OutputDir(str(out_root))
    sizes = out.sizes()
    if sizes is None:
        raise DownstreamError(f"{out_root}/shards/sizes.json not found: rerun `vlm-aug run` on {out_root} to finish it")
    urls = [out.file(shard[: -len(".tar")], "tar") for shard, n in sorted(sizes.items()) if n > 0]
    total = sum(sizes.values())
    if total == 0:
        raise DownstreamError(f"{out_root} kept no sample: nothing to train on (see its report.html)")
    policy = (manifest.get("config") or {}).get("policy", {}).get("name", "?")
    return Arm(name, urls, total, f"vlm_aug output {out_root} (policy {policy})")


def _image_problem(data: bytes):
    """None if PIL can parse the image, else a reason (the trainer would drop it silently)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception:  # any parse failure is a per-sample reason, never a crash
        return "decode_error"
    return None


def _write_input_shard(reader, dest: Path, skipped: dict, captions=None) -> int:
    count = 0
    tmp = dest.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in reader:
            reason = sample.reason if not sample.active else _image_problem(sample.image_bytes)
            caption = sample.caption_orig if captions is None else captions.get(sample.key)
            if not reason and not caption:
                reason = "no_rewrite"
            if reason:
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            add_member(tar, f"{sample.key}.{sample.image_ext}", sample.image_bytes)
            add_member(tar, f"{sample.key}.txt", caption.encode("utf-8"))
            count += 1
    if reader.report.error:
        skipped["shard_read_error"] = skipped.get("shard_read_error", 0) + 1
    tmp.replace(dest)
    return count


def _rewrites(out_root: Path, url: str) -> dict[str, str]:
    """key -> the VLM rewrite the run recorded for it (kept or not), from the shard's parquet."""
    import pyarrow.parquet as pq

    from vlm_aug.shards.read import shard_name

    path = Path(OutputDir(str(out_root)).file(shard_name(url), "parquet"))
    if not path.is_file():
        raise DownstreamError(f"{path} not found: the run did not finish shard {url}; rerun `vlm-aug run`")
    table = pq.read_table(path, columns=["key", "caption_rewrite"]).to_pydict()
    return {k: c for k, c in zip(table["key"], table["caption_rewrite"]) if c}


def original_arm(out_root, work_dir: Path, name: str = "original") -> Arm:
    """The run's input shards with their original captions, as `txt` tars under `work_dir`."""
    return input_arm(out_root, work_dir, name, rewrites=False)


def unfiltered_arm(out_root, work_dir: Path, name: str = "unfiltered") -> Arm:
    """The run's input images with every rewrite it made, whatever its policy decided."""
    return input_arm(out_root, work_dir, name, rewrites=True)


def input_arm(out_root, work_dir: Path, name: str, rewrites: bool) -> Arm:
    """The run's input images, with original captions or with the run's rewrites, as `txt` tars."""
    from vlm_aug.shards.read import ShardReader, expand_inputs, shard_name

    config = read_manifest(Path(out_root))["config"]
    inp, limits = config["input"], config["limits"]
    try:
        urls = expand_inputs(inp["paths"])
    except FileNotFoundError as exc:
        raise DownstreamError(f"the input shards of {out_root} are gone ({exc}); the original arm "
                              "needs them: restore them or pass --no-original") from exc
    arm_dir = work_dir / "arms" / name
    arm_dir.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, int] = {}
    sizes, out_urls = {}, []
    for i, url in enumerate(urls):
        dest = arm_dir / f"{i:06d}_{shard_name(url)[-40:]}.tar"
        reader = ShardReader(url, inp["caption_key"], inp.get("image_exts") or inp["image_keys"],
                             limits.get("max_member_bytes") or limits["max_sample_bytes"])
        captions = _rewrites(Path(out_root), url) if rewrites else None
        sizes[dest.name] = _write_input_shard(reader, dest, skipped, captions)
        if sizes[dest.name]:
            out_urls.append(str(dest))
    (arm_dir / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n", encoding="utf-8")
    total = sum(sizes.values())
    if total == 0:
        raise DownstreamError(f"the input shards of {out_root} hold no readable image-caption sample")
    what = "every VLM rewrite, unfiltered" if rewrites else f"original captions ({inp['caption_key']})"
    return Arm(name, out_urls, total, f"input shards of {out_root}, {what}", skipped)
