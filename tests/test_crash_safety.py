"""SIGKILL at random points, then rerun: the output equals an uninterrupted run's.
A full or read-only output ends the run with a clear message and no corrupt shard."""

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import make_shards, sample_members, tiny_args, write_tar
from ray_helpers import shard_view
from vlm_aug.cli import main

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_argv(inputs: Path, out: Path, vlm, clip) -> list[str]:
    return ["run", str(REPO / "configs/preview.yaml"), "--input", str(inputs / "*.tar"), "--output", str(out),
            "--no-progress", "--no-report", *tiny_args(vlm, clip)]


def snapshot(out: Path) -> dict:
    """Everything that must not depend on interruptions: each shard as a consumer sees it (tar members'
    bytes, records, parquet rows, counts), minus run ids, times and worker ids."""
    result = {}
    for parquet in sorted((out / "shards").glob("*.parquet")):
        with tarfile.open(parquet.with_suffix(".tar")) as tar:
            names = tar.getnames()
        assert len(names) == len(set(names)), f"duplicate members in {parquet.name}"
        result[parquet.stem] = shard_view(out, parquet.stem)
    return result


def kill_mid_run(argv: list[str], out: Path, rng: random.Random) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "vlm_aug", *argv], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target, deadline = rng.randint(0, 3), time.monotonic() + 120
    while len(list((out / "shards").glob("*.stats.json"))) < target and proc.poll() is None:
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.6))
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, tiny_vlm_dir, tiny_clip_dir):
    inputs = tmp_path / "in"
    make_shards(inputs, n_shards=6, per_shard=8)
    out = tmp_path / "out"  # one output path for every run: the records' config hash names it
    argv = run_argv(inputs, out, tiny_vlm_dir, tiny_clip_dir)
    assert main(argv) == 0
    expected = snapshot(out)
    shutil.move(out, tmp_path / "reference")
    for seed in range(3):
        if out.exists():
            shutil.move(out, tmp_path / f"killed{seed - 1}")
        kill_mid_run(argv, out, random.Random(seed))
        for tar in (out / "shards").glob("*.tar"):  # anything that looks complete is complete
            assert tar.with_suffix("").with_suffix(".stats.json").exists() or tar.with_suffix(".stats.json").exists()
        # sizes.json (open_clip reads it) names the shards committed before the kill: all, or all but the
        # one whose commit the kill followed before its size was written
        complete = {p.name[: -len(".stats.json")] + ".tar" for p in (out / "shards").glob("*.stats.json")}
        sized = set(json.loads((out / "shards/sizes.json").read_text())) if complete else set()
        assert sized <= complete and len(complete - sized) <= 1, (seed, complete, sized)
        killed = {json.loads(p.read_text())["run_id"] for p in (out / "shards").glob("*.stats.json")}
        finished = (out / "manifest.json").exists()  # the kill came after the run's end
        assert main(argv) == 0
        assert snapshot(out) == expected, f"seed {seed}"
        # the killed run wrote no manifest; its shards name it, and the history has it
        history = json.loads((out / "manifest.json").read_text())["runs"]
        stopped = {r["run_id"] for r in history if r.get("ended") == "stopped before writing its manifest"}
        assert stopped == (set() if finished else killed), history
        assert len(history) == len(killed) + 1, history  # and the rerun
        assert not list((out / "shards").glob("*.tmp-*"))


def noisy_shards(root: Path, n: int = 4) -> None:
    rng = np.random.default_rng(0)
    for s in range(n):
        members = []
        for i in range(6):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (160, 160, 3), dtype=np.uint8)).save(buffer, "PNG")
            members += sample_members(f"n{s}_{i}", "noise", buffer.getvalue(), ext="png")
        write_tar(root / f"{s:06d}.tar", members)


def mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("options,words", [("size=400k", "No space left"), ("size=1m,ro", "Read-only")])
def test_full_or_read_only_output(tmp_path, tiny_vlm_dir, tiny_clip_dir, capsys, options, words):
    inputs = tmp_path / "in"
    noisy_shards(inputs)
    out = tmp_path / "out"
    if not mount_tmpfs(out, options):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        code = main(run_argv(inputs, out, tiny_vlm_dir, tiny_clip_dir))
        err = capsys.readouterr().err
        assert code == 2 and words in err and "--output" in err
        for tar in (out / "shards").glob("*.tar") if (out / "shards").exists() else []:
            stats = json.loads(tar.with_suffix(".stats.json").read_text())
            with tarfile.open(tar) as handle:
                assert len({n.split(".")[0] for n in handle.getnames()}) == stats["counts"]["kept"]
        assert not list(out.rglob("*.tmp-*"))
    finally:
        subprocess.run(["umount", str(out)], check=False)


def limited_run(tmp_path: Path, inputs: Path, limit: int, *extra: str) -> subprocess.CompletedProcess:
    """`vlm-aug run --no-model` in a process whose files may not grow past `limit` bytes (`ulimit -f`:
    writes past it fail with EFBIG, as on a file system's largest file)."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    argv = [sys.executable, "-m", "vlm_aug", "run", str(REPO / "configs/preview.yaml"), "--no-model", "--input",
            str(inputs), "--output", str(tmp_path / "out"), "--no-progress", "--set", "report.semantic=false", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, preexec_fn=cap,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1"))


def test_a_file_size_limit_stops_the_run_naming_the_file_and_the_fix(tmp_path):
    """EFBIG failed each shard with only `OSError: [Errno 27] File too large`, and the run went on."""
    make_shards(tmp_path / "in", n_shards=2, per_shard=64, broken=False)  # output tars of ~200 KB
    done = limited_run(tmp_path, tmp_path / "in", 100_000, "--no-report")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "File too large" in done.stderr and "ulimit -f" in done.stderr and str(tmp_path / "out") in done.stderr
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "out/shards").glob("*.stats.json"))  # nothing committed
    assert not [p for p in (tmp_path / "out/shards").iterdir() if ".tmp-" in p.name]


def test_a_report_that_cannot_be_written_leaves_no_temporary_file(tmp_path):
    """The shards and manifest fit; report.html (~70 KB) does not: a warning, and no half page left."""
    make_shards(tmp_path / "in", n_shards=1, per_shard=2, broken=False)
    done = limited_run(tmp_path, tmp_path / "in", 40_000)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "report not written" in done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if "tmp" in p.name or p.name.startswith("report")) == []


def test_a_full_disk_names_the_file_and_the_fix_without_cloud_advice():
    import errno

    from vlm_aug.cli import disk_error

    said = disk_error(OSError(errno.ENOSPC, "No space left on device", "/data/out/.manifest.json.tmp-json"))
    assert said.startswith("No space left on device: /data/out/.manifest.json.tmp-json: free space on its disk")
    said = disk_error(PermissionError(errno.EACCES, "Permission denied", "/data/out/shards"))
    assert "give this user write access" in said and "AWS" not in said
    assert disk_error(OSError(errno.ENOSPC, "No space left on device", "s3://b/out/manifest.json")) is None
    assert disk_error(ValueError("no")) is None


def run_until_committed(tmp_path: Path, out: Path, shards: int, vlm, clip) -> tuple[subprocess.Popen, list[str]]:
    """A real run (the tiny models, 12 shards of 8) in its own process, returned once it has committed
    `shards` shards, still running; and its command."""
    make_shards(tmp_path / "in", n_shards=12, per_shard=8, broken=False)
    argv = [sys.executable, "-m", "vlm_aug", *run_argv(tmp_path / "in", out, vlm, clip)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    deadline = time.monotonic() + 240
    while len(list((out / "shards").glob("*.stats.json"))) < shards and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"
    return proc, argv


def test_sigterm_stops_a_local_run_as_ctrl_c_does(tmp_path, tiny_vlm_dir, tiny_clip_dir):
    """A scheduler's kill (SIGTERM) of a local run: it died at once (rc -15), silent, its lease and temporary
    files left; now it unwinds as Ctrl-C: exit 130, how to finish, the lease released."""
    from vlm_aug.shards.layout import LEASE_FILE

    out = tmp_path / "out"
    proc, _ = run_until_committed(tmp_path, out, 1, tiny_vlm_dir, tiny_clip_dir)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: rerun the same command to finish" in err
    assert not (out / LEASE_FILE).exists()
    assert len(list((out / "shards").glob("*.stats.json"))) < 12


def test_an_output_folder_removed_mid_run_stops_the_run(tmp_path, tiny_vlm_dir, tiny_clip_dir):
    """`rm -rf OUT` while a run wrote it: the run made the folder again, went on, wrote a manifest that listed
    the shards removed with it, and exited 1 with one failed shard; now it stops, saying what happened."""
    out = tmp_path / "out"
    proc, argv = run_until_committed(tmp_path, out, 2, tiny_vlm_dir, tiny_clip_dir)
    shutil.rmtree(out)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 2, err[-2000:]
    assert f"the output folder {out} is gone" in err or f"the lease file of {out} is gone" in err, err[-2000:]
    assert not (out / "manifest.json").exists()
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    stats = [json.loads(p.read_text()) for p in (out / "shards").glob("*.stats.json")]
    assert len(stats) == 12 and sum(s["counts"]["inputs"] for s in stats) == 96


SWALLOWED_CTRL_C = """
import os, signal, sys, time
import vlm_aug.run
from vlm_aug.cli import main

class Collected:  # a progress bar collected while Ctrl-C comes: the KeyboardInterrupt is raised in its __del__
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        end = time.monotonic() + 2
        while time.monotonic() < end:  # the handler runs here, and Python drops what it raises
            pass

import vlm_aug.pipeline
owner, name = {"card": (vlm_aug.run, "write_card"), "shard": (vlm_aug.pipeline.ShardProcessor, "process")}[sys.argv[1]]
real = getattr(owner, name)
def dropped_there(*args, **kwargs):
    Collected()
    return real(*args, **kwargs)
setattr(owner, name, dropped_there)
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("where", ["shard", "card"])
def test_a_ctrl_c_python_drops_in_a_del_still_ends_the_run_interrupted(tmp_path, where):
    """Ctrl-C near a run's end was raised inside a progress bar's `__del__` ('Exception ignored in:
    tqdm.__del__'), and the run went on to exit 0. Now, dropped during a shard, the run stops at that
    shard's end; dropped as the command ends (the card), it exits 130 saying its work was done."""
    make_shards(tmp_path / "in", n_shards=3, per_shard=2, broken=False)
    argv = ["run", str(REPO / "configs/preview.yaml"), "--no-model", "--input", str(tmp_path / "in"), "--output",
            str(tmp_path / "out"), "--no-progress", "--no-report", "--set", "report.semantic=false",
            "--executor", "local"]
    done = subprocess.run([sys.executable, "-c", SWALLOWED_CTRL_C, where, *argv], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert "Exception ignored" in done.stderr  # the interrupt was dropped where it was raised
    assert done.returncode == 130, done.stderr[-2000:]
    complete = list((tmp_path / "out/shards").glob("*.stats.json"))
    if where == "shard":
        assert "interrupted: rerun the same command to finish" in done.stderr
        assert len(complete) == 1 and not (tmp_path / "out/manifest.json").exists()
    else:
        assert "interrupted: the Ctrl-C came as the command was ending, after its work was done" in done.stderr
        assert len(complete) == 3 and (tmp_path / "out/manifest.json").exists()


def test_a_ctrl_c_the_caller_ignores_stays_ignored(tmp_path):
    """A background job of a script runs with SIGINT ignored: a Ctrl-C meant for the script must not stop it
    (cli.main put its own handler over SIG_IGN)."""
    import signal as signals

    make_shards(tmp_path / "in", n_shards=3, per_shard=2, broken=False)
    argv = ["run", str(REPO / "configs/preview.yaml"), "--no-model", "--input", str(tmp_path / "in"), "--output",
            str(tmp_path / "out"), "--no-progress", "--no-report", "--set", "report.semantic=false",
            "--executor", "local"]
    done = subprocess.run([sys.executable, "-c", SWALLOWED_CTRL_C, "shard", *argv], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"),
                          preexec_fn=lambda: signals.signal(signals.SIGINT, signals.SIG_IGN))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "interrupted" not in done.stderr and len(list((tmp_path / "out/shards").glob("*.stats.json"))) == 3
