"""Policy reasons, per-sample stage isolation, the dry run, image re-encoding, batch-independent sampling."""

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from helpers import image_bytes, make_shards, sample_members, write_tar
from vlm_aug.cli import main
from vlm_aug.config import CLIPConfig, GenerationConfig, LimitsConfig, PolicyConfig, VLMConfig
from vlm_aug.pipeline import run_stage
from vlm_aug.sample import Sample
from vlm_aug.stages.decide import DecideStage
from vlm_aug.stages.rewrite import RewriteStage
from vlm_aug.stages.score import ScoreStage

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = dict(min_clip_rewrite=0.22, min_clip_orig=0.20, max_drop=0.02)
COLORS = [(220, 20, 20), (20, 200, 20), (20, 20, 220), (230, 230, 30)]


def decide(policy: str, caption_rewrite, clip_orig, clip_rewrite) -> Sample:
    sample = Sample(key="k", shard="000000.tar", caption_orig="a red square", caption_rewrite=caption_rewrite,
                    scores={"clip_orig": clip_orig, "clip_rewrite": clip_rewrite, "clip_sentences": []})
    DecideStage(PolicyConfig(name=policy, **THRESHOLDS), seed=0).process_batch([sample])
    return sample


def test_fallback_keeps_original_when_rewrite_is_worse():
    s = decide("fallback", "a dense rewrite", clip_orig=0.30, clip_rewrite=0.25)  # passes 0.22, drops 0.05
    assert (s.status, s.reason, s.caption, s.decision.outcome) == ("kept", "rewrite_worse", "a red square", "original")
    near = decide("fallback", "a dense rewrite", clip_orig=0.30, clip_rewrite=0.29)  # drop 0.01 <= max_drop
    assert (near.status, near.reason, near.caption, near.decision.outcome) == \
        ("kept", None, "a dense rewrite", "rewrite")


def test_fallback_rejects_when_both_captions_fail():
    s = decide("fallback", "a dense rewrite", clip_orig=0.10, clip_rewrite=0.15)
    assert (s.status, s.reason, s.caption) == ("rejected", "low_clip_orig", None)
    assert s.decision.rewrite_problem == "low_clip_rewrite" and s.decision.orig_passed is False
    empty = decide("fallback", "", clip_orig=0.10, clip_rewrite=None)
    assert (empty.status, empty.reason, empty.decision.rewrite_problem) == \
        ("rejected", "low_clip_orig", "empty_rewrite")


@pytest.mark.parametrize("rewrite", ["", None])
def test_empty_rewrite_rejected_by_rewrite_policy_original_kept_by_fallback(rewrite):
    s = decide("rewrite", rewrite, clip_orig=0.30, clip_rewrite=None)
    assert (s.status, s.reason, s.caption) == ("rejected", "empty_rewrite", None)
    f = decide("fallback", rewrite, clip_orig=0.30, clip_rewrite=None)
    assert (f.status, f.reason, f.caption, f.decision.outcome) == ("kept", "empty_rewrite", "a red square", "original")


class PoisonStage:
    """Fails any batch holding a sample captioned "poison"; otherwise writes a rewrite."""

    def __init__(self, name: str):
        self.name, self.calls = name, 0

    def process_batch(self, samples):
        self.calls += 1
        for s in samples:
            if s.caption_orig == "poison":
                raise ValueError(f"cannot handle {s.key}")
        for s in samples:
            s.caption_rewrite = s.caption_orig.upper()


def batch(*captions) -> list[Sample]:
    return [Sample(key=f"k{i}", shard="000000.tar", caption_orig=c) for i, c in enumerate(captions)]


@pytest.mark.parametrize("name", ["rewrite", "score"])
def test_run_stage_isolates_the_failing_sample(name):
    samples, stage = batch("red", "poison", "green", "blue"), PoisonStage(name)
    run_stage(stage, samples)
    bad = samples[1]
    assert (bad.status, bad.reason) == ("error", f"{name}_error")
    assert bad.error_detail == "ValueError: cannot handle k1" and bad.caption_rewrite is None
    good = [samples[i] for i in (0, 2, 3)]
    assert [s.status for s in good] == ["pending"] * 3
    assert [s.caption_rewrite for s in good] == ["RED", "GREEN", "BLUE"]
    assert stage.calls == 5  # the batch, then each of the 4 samples alone


@pytest.mark.parametrize("name", ["rewrite", "score"])
def test_out_of_gpu_memory_fails_the_shard_never_a_sample(name):
    """torch.OutOfMemoryError is a RuntimeError: a batch too large for the GPU was rerun one sample at a
    time (10-30x slower, silently), and a sample too large alone was committed as rewrite_error."""
    import torch

    class OutOfMemoryStage(PoisonStage):
        def process_batch(self, samples):
            self.calls += 1
            if len(samples) > 1 or samples[0].caption_orig == "huge":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            super().process_batch(samples)

    for captions in (("red", "green"), ("huge",)):
        samples, stage = batch(*captions), OutOfMemoryStage(name)
        with pytest.raises(torch.OutOfMemoryError):
            run_stage(stage, samples)
        assert stage.calls == 1 and all(s.status == "pending" for s in samples)


@pytest.mark.parametrize("name", ["rewrite", "score"])
def test_run_stage_raises_when_every_sample_fails(name):
    samples = batch("poison", "poison", "poison")
    with pytest.raises(ValueError, match="cannot handle k0"):
        run_stage(PoisonStage(name), samples)
    assert all(s.status == "pending" for s in samples)  # not marked: the shard is retried
    alone = batch("poison")  # one sample failing alone is that sample's fault
    run_stage(PoisonStage(name), alone)
    assert (alone[0].status, alone[0].reason) == ("error", f"{name}_error")


def test_real_score_stage_isolates_a_sample_without_image(tiny_clip_dir):
    torch.set_num_threads(1)
    stage = ScoreStage(CLIPConfig(model=str(tiny_clip_dir), pretrained=None, device="cpu", batch_size=8))
    stage.setup()
    samples = batch("a red square", "a green square", "a blue square", "a yellow square")
    for s, color in zip(samples, COLORS):
        s.image, s.caption_rewrite = Image.new("RGB", (40, 48), color), s.caption_orig + ". It is small."
    samples[2].image = None
    run_stage(stage, samples)
    assert (samples[2].status, samples[2].reason) == ("error", "score_error") and samples[2].error_detail
    assert samples[2].scores == {}
    for s in (samples[0], samples[1], samples[3]):
        assert s.status == "pending" and -1 <= s.scores["clip_orig"] <= 1 and -1 <= s.scores["clip_rewrite"] <= 1
        assert len(s.scores["clip_sentences"]) == 2


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_tar(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def dry_run(inputs: str, out: Path, *sets: str) -> int:
    argv = ["run", str(REPO / "configs/preview.yaml"), "--input", inputs, "--output", str(out), "--no-progress",
            "--no-report", "--no-model", "--executor", "local", "--set", "torch_threads=1"]
    for item in sets:
        argv += ["--set", item]
    return main(argv)


def test_dry_run_keeps_every_readable_sample_untouched(tmp_path):
    [src] = make_shards(tmp_path / "in", n_shards=1, per_shard=6)  # s00_0003 has no valid image
    assert dry_run(str(src), tmp_path / "out") == 0
    rows = pq.read_table(tmp_path / "out/shards/000000.parquet").to_pylist()
    assert len(rows) == 6
    broken = [r for r in rows if r["key"] == "s00_0003"]
    assert [(r["status"], r["reason"]) for r in broken] == [("error", "decode_error")]
    kept = [r for r in rows if r["key"] != "s00_0003"]
    assert all(r["status"] == "kept" and r["outcome"] == "dry_run" for r in kept)
    assert all(r["caption"] == r["caption_orig"] and r["caption"].endswith("square") for r in kept)
    original, written = read_tar(src), read_tar(tmp_path / "out/shards/000000.tar")
    images = {n: sha(d) for n, d in written.items() if n.endswith(".jpg")}
    assert images == {f"{r['key']}.jpg": sha(original[f"{r['key']}.jpg"]) for r in kept}
    assert all(written[f"{r['key']}.txt"].decode() == r["caption_orig"] for r in kept)
    stats = json.loads((tmp_path / "out/shards/000000.stats.json").read_text())
    assert stats["counts"] == {"inputs": 6, "kept": 5, "rejected": 0, "error": 1}
    assert stats["reasons"] == {"error:decode_error": 1}


def png_shard(path: Path) -> dict[str, bytes]:
    pngs = {f"p{i}": image_bytes((32 + 8 * i, 24), color, fmt="PNG")
            for i, color in enumerate(COLORS[:3])}
    write_tar(path, [m for key, data in pngs.items() for m in sample_members(key, f"picture {key}", data, ext="png")])
    return pngs


def test_normalize_image_format_reencodes_png_to_jpg(tmp_path):
    pngs = png_shard(tmp_path / "in/000000.tar")
    assert dry_run(str(tmp_path / "in/000000.tar"), tmp_path / "out", "output.normalize_image_format=jpg") == 0
    written = read_tar(tmp_path / "out/shards/000000.tar")
    assert not [n for n in written if n.endswith(".png")]
    assert sorted(n for n in written if n.endswith(".jpg")) == ["p0.jpg", "p1.jpg", "p2.jpg"]
    for key, png in pngs.items():
        image = Image.open(io.BytesIO(written[f"{key}.jpg"]))
        assert image.format == "JPEG" and image.size == Image.open(io.BytesIO(png)).size
        source = json.loads(written[f"{key}.json"])["source"]
        assert source["image_reencoded_to"] == "jpg" and source["image_sha256"] == sha(png)


def test_without_normalize_png_bytes_are_written_untouched(tmp_path):
    pngs = png_shard(tmp_path / "in/000000.tar")
    assert dry_run(str(tmp_path / "in/000000.tar"), tmp_path / "out", "output.normalize_image_format=null") == 0
    written = read_tar(tmp_path / "out/shards/000000.tar")
    images = {n: d for n, d in written.items() if n.endswith((".png", ".jpg"))}
    assert images == {f"{k}.png": d for k, d in pngs.items()}
    assert all(json.loads(written[f"{k}.json"])["source"]["image_reencoded_to"] == "" for k in pngs)


def sampling_stage(model_dir, batch_size: int, seed: int) -> RewriteStage:
    stage = RewriteStage(VLMConfig(model=str(model_dir), batch_size=batch_size, dtype="float32", device="cpu"),
                         GenerationConfig(do_sample=True, temperature=1.0, max_new_tokens=6, seed=seed, guards=False),
                         LimitsConfig())
    stage.setup()
    return stage


def four_samples() -> list[Sample]:
    """Different captions (so the stage sorts them into other rows than their index) and image sizes."""
    samples = batch("a red square", "a long thin banner", "x", "a big blue circle on a white background")
    for s, size, color in zip(samples, [(40, 48), (120, 30), (16, 16), (90, 90)], COLORS):
        s.image = Image.new("RGB", size, color)
    return samples


def test_sampled_rewrite_independent_of_batch_and_follows_seed(tiny_vlm_dir):
    torch.set_num_threads(1)
    batched = four_samples()
    sampling_stage(tiny_vlm_dir, 4, seed=3).process_batch(batched)
    assert len({s.caption_rewrite for s in batched}) == 4  # sampled text, not one empty or greedy string
    alone_stage = sampling_stage(tiny_vlm_dir, 1, seed=3)
    for i in (0, 3):
        alone = four_samples()[i]
        alone_stage.process_batch([alone])
        assert alone.generation.seed == batched[i].generation.seed
        assert alone.caption_rewrite == batched[i].caption_rewrite
    reseeded = four_samples()
    sampling_stage(tiny_vlm_dir, 4, seed=4).process_batch(reseeded)
    assert [s.caption_rewrite for s in reseeded] != [s.caption_rewrite for s in batched]
