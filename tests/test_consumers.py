"""Real consumers read a real output unchanged: open_clip's trainer, Hugging Face `datasets`,
Ray Data and `webdataset` with PIL decoding. Two runs: policy `both` (writes KEY.orig.txt) and
policy `mix` at 80/20 (the first samples all keep the rewrite, a later one the original)."""

import io
import json
import math
import os
import re
import subprocess
import tarfile

import pytest
from PIL import Image

from output_helpers import run_pipeline
from vlm_aug.stages.base import derive_seed



@pytest.fixture(scope="module")
def both_out(tmp_path_factory, tiny_vlm_dir, tiny_clip_dir):
    return run_pipeline(tmp_path_factory.mktemp("both"), tiny_vlm_dir, tiny_clip_dir, "policy.name=both")


@pytest.fixture(scope="module")
def mix_out(tmp_path_factory, tiny_vlm_dir, tiny_clip_dir):
    return run_pipeline(tmp_path_factory.mktemp("mix"), tiny_vlm_dir, tiny_clip_dir,
                        "policy.name=mix", "policy.mix_rewrite_fraction=0.8")



def tars(out):
    return sorted(str(p) for p in (out / "shards").glob("*.tar"))


def tar_samples(out):
    """{key: {ext: bytes}} straight from the tar files."""
    found = {}
    for path in tars(out):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                found.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return found


@pytest.mark.slow
def test_open_clip_trainer_reads_output_with_our_sizes_json(both_out, consumer_python, tiny_clip_dir, tmp_path):
    version = subprocess.run([consumer_python, "-c", "import importlib.metadata as m; print(m.version('webdataset'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == "0.2.86"
    sizes = json.loads((both_out / "shards/sizes.json").read_text())
    batch = 4
    argv = [consumer_python, "-m", "open_clip_train.main", "--dataset-type", "webdataset",
            "--train-data", str(both_out / "shards" / "{000000..000001}.tar"),
            "--model", f"local-dir:{tiny_clip_dir}", "--batch-size", str(batch), "--epochs", "1",
            "--workers", "0", "--lr", "1e-3", "--warmup", "1", "--device", "cpu", "--seed", "0",
            "--logs", str(tmp_path / "logs"), "--name", "consume", "--report-to", "none",
            "--save-frequency", "1", "--log-every-n-steps", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    log = (tmp_path / "logs/consume/out.log").read_text() if (tmp_path / "logs/consume/out.log").exists() else ""
    assert done.returncode == 0, done.stderr[-3000:]
    # the trainer sized the epoch from our sizes.json: ceil(kept / batch) full batches
    steps = math.ceil(sum(sizes.values()) / batch)
    assert f"[{steps * batch}/{steps * batch} (100%)]" in log, log[-2000:]
    losses = [float(x) for x in re.findall(r"Contrastive_loss: ([0-9.]+) ", log)]
    assert len(losses) == steps and all(math.isfinite(x) for x in losses)
    assert (tmp_path / "logs/consume/checkpoints/epoch_1.pt").stat().st_size > 0


def test_our_writer_works_with_webdataset_0_2_86(consumer_python, tmp_path):
    script = f"""
import tarfile, webdataset, importlib.metadata as m
from vlm_aug.record import RunContext
from vlm_aug.sample import Decision, Sample
from vlm_aug.shards.write import ShardWriter
assert m.version("webdataset") == "0.2.86"
w = ShardWriter({str(tmp_path)!r}, "000000", RunContext("0" * 64))
s = Sample(key="k1", shard="in/000000.tar", image_bytes=b"img", image_ext="jpg", caption_orig="a cat",
           caption_rewrite="a grey cat", caption="a grey cat", status="kept", decision=Decision(write_orig=True))
w.add(s)
stats = w.commit(None, 0, {{}})
with tarfile.open({str(tmp_path / 'shards/000000.tar')!r}) as tar:
    print(sorted((t.name, t.mtime) for t in tar.getmembers()), stats["counts"])
"""
    done = subprocess.run([consumer_python, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[('k1.jpg', 0), ('k1.json', 0), ('k1.orig.txt', 0), ('k1.txt', 0)]" in done.stdout
    assert "'kept': 1" in done.stdout


def load_hf(out, tmp_path, **kwargs):
    import datasets

    return datasets.load_dataset("webdataset", data_files={"train": tars(out)}, split="train",
                                 cache_dir=str(tmp_path / "hf_cache"), **kwargs)


def test_hf_datasets_loads_every_sample_of_both_output(both_out, tmp_path):
    ds = load_hf(both_out, tmp_path)
    members = tar_samples(both_out)
    assert len(ds) == len(members) == 15
    assert set(ds.features) == {"jpg", "json", "txt", "orig.txt", "__key__", "__url__"}
    shapes = {json.dumps(sorted(row["json"].keys())) for row in ds}
    assert len(shapes) == 1  # identical features: every record has every key
    for row in ds:
        sample = members[row["__key__"]]
        assert isinstance(row["jpg"], Image.Image) and row["jpg"].size == Image.open(io.BytesIO(sample["jpg"])).size
        assert row["txt"] == sample["txt"].decode() == row["json"]["caption"]
        assert row["orig.txt"] == row["json"]["caption_orig"] and row["json"]["decision"]["policy"] == "both"


def _mix_precondition(mix_out):
    """The first 5 samples (what `datasets` infers features from) keep the rewrite; a later one does not."""
    keys = [k for k in sorted(tar_samples(mix_out)) if k.startswith("s00_")]
    reasons = {k: json.loads(tar_samples(mix_out)[k]["json"])["reason"] for k in keys}
    draws = [derive_seed(0, "mix", "000000.tar", k) / 2**31 for k in keys]
    assert all(reasons[k] == "" and d < 0.8 for k, d in zip(keys[:5], draws[:5]))
    assert any(reasons[k] == "mix_draw" for k in keys[5:])


def test_hf_datasets_default_inference_on_mix_output(mix_out, tmp_path):
    """`reason` is empty in the first samples and 'mix_draw' later: it must stay one type."""
    _mix_precondition(mix_out)
    assert len(load_hf(mix_out, tmp_path)) == 15


def test_hf_datasets_loads_mix_output_with_schema_features(mix_out, tmp_path):
    from vlm_aug.shards.layout import OutputDir
    from vlm_aug.output.schema import hf_features
    from itertools import islice

    _mix_precondition(mix_out)
    first = list(islice(OutputDir(str(mix_out)).iter_tar_samples("000000"), 5))
    ds = load_hf(mix_out, tmp_path, features=hf_features(first))
    assert len(ds) == 15
    by_key = {row["__key__"]: row for row in ds}
    for key, sample in tar_samples(mix_out).items():
        assert by_key[key]["json"]["reason"] == json.loads(sample["json"])["reason"]
        assert by_key[key]["json"]["decision"]["mix_draw"] == json.loads(sample["json"])["decision"]["mix_draw"]
    assert {row["json"]["decision"]["outcome"] for row in ds} == {"rewrite", "original"}


def test_hf_datasets_loads_an_appended_output_with_repairs_with_schema_features(tmp_path_factory, tiny_vlm_dir,
                                                                                tiny_clip_dir, tmp_path):
    """An output appended with --allow-config-change: policy rewrite without repair first (the samples
    `datasets` infers from: `decision.repair.dropped` empty, `decision.params.mix_rewrite_fraction` null),
    then policy mix with repair, whose dropped sentences are objects and whose fraction is a number.
    hf_features inferred `List(null)` and `null` for them, and the load failed ("Couldn't cast array of
    type struct<cosine: double, sentence: string> to null")."""
    from itertools import islice

    from helpers import make_shards, tiny_args
    from output_helpers import REPO
    from vlm_aug.cli import main
    from vlm_aug.output.schema import hf_features
    from vlm_aug.shards.layout import OutputDir

    root = tmp_path_factory.mktemp("appended")
    out = run_pipeline(root, tiny_vlm_dir, tiny_clip_dir, "policy.name=rewrite")
    later = make_shards(root / "later", n_shards=3, per_shard=6, broken=False)[2]
    sets = ["policy.name=mix", "policy.mix_rewrite_fraction=1.0", "policy.repair.drop_sentences_below=0.999",
            "policy.repair.min_sentences=1", "policy.min_clip_rewrite=-1", "policy.max_drop=2"]
    assert main(["run", str(REPO / "configs/preview.yaml"), "--input", str(later), "--output", str(out), "--no-progress",
                 "--no-report", "--allow-config-change", *tiny_args(tiny_vlm_dir, tiny_clip_dir,
                                                                    *[x for s in sets for x in ("--set", s)])]) == 0
    samples = tar_samples(out)
    records = {key: json.loads(sample["json"]) for key, sample in samples.items()}
    first = list(islice(OutputDir(str(out)).iter_tar_samples("000000"), 5))
    assert all(json.loads(f["json"])["decision"]["repair"]["dropped"] == [] for f in first)
    assert any(r["decision"]["repair"]["dropped"] for r in records.values())  # later samples drop sentences
    ds = load_hf(out, tmp_path, features=hf_features(first))
    assert len(ds) == len(samples)
    for row in ds:
        record = records[row["__key__"]]
        assert row["txt"] == record["caption"]
        assert row["json"]["decision"]["repair"]["dropped"] == record["decision"]["repair"]["dropped"]
        assert row["json"]["decision"]["params"]["mix_rewrite_fraction"] == record["decision"]["params"]["mix_rewrite_fraction"]
    assert {row["json"]["decision"]["policy"] for row in ds} == {"rewrite", "mix"}


def test_webdataset_with_pil_decoding(both_out):
    import webdataset as wds

    members = tar_samples(both_out)
    samples = list(wds.WebDataset(tars(both_out), shardshuffle=False).decode("pil"))
    assert len(samples) == len(members) == 15
    for s in samples:
        assert isinstance(s["jpg"], Image.Image) and s["jpg"].mode == "RGB"
        assert s["txt"] == members[s["__key__"]]["txt"].decode() and s["json"]["key"] == s["__key__"]
        assert s["orig.txt"] == s["json"]["caption_orig"]


def test_vlm_aug_reads_its_own_both_output_as_input(both_out):
    """Output is input for the next round: each sample of a `both` output (KEY.jpg, KEY.json,
    KEY.orig.txt, KEY.txt) is one sample again, its caption the training caption; KEY.orig.txt was read
    as a sample of its own, `KEY.orig`, with no image (and KEY a duplicate of it)."""
    from vlm_aug.shards.read import ShardReader

    members, read = tar_samples(both_out), []
    for path in tars(both_out):
        reader = ShardReader(path, "txt", ["jpg", "png"], 1 << 20)
        read += list(reader)
        assert reader.report.ignored_members == sum(1 for s in read if s.shard == path)  # orig.txt, not read
    assert sorted(s.key for s in read) == sorted(members) and len(read) == 15
    for s in read:
        assert s.active, (s.key, s.reason, s.error_detail)
        assert s.caption_orig == members[s.key]["txt"].decode() and s.image_bytes == members[s.key]["jpg"]


@pytest.mark.ray
@pytest.mark.slow
def test_ray_data_read_webdataset(mix_out):
    import ray

    members = tar_samples(mix_out)
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200_000_000, log_to_driver=False)
    try:
        rows = ray.data.read_webdataset(tars(mix_out)).take_all()
    finally:
        ray.shutdown()
    assert len(rows) == len(members) == 15
    for row in rows:
        sample = members[row["__key__"]]
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert row["jpg"].shape == (image.height, image.width, 3)
        assert row["txt"] == sample["txt"].decode() and row["json"] == json.loads(sample["json"])
