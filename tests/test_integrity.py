"""An output stays true to what it says through the faults a review of the integrity machinery found:
a redo killed between its renames, a connection reset mid-shard, --overwrite on part of the inputs,
two runs taking over one stale lease, a run whose lease was taken over, a container that shares the
host's name, temporary files of dotted shard names. Real shards, real runs (dry runs: no model)."""

import http.server
import json
import os
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from helpers import make_shards, sample_members, write_tar
from vlm_aug.cli import main
from vlm_aug.record import RunContext
from vlm_aug.shards.layout import LEASE_FILE, OutputDir
from vlm_aug.shards.lease import Lease, OutputBusy
from vlm_aug.shards.write import ShardWriter

REPO = Path(__file__).resolve().parents[1]


def dry(inputs, out, *extra) -> int:
    return main(["run", str(REPO / "configs/preview.yaml"), "--no-model", "--input", str(inputs), "--output", str(out),
                 "--no-progress", "--no-report", "--set", "report.semantic=false", *extra])


def stats(out: Path) -> dict:
    return {p.name.split(".")[0]: json.loads(p.read_text()) for p in (out / "shards").glob("*.stats.json")}


def test_a_redo_is_incomplete_from_its_start_so_a_crash_mid_commit_is_redone(tmp_path):
    """A shard being redone (--overwrite, a changed input, a retry) loses its old stats first: killed
    between the renames, the new tar could otherwise stand beside the old parquet and stats, complete
    by the rule and skipped by every later run."""
    make_shards(tmp_path / "in", n_shards=2, per_shard=3)
    out = tmp_path / "out"
    assert dry(tmp_path / "in", out) == 0
    first = stats(out)["000000"]["run_id"]
    writer = ShardWriter(str(out), "000000", RunContext("sha"))  # what a redo opens, then dies
    assert OutputDir(str(out)).complete_names() == ["000001"]
    writer.abort()
    assert dry(tmp_path / "in", out) == 0
    again = stats(out)
    assert again["000000"]["run_id"] != first and again["000000"]["counts"]["inputs"] == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runs"][-1]["processed"] == ["000000"]


class ResetOnce(http.server.BaseHTTPRequestHandler):
    """Serves one file; the first read of it (a ranged GET: fsspec's exists() is a plain one) sends half of
    it and resets the connection."""

    data, resets = b"", [1]

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.data)))
        self.send_header("Last-Modified", "Mon, 30 Nov 2026 12:00:00 GMT")
        self.end_headers()

    def do_GET(self):
        self.do_HEAD()
        if self.resets[0] and self.headers.get("Range"):
            self.resets[0] -= 1
            self.wfile.write(self.data[: len(self.data) // 2])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        self.wfile.write(self.data)

    def log_message(self, *args):
        pass


def test_a_connection_reset_mid_shard_fails_it_and_the_rerun_makes_it_whole(tmp_path, capsys):
    (shard,) = make_shards(tmp_path / "in", n_shards=1, per_shard=40, broken=False)
    handler = type("Handler", (ResetOnce,), {"data": shard.read_bytes(), "resets": [1]})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/000000.tar"
        out = tmp_path / "out"
        assert dry(url, out) == 1  # not committed short: failed, named, redone next time
        assert "000000.tar" in capsys.readouterr().err and not stats(out)
        assert dry(url, out) == 0
        done = stats(out)["000000"]
        assert done["counts"]["inputs"] == 40 and done["read_error"] is None
        assert done["input"]["mtime"] == "Mon, 30 Nov 2026 12:00:00 GMT"  # http: Last-Modified, not size alone
    finally:
        server.shutdown()


def test_overwrite_of_part_of_the_inputs_does_not_mix_settings_unseen(tmp_path, capsys):
    make_shards(tmp_path / "in", n_shards=2, per_shard=3)
    out = tmp_path / "out"
    assert dry(tmp_path / "in", out) == 0
    args = (tmp_path / "in/000000.tar", out, "--overwrite", "--set", "limits.max_caption_chars=50")
    assert dry(*args) == 2
    err = capsys.readouterr().err
    assert "--overwrite redoes this run's 1 input shard(s) only; 1 other shard(s)" in err
    assert "limits.max_caption_chars: 1000 -> 50" in err
    assert dry(*args, "--allow-config-change") == 0  # said so: each shard keeps its own
    assert len(json.loads((out / "manifest.json").read_text())["configurations"]) == 2
    assert dry(tmp_path / "in", out, "--overwrite", "--set", "limits.max_caption_chars=50") == 0  # all of them


def lease_file(out: Path, **fields) -> Path:
    record = {"run_id": "A", "host": socket.gethostname(), "pid": os.getpid(), "pid_ns": None,
              "started": time.time(), "heartbeat": time.time(), **fields}
    path = out / LEASE_FILE
    path.write_text(json.dumps(record))
    return path


def test_two_runs_taking_over_one_stale_lease_leave_one_holder(tmp_path):
    """Run B judged run A's lease stale; before B moves it aside, run C has taken it over: B must give
    C's lease back and stop, not delete it and make a second holder."""
    out = tmp_path / "out"
    out.mkdir()
    stale_a = {"run_id": "A", "heartbeat": 0}
    path = lease_file(out, run_id="C")  # C's fresh lease, where A's stale one was
    b = Lease(OutputDir(str(out), must_exist=False), "B")
    with pytest.raises(OutputBusy, match="in use by run C"):
        b._retire(stale_a)
    assert json.loads(path.read_text())["run_id"] == "C" and sorted(os.listdir(out)) == [LEASE_FILE]
    lease_file(out, run_id="A", heartbeat=0)  # A's own stale lease: retired, then B creates its own
    with Lease(OutputDir(str(out), must_exist=False), "B", stale_s=1):
        assert json.loads(path.read_text())["run_id"] == "B"


def test_a_live_lease_from_another_pid_namespace_is_not_taken_over(tmp_path):
    """Same host name, pid not visible here: a container sharing the host's name, not a dead run."""
    out = tmp_path / "out"
    out.mkdir()
    lease_file(out, pid=2**22 + 7, pid_ns="pid:[1]")  # no such pid here; another namespace; fresh heartbeat
    with pytest.raises(OutputBusy):
        Lease(OutputDir(str(out), must_exist=False), "B").acquire()


def test_a_run_whose_lease_was_taken_over_commits_nothing_more(tmp_path):
    make_shards(tmp_path / "in", n_shards=1, per_shard=3)
    out = tmp_path / "out"
    assert dry(tmp_path / "in", out) == 0
    lease_file(out, run_id="other")
    writer = ShardWriter(str(out), "000000", RunContext("sha", run_id="mine"))
    with pytest.raises(OutputBusy, match="took over the lease"):
        writer.commit(None, 0, {})
    writer.abort()
    assert OutputDir(str(out)).complete_names() == []  # redone by whoever holds the output now


def test_stale_temporary_files_of_dotted_shard_names_are_removed(tmp_path):
    out = OutputDir(str(tmp_path / "out"), must_exist=False)
    os.makedirs(out.shards_dir)
    names = ["cc.part-000.tar.tmp-RUN1.ab12", "cc.part-000.parquet.tmp-RUN1", "keep.tar.tmp-RUN1.cd34",
             "cc.part-000.stats.json.tmp-RUN2.ef56", *out.temp_files("cc.part-000", "RUN3", "aa11").values()]
    for name in names:
        Path(out.shards_dir, os.path.basename(name)).write_bytes(b"x")
    assert out.remove_temps({"cc.part-000"}, keep_run_id="RUN2") == 5  # both runs' (older ones' not hidden)
    assert sorted(os.listdir(out.shards_dir)) == ["cc.part-000.stats.json.tmp-RUN2.ef56", "keep.tar.tmp-RUN1.cd34"]


def test_a_consumer_reading_the_folder_never_reads_a_shard_being_written(tmp_path):
    """Temporary files are hidden: Hugging Face `datasets` (which skips hidden files unless a pattern
    names them) loads the complete shards of an output whose run was killed mid-shard, not the
    partial tar beside them (`*.tar*`, a pattern that takes .tar.gz too, matched it before)."""
    datasets = pytest.importorskip("datasets")
    write_tar(tmp_path / "in/000000.tar", sample_members("a", "one") + sample_members("b", "two"))
    assert main(["run", str(REPO / "configs/preview.yaml"), "--input", str(tmp_path / "in/000000.tar"), "--output",
                 str(tmp_path / "out"), "--no-progress", "--no-report", "--no-model", "--executor", "local"]) == 0
    out = OutputDir(str(tmp_path / "out"))
    partial = out.temp_files("000001", "KILLED", "ab12")["tar"]  # a killed run's partial tar: one whole sample
    shutil.copy(out.file("000000", "tar"), partial)
    assert os.path.basename(partial).startswith(".")
    rows = datasets.load_dataset("webdataset", data_files=str(tmp_path / "out/shards/*.tar*"), split="train",
                                 cache_dir=str(tmp_path / "cache"))
    assert sorted(rows["__key__"]) == ["a", "b"]


class FlakyFile:
    """A local file whose read raises ConnectionResetError (an OSError) once it passes `fail_at` bytes:
    how s3fs and other fsspec backends report a connection lost mid-object."""

    def __init__(self, handle, fail_at: int):
        self.handle, self.fail_at = handle, fail_at

    def read(self, size=-1):
        if self.handle.tell() + (size if size >= 0 else 1 << 40) > self.fail_at:
            raise ConnectionResetError(104, "Connection reset by peer")
        return self.handle.read(size)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_an_oserror_mid_shard_fails_it_instead_of_committing_it_short(tmp_path, capsys):
    """Before, any OSError while reading was the shard's `read_error`: the samples read so far were
    committed as the whole shard, and no rerun read it again (its input had not changed)."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fail = {"at": None}

    class Flaky(LocalFileSystem):
        protocol = "flaky"

        def _open(self, path, mode="rb", **kwargs):
            handle = super()._open(path, mode, **kwargs)
            return FlakyFile(handle, fail["at"]) if fail["at"] is not None and "r" in mode else handle

    fsspec.register_implementation("flaky", Flaky, clobber=True)
    (shard,) = make_shards(tmp_path / "in", n_shards=1, per_shard=40, broken=False)
    url, out = f"flaky://{shard}", tmp_path / "out"
    fail["at"] = shard.stat().st_size // 2
    assert dry(url, out) == 1
    assert "ConnectionResetError" in capsys.readouterr().err and not stats(out)
    fail["at"] = None
    assert dry(url, out) == 0
    assert stats(out)["000000"]["counts"]["inputs"] == 40


def test_a_run_stopped_before_its_manifest_is_in_the_history(tmp_path):
    """A run killed after committing shards writes no manifest; its shards name it. The next run's
    manifest lists it among the runs, with those shards, instead of leaving shards of an unknown run."""
    inputs = tmp_path / "in"
    make_shards(inputs, n_shards=3, per_shard=4)
    out = tmp_path / "out"
    assert dry(inputs / "00000[01].tar", out) == 0
    first = json.loads((out / "manifest.json").read_text())["run_id"]
    (out / "manifest.json").unlink()  # what a SIGKILL after those commits leaves
    assert dry(inputs / "*.tar", out) == 0
    runs = json.loads((out / "manifest.json").read_text())["runs"]
    assert [r["run_id"] for r in runs][0] == first and len(runs) == 2
    assert runs[0]["ended"] == "stopped before writing its manifest" and runs[0]["processed"] == ["000000", "000001"]
    assert runs[1]["processed"] == ["000002"]


def test_another_datasets_shards_of_the_same_names_are_not_replaced(tmp_path, capsys):
    """ds_a/*.tar then ds_b/*.tar into one output, same settings: B's 000000 and 000001 replaced A's
    (exit 0, 'input changed'), leaving a mix of two datasets. Refused, naming both; the same files
    moved elsewhere (same bytes) are complete; an edit in place is redone as before."""
    a, b = make_shards(tmp_path / "ds_a", n_shards=3, per_shard=4), tmp_path / "ds_b"
    make_shards(b, n_shards=2, per_shard=5)
    out = tmp_path / "out"
    assert dry(tmp_path / "ds_a/*.tar", out) == 0
    before = stats(out)
    assert dry(b / "*.tar", out) == 2
    err = capsys.readouterr().err
    assert "made from other input files of the same name" in err and "ds_a/000000.tar -> ds_b/000000.tar" in err
    assert stats(out) == before  # nothing replaced
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "ds_a", moved, copy_function=shutil.copy2)  # same bytes and mtimes
    assert dry(moved / "*.tar", out) == 0 and stats(out) == before
    with open(a[1], "ab") as handle:  # an edit in place: redone
        handle.write(b"\0" * 10240)
    assert dry(tmp_path / "ds_a/*.tar", out) == 0
    assert stats(out)["000001"]["run_id"] != before["000001"]["run_id"]


def test_a_refusal_after_a_stopped_first_run_names_what_changed(tmp_path, capsys):
    """Ctrl-C the first run, change a threshold, rerun: refused, but with '(their settings are not in the
    manifest)' instead of the differences, as the settings were only in the manifest a run writes at its
    end. Each shard's stats hold them too."""
    make_shards(tmp_path / "in", n_shards=2, per_shard=4)
    out = tmp_path / "out"
    assert dry(tmp_path / "in/*.tar", out) == 0
    (out / "manifest.json").unlink()  # what a run stopped before its end leaves
    capsys.readouterr()
    assert dry(tmp_path / "in/*.tar", out, "--set", "limits.max_caption_chars=100") == 2
    err = capsys.readouterr().err
    assert "limits.max_caption_chars: 1000 -> 100" in err and "not in the manifest" not in err, err


def test_the_heartbeat_outlives_a_store_that_fails_for_a_while(tmp_path, capfd):
    """The heartbeat thread died at the first failed read of the lease (a store outage; s3fs raises what
    its libraries raise), and the lease went stale under a live run; release() then ended the run in a
    traceback. Now each beat that fails is retried at the next, and release says what it could not do."""
    (tmp_path / "out").mkdir()
    out = OutputDir(str(tmp_path / "out"), must_exist=False)
    lease = Lease(out, "A", heartbeat_s=0.05)
    real_read, real_rm, failures = out.read_json, out.fs.rm, []

    def flaky_read(path):
        if len(failures) < 3:
            failures.append(path)
            raise ConnectionError("store unreachable")
        return real_read(path)

    with lease:
        before = json.loads((tmp_path / "out" / LEASE_FILE).read_text())["heartbeat"]
        out.read_json = flaky_read
        deadline = time.time() + 10
        while time.time() < deadline and json.loads((tmp_path / "out" / LEASE_FILE).read_text())["heartbeat"] == before:
            time.sleep(0.05)
        assert len(failures) == 3 and lease.thread.is_alive()
        assert json.loads((tmp_path / "out" / LEASE_FILE).read_text())["heartbeat"] > before  # beating again
        out.fs.rm = lambda path: (_ for _ in ()).throw(ConnectionError("store unreachable"))
    out.fs.rm = real_rm
    err = capfd.readouterr().err
    assert "lease heartbeat could not read the lease: ConnectionError" in err
    assert "could not be released (ConnectionError: store unreachable); a later run takes it over" in err


def test_a_rerun_removes_the_partial_files_of_complete_shards_too(tmp_path, capsys):
    """Only the shards to redo had their temps removed: a temp beside a complete shard (s3fs's mv is a copy
    then a delete, so a kill between them leaves one) stayed for good."""
    make_shards(tmp_path / "in", n_shards=2, per_shard=3)
    out = tmp_path / "out"
    assert dry(tmp_path / "in", out) == 0
    stale = out / "shards" / ".000000.stats.json.tmp-20260101T000000Z-0ld0ld00.ab12"
    stale.write_text("{}")
    capsys.readouterr()
    assert dry(tmp_path / "in", out) == 0  # both shards complete: nothing to redo
    assert not stale.exists() and "removed 1 partial file(s) left by an interrupted run" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == ["000000.tar", "000001.tar"]
