"""What the readers of an output (export, stats, the report, shards/*.tar) see of a run that has not
finished it: one writing it now, one killed after committing shards but before its manifest, one killed
while redoing shards, one that left its lease file. Real runs on real tars (the tiny models and dry runs);
a killed run is the state it leaves on disk: its committed shards, the manifest of the run before it,
its lease file."""

import json
import os
import socket
import time
from pathlib import Path

import pytest

from helpers import make_shards, tiny_args
from vlm_aug.cli import main
from vlm_aug.record import RunContext
from vlm_aug.shards.layout import LEASE_FILE, OutputDir
from vlm_aug.shards.write import ShardWriter

REPO = Path(__file__).resolve().parents[1]


def notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if "note:" in line]


@pytest.fixture(scope="module")
def killed_append(tmp_path_factory, tiny_vlm_dir, tiny_clip_dir):
    """A run with the tiny models on one shard; then a dry run appended (--allow-config-change) on a second
    shard, killed after committing it and before writing its manifest: the first run's manifest stays."""
    root = tmp_path_factory.mktemp("killed")
    shards = make_shards(root / "in", n_shards=2, per_shard=4, broken=False)
    out = root / "out"
    base = ["run", str(REPO / "configs/preview.yaml"), "--output", str(out), "--no-progress", "--no-report"]
    assert main([*base, "--input", str(shards[0]), *tiny_args(tiny_vlm_dir, tiny_clip_dir)]) == 0
    first, written = (out / "manifest.json").read_bytes(), (out / "manifest.json").stat().st_mtime_ns
    assert main([*base, "--input", str(shards[1]), "--allow-config-change", "--no-model",
                 *tiny_args(tiny_vlm_dir, tiny_clip_dir)]) == 0
    (out / "manifest.json").write_bytes(first)  # the appended run was killed before its manifest: the first
    os.utime(out / "manifest.json", ns=(written, written))  # run's manifest, as it was written then
    return out


def test_stats_and_export_take_each_shards_settings_from_the_shard(killed_append, tmp_path, capsys):
    """The dry run's shard is known as one from its own stats, where the manifest knows nothing of its
    settings: stats names the setting that differs, export says its captions are the originals."""
    out = killed_append
    assert main(["stats", str(out), "--json", "--no-semantic"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    configs = result["configurations"]
    assert len(configs) == 2
    assert sorted(bool(c["settings"]["dry_run"]) for c in configs.values()) == [False, True]
    assert any("1 shard(s) were written after manifest.json" in n for n in result["notes"])
    assert notes(captured.err) == [f"vlm-aug: note: {n}" for n in result["notes"]]
    assert main(["stats", str(out), "--no-semantic", "--no-per-shard"]) == 0
    assert "made with 2 configurations (differing in: dry_run" in capsys.readouterr().out
    assert main(["export", str(out), str(tmp_path / "e"), "--format", "llava"]) == 0
    said = notes(capsys.readouterr().err)
    assert any(f"1 shard(s) of {out} were written by a dry run (no model): their 4 sample(s)" in n for n in said)
    assert any("were written after manifest.json" in n for n in said)


def test_the_report_describes_the_shards_present_and_says_the_output_is_not_finished(killed_append, tmp_path):
    assert main(["report", str(killed_append), "--html", str(tmp_path / "r.html"), "--no-semantic"]) == 0
    page = (tmp_path / "r.html").read_text()
    summary = page[page.index('<section id="summary">'):page.index("</section>", page.index('<section id="summary">'))]
    assert "1 of 2 shard(s) made by a dry run" in summary
    assert "2 configurations" in summary and "1 shard(s), 4 samples" in summary
    assert 'id="unfinished"' in summary and "written after manifest.json" in summary


def test_a_shard_being_redone_is_not_complete_and_readers_say_so(tmp_path, capsys):
    """From a redo's start the shard has no stats: killed there, export and stats say that a shard the
    manifest counts is not complete; a reader that listed it before still reads its old files, whole."""
    make_shards(tmp_path / "in", n_shards=2, per_shard=3, broken=False)
    out = tmp_path / "out"
    assert main(["run", str(REPO / "configs/preview.yaml"), "--no-model", "--input", str(tmp_path / "in"),
                 "--output", str(out), "--no-progress", "--no-report", "--set", "report.semantic=false"]) == 0
    capsys.readouterr()
    listed = OutputDir(str(out)).complete_names()
    writer = ShardWriter(str(out), "000000", RunContext("sha"))  # what a redo opens; then it is killed
    assert OutputDir(str(out)).complete_names() == ["000001"]
    assert OutputDir(str(out)).table(["key"], shards=listed).num_rows == 6  # read as listed: whole
    assert main(["export", str(out), str(tmp_path / "e"), "--format", "llava"]) == 0
    said = notes(capsys.readouterr().err)
    assert any("1 shard(s) that manifest.json counts are not complete now" in n and "were not exported" in n
               for n in said), said
    writer.abort()


def test_a_finished_output_whose_manifest_predates_the_run_history_has_no_notes(tmp_path, capsys):
    """A run stopped before its manifest, then a run that finished: versions before the history did not
    enter the stopped run in `runs`; its shards are older than the manifest's run, not written after it."""
    shards = make_shards(tmp_path / "in", n_shards=2, per_shard=3, broken=False)
    out = tmp_path / "out"
    base = ["run", str(REPO / "configs/preview.yaml"), "--no-model", "--output", str(out), "--no-progress",
            "--no-report", "--set", "report.semantic=false"]
    assert main([*base, "--input", str(shards[0])]) == 0
    (out / "manifest.json").unlink()  # that run was killed before its manifest
    assert main([*base, "--input", str(shards[1])]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["runs"] = [r for r in manifest["runs"] if r.get("ended") != "stopped before writing its manifest"]
    (out / "manifest.json").write_text(json.dumps(manifest))  # as a version before the history wrote it
    capsys.readouterr()
    assert main(["stats", str(out), "--no-semantic"]) == 0
    assert notes(capsys.readouterr().err) == []


def test_a_lease_file_left_by_a_killed_run_is_named_by_stats(tmp_path, capsys):
    make_shards(tmp_path / "in", n_shards=1, per_shard=3, broken=False)
    out = tmp_path / "out"
    assert main(["run", str(REPO / "configs/preview.yaml"), "--no-model", "--input", str(tmp_path / "in"),
                 "--output", str(out), "--no-progress", "--no-report", "--set", "report.semantic=false"]) == 0
    capsys.readouterr()
    assert main(["stats", str(out), "--no-semantic"]) == 0
    assert notes(capsys.readouterr().err) == []  # a finished output: nothing to say
    # a run on another host, silent for an hour: stale (a killed run leaves its lease file)
    (out / LEASE_FILE).write_text(json.dumps({"run_id": "gone", "host": "elsewhere", "pid": 1, "pid_ns": None,
                                              "started": time.time() - 7200, "heartbeat": time.time() - 3600}))
    assert main(["stats", str(out), "--no-semantic"]) == 0
    assert notes(capsys.readouterr().err) == [f"vlm-aug: note: a run on {out} stopped without finishing (it left its "
                                              "lease file): rerun its command to finish the rest"]
    (out / LEASE_FILE).write_text(json.dumps({"run_id": "live", "host": socket.gethostname(), "pid": os.getpid(),
                                              "pid_ns": None, "started": time.time(), "heartbeat": time.time()}))
    assert main(["stats", str(out), "--no-semantic"]) == 0
    assert "a run is writing" in capsys.readouterr().err
