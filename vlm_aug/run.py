"""One run: plan the shards, hand them to an executor, write sizes.json and the manifest."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass

from vlm_aug.config import Config, ConfigError
from vlm_aug.executors import ExecutorReport, sigterm_as_interrupt
from vlm_aug.output.card import write_card
from vlm_aug.pipeline import ShardProcessor
from vlm_aug.progress import RunProgress
from vlm_aug.record import RunContext, package_versions
from vlm_aug.resume import fingerprint, plan_shards, resolutions, run_settings
from vlm_aug.shards.layout import OutputDir, OutputUnwritable
from vlm_aug.shards.lease import Lease, OutputBusy
from vlm_aug.shards.read import expand_inputs, input_identity, shard_name
from vlm_aug.stages.engines.base import serve_command
from vlm_aug.stages.models import ModelUnavailable
from vlm_aug.stages.prompts import load_template


@dataclass
class RunResult:
    manifest: dict
    failed: list[str]

    @property
    def ok(self) -> bool:
        return not self.failed


def check(config: Config) -> list[str]:
    """-> the input shard URLs. Checks everything a model load would waste, and touches nothing."""
    try:
        load_template(config.generation.prompt)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"generation.prompt: {exc}") from None
    if not config.dry_run:
        import importlib.util

        if importlib.util.find_spec("open_clip") is None:  # .venv-vllm on a CPU machine: found after vLLM's 30 s load
            raise ModelUnavailable("CLIP scoring needs open_clip, which this environment does not have (on a CPU "
                                   "machine .venv-vllm holds vLLM alone, docs/engines.md): run `vlm-aug run` from the "
                                   "main environment, with vlm.engine: openai against vLLM's server started from this "
                                   f"one (`{serve_command(sys.executable)}`), or pip install open-clip-torch here")
    if not config.input.paths:
        raise ConfigError("no input shards: give --input (shard files, a folder, a glob or {000..009} pattern) "
                          "or input.paths in the config")
    urls = expand_inputs(config.input.paths)
    names = [shard_name(u) for u in urls]
    dupes = sorted(n for n, k in Counter(names).items() if k > 1)  # (names.count per name: minutes at 100k shards)
    if dupes:
        shown = "; ".join(f"{n!r}: " + ", ".join(u for u in urls if shard_name(u) == n) for n in dupes[:3])
        raise ConfigError(f"input shards share output names ({shown}): an output shard is named after its input "
                          "shard's file, so each input shard needs a unique file name; rename them, or run each "
                          "folder into its own output")
    out = OutputDir(config.output.path, must_exist=False)
    inside = [u for u in urls if out.holds_shard_path(u)]
    if inside:
        raise ConfigError(f"input {inside[0]} lies in the output's shards folder ({out.path}/shards), where this "
                          f"run writes its shards: it would be overwritten ({len(inside)} input shard(s) there). "
                          "Choose another --output, or move the inputs")
    foreign = out.foreign_file()
    if foreign:
        raise ConfigError(f"output {out.path} holds files that vlm-aug did not write (e.g. {foreign}); a run writes "
                          "its manifest, card and shards there: choose a new or empty --output")
    if not config.dry_run:
        check_models(config)
    out.check_writable()  # (creates the output folder)
    return urls


def cluster_given(config: Config) -> bool:
    """`ray.address` or RAY_ADDRESS: the run is for a Ray cluster's workers (with executor ray or auto)."""
    return bool(config.ray.address or os.environ.get("RAY_ADDRESS"))


def check_models(config: Config) -> None:
    """Both models found (built in, a local checkpoint, cached, or downloadable now) and the CLIP's name and
    tag known to open_clip, before anything is written or loaded: offline, a missing CLIP was found after
    the VLM's load (minutes for a 7B, in each actor), and only the first missing model was named. On a
    Ray cluster the models are the workers' to find (their caches are not this machine's)."""
    if config.executor != "local" and cluster_given(config):
        return
    from vlm_aug.stages.models import locate_clip, locate_hf

    problems = []
    if config.vlm.engine != "openai":  # the server holds the model
        try:
            locate_hf(config.vlm.model, config.vlm.revision, config.vlm.allow_pickle_weights, check_only=True)
        except ModelUnavailable as exc:
            problems.append(str(exc))
    try:
        locate_clip(config.clip.model, config.clip.pretrained, check_only=True)
    except ModelUnavailable as exc:
        problems.append(str(exc))
    if problems:
        raise ModelUnavailable("\n".join(problems))


PREVIEW_BYTES = 64 * 1024 * 1024  # executor auto: under this much input, Ray's start-up costs more than it brings


def resolve_executor(config: Config, todo: list[str]) -> tuple[str, str]:
    """-> (local | ray, why). `auto`: Ray when a cluster is given, the machine has several GPUs, or the
    input is larger than a preview; else local (Ray's start-up, 5-10 s, is more than a preview's work)."""
    if config.executor != "auto":
        return config.executor, f"executor: {config.executor}"
    if cluster_given(config):
        return "ray", "a Ray cluster is given"
    import torch

    gpus = torch.cuda.device_count()
    if gpus > 1:
        return "ray", f"{gpus} GPUs: one actor each"
    size = sum(input_identity(url).get("size") or 0 for url in todo)
    if size > PREVIEW_BYTES:
        return "ray", f"{size / 2**20:,.0f} MB of input"
    return "local", (f"no Ray cluster given, {gpus or 'no'} GPU, {size / 2**20:.1f} MB of input: Ray's start-up "
                     "would cost more than it brings (--executor ray to use it)")


def make_executor(config: Config, todo: list[str] = ()):
    name, why = resolve_executor(config, list(todo))
    if config.executor == "auto":
        print(f"vlm-aug: executor auto -> {name} ({why})", file=sys.stderr)
    if name == "ray":
        from vlm_aug.executors.ray import RayExecutor

        return RayExecutor(config)
    from vlm_aug.executors.local import LocalExecutor

    return LocalExecutor(config.torch_threads, config.tune_malloc)


def execute(config: Config, overwrite: bool = False, progress: bool = True) -> RunResult:
    """Run the pipeline on `config`'s inputs while holding the output's lease (one run at a time)."""
    urls = check(config)
    out, run = OutputDir(config.output.path, must_exist=False), RunContext(config.sha256())
    settings = run_settings(config)
    run.settings, run.fingerprint = settings, fingerprint(settings)  # vlm.engine auto: settled by the workers
    with sigterm_as_interrupt(), Lease(out, run.run_id) as lease:  # SIGTERM (a scheduler's kill): as Ctrl-C
        run.leased = True
        todo, skipped, run.held = plan_shards(out, urls, settings, overwrite or config.output.overwrite,
                                              config.output.allow_config_change)
        started = time.time()
        # partial files left by an interrupted run, one listing for the run: of every shard, as this run holds
        # the lease (a temp of a complete shard stayed for good: s3fs's mv is a copy, then a delete)
        stale = out.remove_temps(None)
        if stale:
            print(f"vlm-aug: removed {stale} partial file(s) left by an interrupted run; complete shards stand",
                  file=sys.stderr)
        processor = ShardProcessor(config, run)
        sizes = out.live_sizes()  # open_clip finds the shards committed before a kill through sizes.json
        bar = RunProgress(len(todo), enabled=progress, on_done=sizes.add)
        try:
            report = make_executor(config, todo).run(todo, processor, bar) if todo else ExecutorReport()
        except BaseException:
            try:  # open_clip finds the shards committed before the fault through sizes.json
                stats = out.all_stats()
                if stats or out.sizes() is not None:  # (a fresh output that failed at once keeps no `{}`)
                    out.write_sizes(stats)
            except OSError:
                pass
            raise
        finally:
            bar.close()
            processor.close()
        if not lease.held():  # taken over while this run was silent: the other run writes the manifest
            if not out.fs.exists(lease.path):
                raise OutputUnwritable(f"the lease file of {out.path} is gone: the output folder was removed or moved "
                                       "while this run wrote it; its manifest is not written. Rerun the same command "
                                       "to write what is missing")
            raise OutputBusy(f"another run took over the lease of {out.path} while this run was silent; the shards "
                             "this run committed stand (each names its run), its manifest is not written")
        manifest = write_manifest(config, run, report, skipped, started, resolutions(settings))
        add_semantic(config, manifest, progress)  # after the shards are committed, never in the workers
        write_card(config.output.path, manifest)  # README.md + croissant.json, from the committed shards
    warn_mixed_image_exts(manifest)
    return RunResult(manifest, [o.url for o in report.outcomes if o.error])


def _worker_versions(versions: dict, workers: dict) -> None:
    """Each Ray actor reports the versions it imported (`workers.ID.versions`); the manifest's `versions`
    are the driver's. Say where they differ (docs/cluster.md asks for one environment on every node):
    records name the code's commit and the engine's version, not open_clip's or torch's."""
    for worker, described in sorted(workers.items()):
        theirs = described.get("versions")
        if theirs and theirs != versions:
            differ = ", ".join(f"{k} {theirs.get(k)} (driver: {versions.get(k)})"
                               for k in sorted(set(theirs) | set(versions)) if theirs.get(k) != versions.get(k))
            print(f"vlm-aug: warning: worker {worker} ran other package versions than this driver: {differ}. "
                  "manifest.json's `versions` are the driver's; each worker's are under `workers`. Install one "
                  "environment on every node (docs/cluster.md)", file=sys.stderr)


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
    total["repaired"] = sum(s.get("scores", {}).get("repaired", 0) for s in all_stats)
    total["sentences_dropped"] = sum(s.get("scores", {}).get("sentences_dropped", 0) for s in all_stats)
    for name in ("clip_orig", "clip_rewrite"):
        n = sum(s.get("scores", {}).get(f"{name}_n", 0) for s in all_stats)
        sums = sum(s.get("scores", {}).get(f"{name}_sum", 0.0) for s in all_stats)
        total[f"mean_{name}"] = round(sums / n, 4) if n else None
    exts: Counter = Counter()
    guards: Counter = Counter()
    reasons: Counter = Counter()
    for s in all_stats:
        exts.update(s.get("image_exts", {}))
        guards.update(s.get("guards", {}))
        reasons.update(s.get("reasons", {}))
    total["reasons"] = dict(reasons.most_common())  # status:reason -> samples, most first
    total["image_exts"] = dict(sorted(exts.items()))
    total["guards"] = dict(sorted(guards.items()))  # what the text guards did (docs/guards.md)
    return total


def add_semantic(config: Config, manifest: dict, progress: bool = True) -> None:
    """The semantic figures of the output (docs/semantic.md) into OUT/semantic.json and the manifest.
    A missing embedder or a failure is reported, never fatal: the shards are already committed."""
    if not config.report.semantic:
        return
    from vlm_aug.output.embed import EmbedderUnavailable
    from vlm_aug.output.semantic import compute, summary

    try:
        manifest["semantic"] = summary(compute(config.output.path, config.report, progress=progress))
    except EmbedderUnavailable as exc:
        manifest["semantic"] = {"skipped": str(exc)}
        print(f"vlm-aug: semantic figures skipped: {exc}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - say it and how to retry
        manifest["semantic"] = {"skipped": f"{type(exc).__name__}: {exc}"}
        print(f"vlm-aug: semantic figures failed ({type(exc).__name__}: {exc}); retry with "
              f"`vlm-aug stats {shlex.quote(str(config.output.path))} --json`", file=sys.stderr)
    OutputDir(config.output.path).write_manifest(manifest)


def warn_mixed_image_exts(manifest: dict) -> None:
    exts = manifest["totals"]["image_exts"]
    if len(exts) > 1:
        print(f"warning: the output's images have {len(exts)} extensions ({', '.join(exts)}): Hugging Face "
              "datasets takes its columns from the first samples and gives None for an image under another name "
              "(or fails, when the names differ within those first samples). Rerun with --overwrite and "
              "output.normalize_image_format: jpg (the default) or png", file=sys.stderr)


def _history(previous: dict, run: RunContext, report: ExecutorReport, skipped: list[str], started: float,
             all_stats: list[dict] = (), versions: dict | None = None) -> list:
    """Every run that wrote into this output, oldest first (a manifest from before the history: its last run).
    A run stopped before it wrote its manifest (killed, its lease taken over) is known from the shards
    it committed, which name it: it is entered with those shards, before this run."""
    runs = list(previous.get("runs") or ([{"run_id": previous["run_id"], "fingerprint": None,
                                           "config_sha256": previous.get("config_sha256")}]
                                         if previous.get("run_id") else []))
    known = {r.get("run_id") for r in runs} | {run.run_id}
    stopped: dict[str, list[dict]] = {}
    for s in all_stats:
        if s.get("run_id") and s["run_id"] not in known:
            stopped.setdefault(s["run_id"], []).append(s)
    for run_id, shards in sorted(stopped.items()):  # run ids begin with their start time
        runs.append({"run_id": run_id, "fingerprint": shards[0].get("fingerprint"), "config_sha256": None,
                     "ended": "stopped before writing its manifest", "processed": sorted(s["shard"] for s in shards)})
    runs.append({"run_id": run.run_id, "fingerprint": run.fingerprint, "config_sha256": run.config_sha256,
                 "git_sha": run.git_sha, "versions": versions,
                 "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
                 "wall_s": round(time.time() - started, 3),
                 "processed": [shard_name(o.url) for o in report.outcomes if o.stats],
                 "failed": [shard_name(o.url) for o in report.outcomes if o.error], "skipped_complete": len(skipped)})
    return runs


def configurations(previous: dict, run: RunContext, possible: dict, all_stats: list[dict]) -> dict:
    """fingerprint -> its settings and what of the output it made now (shards, inputs, kept). `possible`:
    this run's settings by fingerprint (`resume.resolutions`: with vlm.engine auto, one per engine a
    worker may pick; those its shards do not hold are left out)."""
    found = {fp: {"settings": entry.get("settings")} for fp, entry in (previous.get("configurations") or {}).items()}
    made = {s.get("fingerprint") for s in all_stats}
    found.update({fp: {"settings": s} for fp, s in possible.items() if fp in made or len(possible) == 1})
    for entry in found.values():
        entry.update(shards=0, inputs=0, kept=0)
    for s in all_stats:
        entry = found.setdefault(s.get("fingerprint") or "unknown", {"settings": None, "shards": 0, "inputs": 0, "kept": 0})
        entry["shards"] += 1
        entry["inputs"] += s["counts"]["inputs"]
        entry["kept"] += s["counts"]["kept"]
    return found


def write_manifest(config: Config, run: RunContext, report: ExecutorReport, skipped: list[str], started: float,
                   possible: dict) -> dict:
    out = OutputDir(config.output.path, must_exist=False)
    out.fs.makedirs(out.shards_dir, exist_ok=True)
    all_stats = out.all_stats()
    out.write_sizes(all_stats)
    previous = out.manifest()
    template = load_template(config.generation.prompt)
    versions = package_versions()
    _worker_versions(versions, report.workers)
    stage_time: dict = {}
    for outcome in report.outcomes:
        for k, v in ((outcome.stats or {}).get("timings_s") or {}).items():
            stage_time[k] = round(stage_time.get(k, 0.0) + v, 3)
    manifest = {
        "run_id": run.run_id, "config": config.model_dump(), "config_sha256": run.config_sha256,
        "versions": versions, "hardware": _hardware(), "executor": config.executor,
        "models": run.models or previous.get("models", {}),  # no model loaded: all shards were complete
        "fingerprint": run.fingerprint, "configurations": configurations(previous, run, possible, all_stats),
        "runs": _history(previous, run, report, skipped, started, all_stats, versions),
        "prompt": {"id": template.id, "text": template.text, "sha256": template.sha256},
        "timings": {"wall_s": round(time.time() - started, 3), "startup_s": round(report.startup_s, 3), "stages_s": stage_time},
        "workers": report.workers,
        "shards": {"processed": [o.url for o in report.outcomes if o.stats], "skipped_complete": skipped,
                   "failed": [{"url": o.url, "error": o.error, "attempts": o.attempts}
                              for o in report.outcomes if o.error],
                   "read_errors": {s["shard"]: s["read_error"] for s in all_stats if s.get("read_error")}},
        "totals": totals(all_stats),
    }
    out.write_manifest(manifest)
    return manifest
