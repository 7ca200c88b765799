"""Fixes from the security audit, each on a real run of `vlm-aug` over tiny tar shards: the openai engine
against a real OpenAI-compatible HTTP server on loopback (it echoes the key, answers 200 with what is not
a chat completion), the report of an output whose only samples are errors, the dataset card of inputs
whose names hold markdown, a key given as vlm.api_key_env, and suggested commands on paths a shell
would expand."""

from __future__ import annotations

import http.server
import json
import shlex
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import image_bytes, sample_members, write_tar
from vlm_aug.cli import main
from vlm_aug.lab.vllm_server import free_port
from vlm_aug.shards.read import public_name

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs/demo.yaml")
SECRET = "sk-proj-AUDIT-3e1f0c9b7d"
HOSTILE_OUT = "out sp $(id)"  # an output folder a shell would split and expand unquoted

pytestmark = pytest.mark.slow


class FakeOpenAI:
    """An OpenAI-compatible server on loopback. GET /models lists the demo's model; a chat request is
    answered by the first mode word found in its prompt (the sample's caption is in it): `echo400` (400
    whose body echoes the Authorization header, as some gateways do), `nochoices` (200 with an error
    object), `htmlbody` (200 with a gateway's HTML page), `listcontent` (200 whose content is a list of
    parts); otherwise a proper chat completion."""

    MODES = ("echo400", "nochoices", "htmlbody", "listcontent")

    def __init__(self, version: str | None = None):
        self.auth: list[str] = []
        self.version = version  # GET /version answers it (as vllm serve does), else 404
        self.upgrade_after: tuple[int, str] | None = None  # (completions, version): a restart as another version
        self.completions = 0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: bytes, kind: str = "application/json"):
                self.send_response(code)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.endswith("/models"):
                    return self._send(200, json.dumps({"object": "list", "data": [{"id": "vlm_aug:scene_vlm"}]}).encode())
                if self.path == "/version" and fake.version:
                    return self._send(200, json.dumps({"version": fake.version}).encode())
                self._send(404, b"{}")

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
                auth = self.headers.get("authorization", "")
                fake.auth.append(auth)
                prompt = request["messages"][0]["content"][1]["text"]
                mode = next((m for m in fake.MODES if m in prompt), "ok")
                if mode == "echo400":
                    return self._send(400, json.dumps({"error": f"invalid request; you sent {auth}"}).encode())
                if mode == "nochoices":
                    return self._send(200, json.dumps({"object": "error", "message": "model overloaded"}).encode())
                if mode == "htmlbody":
                    return self._send(200, b"<html><body>502 gateway</body></html>", "text/html")
                if mode == "listcontent":
                    message = {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]}
                    return self._send(200, json.dumps({"choices": [{"message": message, "finish_reason": "stop"}]}).encode())
                message = {"role": "assistant", "content": "A red square on a white background."}
                self._send(200, json.dumps({"choices": [{"message": message, "finish_reason": "stop"}],
                                            "usage": {"completion_tokens": 8}}).encode())
                fake.completions += 1
                if fake.upgrade_after and fake.completions >= fake.upgrade_after[0]:
                    fake.version = fake.upgrade_after[1]

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_openai():
    server = FakeOpenAI()
    yield server
    server.close()


def run(inputs: list[Path], out: Path, *sets: str, report: bool = True) -> int:
    argv = ["run", DEMO, "--input", *map(str, inputs), "--output", str(out), "--no-progress",
            "--executor", "local", "--set", "torch_threads=1", *[x for s in sets for x in ("--set", s)]]
    return main(argv if report else [*argv, "--no-report"])


def openai_sets(server: FakeOpenAI, *more: str) -> list[str]:
    return ["vlm.engine=openai", f"vlm.endpoint={server.url}", "vlm.max_retries=1", "vlm.retry_backoff_s=0.05",
            "report.semantic=false", *more]


def one_sample_shards(root: Path, captions: list[str]) -> list[Path]:
    """One shard of one sample per caption."""
    return [write_tar(root / f"{i:06d}.tar", sample_members(f"s{i}", caption, image_bytes()))
            for i, caption in enumerate(captions)]


def manifest_failed(out: Path) -> dict[str, str]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {Path(f["url"]).name: f["error"] for f in manifest["shards"]["failed"]}


# --- 1. a key the server echoes is written nowhere -------------------------------------------------

def test_a_key_the_server_echoes_is_redacted_everywhere(tmp_path, fake_openai, capfd, monkeypatch):
    """A server's 400 body quoting the Authorization header put the key on stderr, in README.md, in the
    manifest (the failed shard's error) and in the parquet (the sample's rewrite_error detail)."""
    monkeypatch.setenv("VLM_AUG_AUDIT_KEY", SECRET)
    one = one_sample_shards(tmp_path / "in", ["echo400 a red square"])[0]  # one request refused: a sample error
    two = write_tar(tmp_path / "in" / "000001.tar", sample_members("t0", "echo400 a blue square", image_bytes())
                    + sample_members("t1", "echo400 a green square", image_bytes()))  # all refused: the shard fails
    out = tmp_path / "out"
    code = run([one, two], out, *openai_sets(fake_openai, "vlm.api_key_env=VLM_AUG_AUDIT_KEY"))
    logs = capfd.readouterr()
    assert code != 0 and set(fake_openai.auth) == {f"Bearer {SECRET}"}  # the key was sent ...
    assert SECRET not in logs.out + logs.err, logs.err[-2000:]  # ... and is said nowhere
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    # what the server said is kept, with the key replaced
    assert "HTTP 400" in manifest_failed(out)["000001.tar"] and "Bearer ***" in manifest_failed(out)["000001.tar"]
    row = pq.read_table(out / "shards" / "000000.parquet").to_pylist()[0]
    assert row["reason"] == "rewrite_error"
    detail = json.loads(row["provenance"])["source"]["error_detail"]
    assert "HTTP 400" in detail and "you sent Bearer ***" in detail
    assert "Bearer ***" in logs.err


# --- 2. a 200 reply that is not a chat completion fails its shard, clearly ---------------------------

def test_a_reply_that_is_not_a_chat_completion_fails_the_shard_and_says_so(tmp_path, fake_openai, capfd,
                                                                            monkeypatch):
    """A 200 reply without `choices`, an HTML page, or a `content` that is a list failed the shard with a
    bare `KeyError: 'choices'`, `JSONDecodeError` or `TypeError`. Now: an error naming the endpoint and
    quoting the reply (without the key), and the shard is not committed (a rerun redoes it). The report's
    retry hint on this output (no complete shard) quotes the path for a shell (fix 6)."""
    monkeypatch.setenv("VLM_AUG_AUDIT_KEY", SECRET)
    modes = ["nochoices", "htmlbody", "listcontent"]
    inputs = one_sample_shards(tmp_path / "in", [f"{m} a red square" for m in modes])
    out = tmp_path / HOSTILE_OUT
    code = run(inputs, out, *openai_sets(fake_openai, "vlm.api_key_env=VLM_AUG_AUDIT_KEY"))
    err = capfd.readouterr().err
    assert code != 0
    failed = manifest_failed(out)
    assert sorted(failed) == [p.name for p in inputs]
    for path, why, quoted in zip(inputs, ["no choices", "not JSON", "content is a list"],
                                 ["model overloaded", "<html><body>502 gateway", '"type": "text"']):
        error = failed[path.name]
        assert f"{fake_openai.url}/chat/completions answered 200" in error, error
        assert "not an OpenAI chat completion" in error and why in error and quoted in error, error
        assert not any(raw in error for raw in ("KeyError", "JSONDecodeError", "TypeError")), error
    assert err.count("not an OpenAI chat completion") == len(inputs), err[-3000:]  # said on stderr too
    assert not list((out / "shards").glob("*.parquet"))  # nothing committed: no rewrite_error a rerun would skip
    assert SECRET not in err
    # 6: the suggested command is one a shell runs as it reads
    assert f"retry with `vlm-aug report {shlex.quote(str(out))}`" in err, err[-2000:]
    assert f"vlm-aug report {out}`" not in err


def test_a_rerun_after_the_server_is_fixed_makes_the_shards(tmp_path, fake_openai):
    """The shards failed by a misbehaving server are redone by a rerun (here, against a well-behaved reply)."""
    inputs = one_sample_shards(tmp_path / "in", ["nochoices a red square"])
    out = tmp_path / "out"
    assert run(inputs, out, *openai_sets(fake_openai), report=False) != 0
    fake_openai.MODES = ()  # the server now answers properly
    assert run(inputs, out, *openai_sets(fake_openai), report=False) == 0
    rows = pq.read_table(out / "shards" / "000000.parquet").to_pylist()
    assert len(rows) == 1 and rows[0]["reason"] != "rewrite_error"
    assert rows[0]["caption_rewrite"] == "A red square on a white background."


# --- 3. the report of an output whose only samples are errors ---------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3])
def test_the_report_is_written_when_every_sample_is_an_error(tmp_path, capfd, n):
    """One error-only sample gave a 1-D embedding map (`[[0.0]]`) and `warning: report not written
    (ValueError: not enough values to unpack)`."""
    members = [m for i in range(n) for m in sample_members(f"bad{i}", f"a red square number {i}", b"not an image")]
    out = tmp_path / "out"
    assert run([write_tar(tmp_path / "in" / "000000.tar", members)], out) == 0
    err = capfd.readouterr().err
    assert "report not written" not in err, err[-2000:]
    html = (out / "report.html").read_text()
    assert html.count('data-reason="decode_error"') == n  # the errors are listed, each with its reason
    semantic = json.loads((out / "semantic.json").read_text())
    assert semantic["original"]["n"] == n
    points = [p for xy in semantic["map"].values() for p in xy]
    assert all(len(p) == 2 for p in points), semantic["map"]
    assert len(points) == (0 if n < 2 else n)  # no map of a single point
    assert ('id="plot-semantic-map"' in html) == (n >= 2)


def test_a_cached_one_dimensional_map_is_still_drawn():
    """A semantic.json cached by the old code holds `[[0.0]]`: the report draws it (y 0) instead of failing."""
    from vlm_aug.report.semantic import map_plot

    assert map_plot({"original": [[0.0]]}).startswith("data:image/png;base64,")
    assert map_plot({"original": [], "rewrite": []}) is None


# --- 4. the dataset card of inputs whose names hold markdown --------------------------------------

def test_card_names_with_backticks_bars_and_newlines_stay_in_their_code_spans(tmp_path):
    """A name with backticks left its code span (raw HTML reached the card), `|` added table columns and a
    newline split a row (and made a heading of the rest)."""
    from markdown_it import MarkdownIt

    inputs = tmp_path / "in"
    good = write_tar(inputs / "ok.tar", sample_members("a", "a red square"))
    ticks = inputs / "x`<img src=x onerror=alert(5)>`|col|.tar"
    newline = inputs / "nl\n---\nlicense: mit\n# H.tar"
    for bad in (ticks, newline):
        bad.write_bytes(b"not a tar" * 100)
    out = tmp_path / "out"
    assert run([good, ticks, newline], out, "report.semantic=false", report=False) == 0
    text = (out / "README.md").read_text()
    front, body = text.split("\n# vlm_aug recaptioned dataset\n", 1)
    assert "- extended|" + public_name(str(ticks)) in front  # the front matter as it was: YAML quotes what needs it
    tokens = MarkdownIt("commonmark").enable("table").parse("# vlm_aug recaptioned dataset\n" + body)
    inline = [t for t in tokens if t.type == "inline"]
    children = [c for t in inline for c in t.children or []]
    assert not [c.content for c in children if c.type == "html_inline"]  # no raw HTML in the card
    assert not [t.content for t in tokens if t.type == "html_block"]
    assert all(t.type != "hr" for t in tokens)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert not [h for h in headings if "H.tar" in h or "H" == h or "license" in h], headings
    code = [c.content for c in children if c.type == "code_inline"]
    for name in (public_name(str(ticks)), public_name(str(newline)).replace("\n", "\\n")):
        # each input, whole, in one code span: in the text and in the table
        assert code.count(name) == 2, (name, code)
    for stem in ("x`<img src=x onerror=alert(5)>`|col|", "nl\\n---\\nlicense: mit\\n# H"):
        assert stem in code
    # the read errors' table: a header and two rows of three cells each
    start = next(i for i, t in enumerate(tokens) if t.type == "table_open")
    end = next(i for i, t in enumerate(tokens) if t.type == "table_close")
    cells = " ".join(t.type for t in tokens[start:end] if t.type in ("tr_open", "th_open", "td_open"))
    assert [row.split() for row in cells.split("tr_open")[1:]] == [["th_open"] * 3] + [["td_open"] * 3] * 2, cells


# --- 5. vlm.api_key_env that holds a key --------------------------------------------------------

@pytest.mark.parametrize("value", ["hf_SECRETKEY123abc", "gsk_9f8e7d6c5b4a", "0123456789abcdef0123", "my_key"])
def test_a_key_given_as_api_key_env_is_refused_without_echoing_it(tmp_path, capfd, value):
    """`--set vlm.api_key_env=hf_...` printed the value twice (`... names hf_..., which is not set: export
    hf_...=...`): a variable's name is upper case letters, digits and `_`; anything else is refused
    without showing it."""
    write_tar(tmp_path / "in" / "000000.tar", sample_members("a", "a red square"))
    code = run([tmp_path / "in" / "000000.tar"], tmp_path / "out", "vlm.engine=openai",
               "vlm.endpoint=http://127.0.0.1:9/v1", f"vlm.api_key_env={value}", report=False)
    logs = capfd.readouterr()
    assert code != 0
    assert value not in logs.out + logs.err, logs.err
    assert "name an environment variable (e.g. OPENAI_API_KEY)" in logs.err, logs.err
    for path in (tmp_path / "out").rglob("*") if (tmp_path / "out").exists() else []:
        if path.is_file():
            assert value.encode() not in path.read_bytes(), path


def test_a_run_draws_no_library_loading_bars(tmp_path, capfd):
    """transformers 5 drew 'Loading weights: 100%|...|' at each model load (the VLM, the semantic
    figures' text model), under --no-progress too and once per Ray actor; the process's own setting
    is left as it was."""
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    members = [m for i in range(2) for m in sample_members(f"s{i}", f"a red square number {i}")]
    out = tmp_path / "out"
    assert run([write_tar(tmp_path / "in" / "000000.tar", members)], out) == 0
    err = capfd.readouterr().err
    assert (out / "semantic.json").exists()  # the text model was loaded too
    assert "Loading weights" not in err and "it/s]" not in err, err[-2000:]
    assert hf_logging.is_progress_bar_enabled()


def test_each_record_names_the_server_version_that_generated_it(tmp_path):
    """The server's version was read once, from the first endpoint, at start: rewrites served by a second
    endpoint of another version, or by a server restarted as another version mid-run, were recorded as the
    first one's. Endpoints of different versions are now refused, and a shard that meets a changed version
    is failed; the rerun's records name the new one."""
    old, new = FakeOpenAI("0.6.0"), FakeOpenAI("0.9.9")
    try:
        inputs = one_sample_shards(tmp_path / "in", ["a red square", "a blue square", "a green square"])
        out = tmp_path / "out"
        sets = openai_sets(old, f"vlm.endpoint=[{old.url}, {new.url}]")
        assert run(inputs, out, *sets) == 2 and not (out / "shards/000000.stats.json").exists()
        new.version = None  # one says its version, one does not (twice): which made a record is not known
        assert run(inputs, out, *sets) == 2 and not (out / "shards/000000.stats.json").exists()
        old.upgrade_after = (1, "1.0.0")  # restarted as 1.0.0 once it has served the first shard
        assert run(inputs, out, *openai_sets(old), report=False) != 0
        version = {p.name[:6]: json.loads(p.read_text()) for p in (out / "shards").glob("*.stats.json")}
        assert list(version) == ["000000"]  # the first shard, served by 0.6.0; the others failed
        assert "now reports vllm 1.0.0, not vllm 0.6.0" in " ".join(manifest_failed(out).values())
        assert run(inputs, out, *openai_sets(old), report=False) == 0  # the rerun, with 1.0.0
        engines = {}
        for path in sorted((out / "shards").glob("*.parquet")):
            for row in pq.read_table(path).to_pylist():
                engines[row["key"]] = json.loads(row["provenance"])["generation"]["engine"]["version"]
        assert engines == {"s0": "vllm 0.6.0", "s1": "vllm 1.0.0", "s2": "vllm 1.0.0"}
    finally:
        old.close()
        new.close()
