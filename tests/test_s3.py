"""Inputs and outputs on a real S3-compatible server (moto's server mode on loopback, started here),
through the Ray executor: s3:// globs in, shards out, and no reader ever sees a partial shard."""

import io
import json
import os
import socket
import tarfile
import threading

import pyarrow.parquet as pq
import pytest

from helpers import make_shards, tiny_args
from ray_helpers import REPO
from vlm_aug.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]
BUCKET = "vlm-aug-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1; AWS_* env set before Ray starts, so actors inherit it."""
    server_mod = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(BUCKET)
    try:
        yield fs
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.update({key: value})
        server.stop()


def complete_tar(data: bytes) -> int:
    """Members of a tar that must parse to the end; raises on a truncated one."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return len([m for m in tar.getmembers() if m.isfile() and len(tar.extractfile(m).read()) == m.size])


def watch_for_partial_shards(fs, prefix: str, stop: threading.Event, seen: dict) -> None:
    """Poll like a consumer would: every visible final .tar must be whole. What a reader could not read is
    recorded in `seen` (an exception here would end only this thread, and the test would pass)."""
    while not stop.is_set():
        try:
            fs.invalidate_cache()
            paths = fs.glob(f"{prefix}/shards/*.tar")
        except Exception as exc:  # noqa: BLE001 - recorded, asserted by the test
            seen["(listing)"] = repr(exc)
            return
        for path in paths:
            try:
                seen[path] = complete_tar(fs.cat(path))
            except FileNotFoundError:
                continue  # replaced between listing and reading
            except Exception as exc:  # noqa: BLE001 - a partial tar: recorded, asserted by the test
                seen[path] = f"unreadable: {exc!r}"
        stop.wait(0.2)


def test_s3_in_s3_out_through_ray(s3, tmp_path, tiny_vlm_dir, tiny_clip_dir):
    local = make_shards(tmp_path / "in", n_shards=3, per_shard=6)
    for path in local:
        s3.put(str(path), f"{BUCKET}/in/{path.name}")
    out = f"s3://{BUCKET}/out"
    stop, seen = threading.Event(), {}
    watcher = threading.Thread(target=watch_for_partial_shards, args=(s3, f"{BUCKET}/out", stop, seen))
    watcher.start()
    try:
        code = main(["run", str(REPO / "configs/preview.yaml"), "--input", f"s3://{BUCKET}/in/*.tar",
                     "--output", out, "--no-progress", "--no-report", *tiny_args(tiny_vlm_dir, tiny_clip_dir),
                     "--executor", "ray", "--set", "ray.num_actors=1", "--set", "ray.dashboard=false"])
    finally:
        stop.set()
        watcher.join(10)
    assert code == 0
    s3.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in s3.find(f"{BUCKET}/out/shards"))
    expected = sorted(f"{i:06d}.{ext}" for i in range(3) for ext in ("tar", "parquet", "stats.json"))
    assert names == sorted(expected + ["sizes.json"])  # no .tmp- object left behind
    for i, path in enumerate(local):
        with tarfile.open(path) as tar:
            in_keys = {m.name.split(".")[0] for m in tar.getmembers()}
        with s3.open(f"{BUCKET}/out/shards/{i:06d}.parquet", "rb") as handle:
            rows = pq.read_table(handle).to_pylist()
        assert {r["key"] for r in rows} == in_keys
        assert {r["shard"] for r in rows} == {f"s3://{BUCKET}/in/{path.name}"}
    assert seen and all(isinstance(count, int) and count > 0 for count in seen.values()), seen  # all whole
    manifest = json.loads(s3.cat(f"{BUCKET}/out/manifest.json"))
    assert manifest["totals"]["inputs"] == 18 and not manifest["shards"]["failed"]
    sizes = json.loads(s3.cat(f"{BUCKET}/out/shards/sizes.json"))
    assert sizes == {"000000.tar": 5, "000001.tar": 6, "000002.tar": 6}


def test_an_s3_folder_input_stands_for_its_shards(s3, tmp_path):
    """`--input s3://bucket/prefix` (as a local folder works) was one shard named `prefix` with 0 samples,
    committed, and exit 0; a prefix with no shards is an error."""
    for path in make_shards(tmp_path / "in", n_shards=2, per_shard=3, broken=False):
        s3.put(str(path), f"{BUCKET}/folder/{path.name}")
    s3.pipe(f"{BUCKET}/folder/notes.md", b"not a shard")
    s3.pipe(f"{BUCKET}/empty/notes.md", b"not a shard")
    out = tmp_path / "out"
    for given in (f"s3://{BUCKET}/folder", f"s3://{BUCKET}/folder/"):
        assert main(["run", str(REPO / "configs/demo.yaml"), "--no-model", "--no-report", "--no-progress",
                     "--input", given, "--output", str(out), "--overwrite", "--set", "executor=local"]) == 0
        assert sorted(p.name for p in (out / "shards").glob("*.tar")) == ["000000.tar", "000001.tar"]
        assert sum(pq.read_table(p).num_rows for p in (out / "shards").glob("*.parquet")) == 6
    assert main(["run", str(REPO / "configs/demo.yaml"), "--no-model", "--input", f"s3://{BUCKET}/empty",
                 "--output", str(tmp_path / "out2"), "--set", "executor=local"]) == 2


def test_a_store_that_cannot_be_reached_is_one_line_not_a_traceback(s3, tmp_path, monkeypatch, capsys):
    """A wrong endpoint ended `run` (and stats, trace, report, export) in ~160 lines of botocore frames."""
    import s3fs

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        code = main(["run", str(REPO / "configs/demo.yaml"), "--no-model", "--input", f"s3://{BUCKET}/x/000000.tar",
                     "--output", str(tmp_path / "out"), "--set", "executor=local"])
        err = capsys.readouterr().err
        assert code == 2 and "error: storage: " in err and "AWS_ENDPOINT_URL" in err, err[-2000:]
        assert main(["stats", f"s3://{BUCKET}/some_out"]) == 2
        assert "error: storage: " in capsys.readouterr().err
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_an_output_bucket_that_does_not_exist_is_not_created(s3, tmp_path, capsys):
    """s3fs's makedirs creates a missing bucket: a typo in --output made a new bucket (on AWS, in the
    default region) and the run wrote there."""
    shard = make_shards(tmp_path / "in", n_shards=1, per_shard=2, broken=False)[0]
    code = main(["run", str(REPO / "configs/demo.yaml"), "--no-model", "--input", str(shard),
                 "--output", "s3://no-such-bucket-typo/out", "--set", "executor=local"])
    assert code == 2 and "the bucket 'no-such-bucket-typo' does not exist" in capsys.readouterr().err
    s3.invalidate_cache()
    assert not s3.exists("no-such-bucket-typo")
