"""The scene world end to end: the demo command, and the pipeline catching wrong terse
captions on fresh scenes with the shipped models (floors from issue 9)."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vlm_aug.cli import main
from vlm_aug.paths import ASSETS_DIR
from vlm_aug.lab.scenes.pipeline_eval import pipeline_catch_rate

pytestmark = pytest.mark.skipif(not (ASSETS_DIR / "scene_clip").is_dir(), reason="scene models not shipped")


@pytest.mark.slow
def test_pipeline_catches_wrong_terse_captions(tmp_path):
    result = pipeline_catch_rate(n_shards=3, per_shard=50, seed=5150, wrong_fraction=0.2, workdir=str(tmp_path))
    assert result["samples"] == 150 and result["errors"] == 0
    assert result["wrong"] >= 25
    assert result["precision"] >= 0.9 and result["recall"] >= 0.9, result


def test_demo_runs_offline_and_corrects_wrong_captions(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--shards", "2", "--per-shard", "16", "--executor", "local",
                 "--no-progress", "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 scene shards" in printed and "report.html" in printed
    rows = pq.read_table(out / "output/shards/000000.parquet").to_pylist()
    assert len(rows) == 16 and all(r["status"] == "kept" for r in rows)
    for row in rows:
        meta = json.loads(json.loads(row["provenance"])["source"]["orig_json"])
        assert row["caption"] == meta["dense"], "the scene VLM writes the true dense description"
    manifest = json.loads((out / "output/manifest.json").read_text())
    assert manifest["models"]["rewrite"]["model"] == "vlm_aug:scene_vlm"
    assert Path(manifest["config"]["input"]["paths"][0]).parent == out / "input"


def test_reject_misaligned_orig_rejects_what_clip_judged_wrong(tmp_path):
    """policy.reject_misaligned_orig: a sample whose original caption fails min_clip_orig is rejected
    (reason orig_misaligned) even when its rewrite passes; every other decision is unchanged."""
    from vlm_aug.lab.downstream.scene_ab import run_pipeline
    from vlm_aug.lab.scenes import write_scene_shards

    write_scene_shards(tmp_path / "in", 1, 40, 4242, 0.25)
    local = ["executor=local", "torch_threads=1"]
    run_pipeline(tmp_path / "in", tmp_path / "plain", local, [])
    run_pipeline(tmp_path / "in", tmp_path / "strict", [*local, "policy.reject_misaligned_orig=true"], [])
    plain, strict = ({r["key"]: r for r in pq.read_table(tmp_path / name / "shards/000000.parquet").to_pylist()}
                     for name in ("plain", "strict"))
    misaligned = {k for k, r in plain.items() if r["orig_passed"] is False}
    assert len(misaligned) >= 8  # 10 of the 40 terse captions are wrong
    assert all(plain[k]["status"] == "kept" for k in misaligned)  # the default policy keeps their rewrite
    for key, row in strict.items():
        assert row["caption_rewrite"] == plain[key]["caption_rewrite"]
        if key in misaligned:
            assert (row["status"], row["reason"]) == ("rejected", "orig_misaligned")
        else:
            assert (row["status"], row["caption"]) == (plain[key]["status"], plain[key]["caption"])
    decision = json.loads(next(iter(strict.values()))["provenance"])["decision"]
    assert decision["params"]["reject_misaligned_orig"] is True
    assert "reject_misaligned_orig" not in json.loads(next(iter(plain.values()))["provenance"])["decision"]["params"]
