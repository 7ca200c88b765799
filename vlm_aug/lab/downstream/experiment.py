"""The A/B itself: every arm x every seed trained by open_clip_train, evaluated, summarised."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from vlm_aug.lab.downstream import DOWNSTREAM_JSON, SCHEMA_VERSION
from vlm_aug.lab.downstream.aggregate import format_table, gains, summarize_arm
from vlm_aug.lab.downstream.arms import Arm
from vlm_aug.lab.downstream.evaluate import evaluate, load_heldout
from vlm_aug.lab.downstream.models import ModelChoice
from vlm_aug.lab.downstream.train import TrainSpec, run_training


@dataclass
class Experiment:
    arms: list[Arm]
    heldout: list[str]
    model: ModelChoice
    spec: TrainSpec
    seeds: list[int]
    work_dir: Path
    python: str
    comparisons: list[tuple[str, str]] = field(default_factory=list)
    caption_key: str = "txt"
    label_field: Optional[str] = "label"
    templates: list[str] = field(default_factory=lambda: ["a {}.", "a photo of a {}."])
    trainer_val: bool = True
    keep_checkpoints: bool = False
    max_heldout: Optional[int] = None
    parallel: int = 1  # trainings at once (each a subprocess with spec.threads torch threads)


def _one_run(exp: Experiment, arm: Arm, seed: int, held, log: Callable) -> dict:
    val = exp.heldout if exp.trainer_val and exp.caption_key == "txt" else None
    train = run_training(exp.spec, exp.model, arm, seed, exp.work_dir / "logs", exp.python, val)
    start = time.time()
    metrics = evaluate(exp.model, train["checkpoint"], held, exp.templates)
    if not exp.keep_checkpoints:
        os.remove(train["checkpoint"])  # optimizer state included: tens of MB per run
        train["checkpoint"] = None
    metrics["final_loss"] = train["final_loss"]
    log(f"  {arm.name:<14} seed {seed}: {train['steps']} steps in {train['wall_s']:.0f}s, "
        f"loss {train['final_loss']:.3f}, R@1 i2t {metrics['image_to_text_R@1']:.3f} "
        f"t2i {metrics['text_to_image_R@1']:.3f}")
    return {"arm": arm.name, "seed": seed, "train": train, "metrics": metrics,
            "eval_s": round(time.time() - start, 2)}


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)  # readers never see half a file


def run_experiment(exp: Experiment, out_path: Path, log: Callable = print, extra: Optional[dict] = None) -> dict:
    """Train and evaluate every arm for every seed; write and return downstream.json's content."""
    start = time.time()
    held = load_heldout(exp.heldout, exp.caption_key, exp.label_field, exp.max_heldout)
    log(f"held-out: {held.describe()}")
    # Seed-major: an interrupted run still has every arm for the first seeds. With parallel > 1 the
    # jobs start in that order on a pool; evaluation in this process then runs on spec.threads too.
    jobs = [(seed, arm) for seed in exp.seeds for arm in exp.arms]
    if exp.parallel > 1 and len(jobs) > 1:
        from concurrent.futures import ThreadPoolExecutor

        import torch

        torch.set_num_threads(exp.spec.threads)
        with ThreadPoolExecutor(max_workers=min(exp.parallel, len(jobs))) as pool:
            futures = [pool.submit(_one_run, exp, arm, seed, held, log) for seed, arm in jobs]
            records = [f.result() for f in futures]
    else:
        records = [_one_run(exp, arm, seed, held, log) for seed, arm in jobs]
    runs = {arm.name: [r["metrics"] for r in records if r["arm"] == arm.name] for arm in exp.arms}
    summary = {name: summarize_arm(metric_runs) for name, metric_runs in runs.items()}
    gain_table = gains(runs, exp.comparisons)
    result = {
        "schema_version": SCHEMA_VERSION, "kind": "vlm_aug.downstream",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": exp.model.describe(), "train": exp.spec.describe(), "seeds": exp.seeds, "parallel": exp.parallel,
        "heldout": {"shards": exp.heldout, "caption_key": exp.caption_key, "label_field": exp.label_field,
                    "templates": exp.templates, **held.describe()},
        "arms": [arm.describe() for arm in exp.arms], "comparisons": [list(c) for c in exp.comparisons],
        "runs": records, "summary": summary, "gains": gain_table,
        "table": format_table(summary, gain_table, len(exp.seeds)),
        "wall_s": round(time.time() - start, 1), **(extra or {}),
    }
    write_json(out_path, result)
    return result


def default_comparisons(arm_names: list[str]) -> list[tuple[str, str]]:
    """Each arm against `original` when there is one, else against the first arm."""
    if len(arm_names) < 2:
        return []
    base = "original" if "original" in arm_names else arm_names[0]
    return [(base, name) for name in arm_names if name != base]


__all__ = ["Experiment", "run_experiment", "default_comparisons", "DOWNSTREAM_JSON", "write_json"]
