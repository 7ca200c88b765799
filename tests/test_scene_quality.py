"""The scene world end to end: the demo command, and the pipeline catching wrong terse
captions on fresh scenes with the shipped models (floors from issue 9)."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vlm_aug.cli import main
from vlm_aug.paths import ASSETS_DIR
from vlm_aug.scenes.pipeline_eval import pipeline_catch_rate

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
