"""Does the pipeline catch wrong terse captions? Run it on fresh scene shards with a known
share of wrong captions and score its verdicts against the truth in each sample's json."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from vlm_aug.config import load_config
from vlm_aug.paths import configs_dir


def caught(row: dict) -> bool:
    """Rejected, or kept with a rewrite that replaced an original CLIP judged wrong."""
    decision = json.loads(row["provenance"])["decision"]
    return row["status"] == "rejected" or (row["status"] == "kept" and decision["orig_passed"] is False)


def precision_recall(rows: list[dict]) -> dict:
    truth = [json.loads(json.loads(r["provenance"])["source"]["orig_json"]).get("terse_wrong", False) for r in rows]
    flagged = [caught(r) for r in rows]
    tp = sum(t and f for t, f in zip(truth, flagged))
    fp = sum(f and not t for t, f in zip(truth, flagged))
    fn = sum(t and not f for t, f in zip(truth, flagged))
    return {"samples": len(rows), "wrong": sum(truth), "caught": sum(flagged), "caught_wrong": tp,
            "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
            "errors": sum(r["status"] == "error" for r in rows)}


def shard_layout(samples: int, max_shards: int = 4) -> tuple[int, int]:
    """(shards, samples per shard) holding exactly `samples`: the most equal shards, up to `max_shards`,
    that divide it (300 -> 4 x 75, 10 -> 2 x 5, 7 -> 1 x 7)."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    shards = max(k for k in range(1, max_shards + 1) if samples % k == 0)
    return shards, samples // shards


def pipeline_catch_rate(n_shards: int = 4, per_shard: int = 75, seed: int = 424242,
                        wrong_fraction: float = 0.2, workdir: str | None = None) -> dict:
    """Write fresh scene shards, run the demo config on them (local executor), score the verdicts."""
    from vlm_aug.lab.scenes import write_scene_shards
    from vlm_aug.run import execute

    root = Path(workdir or tempfile.mkdtemp(prefix="vlm_aug_scene_eval_"))
    # exactly the shards written now, in and out: a reused workdir may hold more from an earlier, larger run
    inputs = write_scene_shards(root / "input", n_shards, per_shard, seed=seed, wrong_fraction=wrong_fraction)
    config = load_config(configs_dir() / "demo.yaml", [f"input.paths={[str(p) for p in inputs]}",
                                                        f"output.path={root}/output", "output.report=false",
                                                        "executor=local"])
    execute(config, overwrite=True, progress=False)
    rows = []
    for path in inputs:
        parquet = root / "output/shards" / f"{path.stem}.parquet"
        rows += pq.read_table(parquet, columns=["status", "provenance"]).to_pylist()
    return {**precision_recall(rows), "policy": config.policy.model_dump(), "seed": seed, "workdir": str(root)}
