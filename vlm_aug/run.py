"""One run: plan the shards, hand them to an executor, write sizes.json and the manifest."""

from __future__ import annotations

import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass
from importlib import metadata

from vlm_aug.config import Config, ConfigError
from vlm_aug.executors import ExecutorReport
from vlm_aug.output.card import write_card
from vlm_aug.pipeline import ShardProcessor
from vlm_aug.progress import RunProgress
from vlm_aug.record import RunContext
from vlm_aug.shards.layout import OutputDir
from vlm_aug.shards.read import expand_inputs, shard_name
from vlm_aug.stages.prompts import load_template

PACKAGES = ("vlm-aug", "torch", "transformers", "open_clip_torch", "webdataset", "ray", "pyarrow", "pillow")


@dataclass
class RunResult:
    manifest: dict
    failed: list[str]

    @property
    def ok(self) -> bool:
        return not self.failed


def plan(config: Config, overwrite: bool) -> tuple[list[str], list[str]]:
    """-> (shards to do, shards already complete). Checks everything a model load would waste."""
    try:
        load_template(config.generation.prompt)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"generation.prompt: {exc}") from None
    urls = expand_inputs(config.input.paths)
    names = [shard_name(u) for u in urls]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"input shards share output names {dupes}: each input shard needs a unique file name")
    out = OutputDir(config.output.path, must_exist=False)
    out.check_writable()
    complete = set() if overwrite else set(out.complete_names())
    done = [u for u in urls if shard_name(u) in complete]
    return [u for u in urls if u not in done], done


def make_executor(config: Config):
    if config.executor == "ray":
        from vlm_aug.executors.ray import RayExecutor

        return RayExecutor(config)
    from vlm_aug.executors.local import LocalExecutor

    return LocalExecutor(config.torch_threads)


def execute(config: Config, overwrite: bool = False, progress: bool = True) -> RunResult:
    todo, skipped = plan(config, overwrite or config.output.overwrite)
    run = RunContext(config.sha256())
    started = time.time()
    bar = RunProgress(len(todo), enabled=progress)
    try:
        report = make_executor(config).run(todo, ShardProcessor(config, run), bar) if todo else ExecutorReport()
    finally:
        bar.close()
    manifest = write_manifest(config, run, report, skipped, time.time() - started)
    write_card(config.output.path, manifest)  # README.md + croissant.json, from the committed shards
    warn_mixed_image_exts(manifest)
    return RunResult(manifest, [o.url for o in report.outcomes if o.error])


def _versions() -> dict:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _hardware() -> dict:
    import os

    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "gpus": gpus}


def totals(all_stats: list[dict]) -> dict:
    keys = ("inputs", "kept", "rejected", "error")
    total = {k: sum(s["counts"][k] for s in all_stats) for k in keys}
    total["corrected"] = sum(s.get("scores", {}).get("corrected", 0) for s in all_stats)
    for name in ("clip_orig", "clip_rewrite"):
        n = sum(s.get("scores", {}).get(f"{name}_n", 0) for s in all_stats)
        sums = sum(s.get("scores", {}).get(f"{name}_sum", 0.0) for s in all_stats)
        total[f"mean_{name}"] = round(sums / n, 4) if n else None
    exts: Counter = Counter()
    for s in all_stats:
        exts.update(s.get("image_exts", {}))
    total["image_exts"] = dict(sorted(exts.items()))
    return total


def warn_mixed_image_exts(manifest: dict) -> None:
    exts = manifest["totals"]["image_exts"]
    if len(exts) > 1:
        print(f"warning: the output's images have {len(exts)} extensions ({', '.join(exts)}): Hugging Face "
              "datasets refuses a webdataset whose samples differ in member names. Rerun with --overwrite and "
              "output.normalize_image_format: jpg (the default) or png", file=sys.stderr)


def write_manifest(config: Config, run: RunContext, report: ExecutorReport, skipped: list[str], wall: float) -> dict:
    out = OutputDir(config.output.path, must_exist=False)
    out.fs.makedirs(out.shards_dir, exist_ok=True)
    all_stats = out.all_stats()
    out.write_sizes(all_stats)
    template = load_template(config.generation.prompt)
    stage_time: dict = {}
    for outcome in report.outcomes:
        for k, v in ((outcome.stats or {}).get("timings_s") or {}).items():
            stage_time[k] = round(stage_time.get(k, 0.0) + v, 3)
    manifest = {
        "run_id": run.run_id, "config": config.model_dump(), "config_sha256": run.config_sha256,
        "versions": _versions(), "hardware": _hardware(), "executor": config.executor,
        "models": run.models,
        "prompt": {"id": template.id, "text": template.text, "sha256": template.sha256},
        "timings": {"wall_s": round(wall, 3), "startup_s": round(report.startup_s, 3), "stages_s": stage_time},
        "workers": report.workers,
        "shards": {"processed": [o.url for o in report.outcomes if o.stats], "skipped_complete": skipped,
                   "failed": [{"url": o.url, "error": o.error, "attempts": o.attempts}
                              for o in report.outcomes if o.error],
                   "read_errors": {s["shard"]: s["read_error"] for s in all_stats if s.get("read_error")}},
        "totals": totals(all_stats),
    }
    out.write_manifest(manifest)
    return manifest
