"""The report page in a real headless Chromium, driven over the DevTools protocol:
no console errors, no network request leaving the page, the expected cards shown,
the filters working, and a screenshot written for a person to look at."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from PIL import Image

from helpers import make_shards, sample_members, tiny_args, write_tar
from vlm_aug.cli import main

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--remote-debugging-port=0", "--remote-allow-origins=*"]
INSTALL_LINE = "apt-get update && apt-get install -y chromium"


def find_chromium() -> str | None:
    """The browser binary, installing Debian's `chromium` package once when absent and root."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["bash", "-c", f"{INSTALL_LINE} >/dev/null 2>&1"], timeout=600, check=False)
    return shutil.which("chromium")


class Browser:
    """One headless Chromium process and a DevTools websocket to its first page."""

    def __init__(self, binary: str):
        self.profile = tempfile.mkdtemp(prefix="vlm_aug_chromium_")
        self.proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.endpoint = self._wait_endpoint(timeout=60)
        self.events: list[dict] = []
        self._next_id = 0

    def _wait_endpoint(self, timeout: float) -> str:
        found: list[str] = []

        def read() -> None:
            for line in self.proc.stderr:
                match = re.search(r"DevTools listening on (ws://\S+)", line)
                if match:
                    found.append(match.group(1))
                    break
            for _ in self.proc.stderr:  # keep draining so chromium never blocks on a full pipe
                pass

        threading.Thread(target=read, daemon=True).start()
        for _ in range(int(timeout * 10)):
            if found:
                return found[0]
            if self.proc.poll() is not None:
                break
            threading.Event().wait(0.1)
        raise RuntimeError(f"chromium did not start its DevTools endpoint (exit code {self.proc.poll()})")

    async def open(self, session) -> None:
        port = self.endpoint.split(":")[2].split("/")[0]
        async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
            page = next(t for t in await response.json() if t["type"] == "page")
        self.ws = await session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)

    async def send(self, method: str, **params) -> dict:
        self._next_id += 1
        await self.ws.send_json({"id": self._next_id, "method": method, "params": params})
        while True:
            message = json.loads((await asyncio.wait_for(self.ws.receive(), 60)).data)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._record(message)

    async def wait_event(self, method: str, timeout: float = 60) -> None:
        if any(e.get("method") == method for e in self.events):
            return
        while True:
            message = json.loads((await asyncio.wait_for(self.ws.receive(), timeout)).data)
            self._record(message)
            if message.get("method") == method:
                return

    def _record(self, message: dict) -> None:
        self.events.append(message)
        if message.get("method") == "Page.javascriptDialogOpening":  # it would block the page: fail now
            raise AssertionError(f"the page opened a dialog (did markup run?): {message['params'].get('message')}")

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        found = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        return found

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


async def load_page(browser: Browser, url: str, width: int = 1400, height: int = 1000) -> None:
    import aiohttp

    session = aiohttp.ClientSession()
    browser.session = session
    await browser.open(session)
    for domain in ("Runtime", "Log", "Page", "Network"):
        await browser.send(f"{domain}.enable")
    await browser.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                       mobile=False)
    await browser.send("Page.navigate", url=url)
    await browser.wait_event("Page.loadEventFired")


async def screenshot(browser: Browser, path: Path, max_height: int = 7000) -> None:
    metrics = await browser.send("Page.getLayoutMetrics")
    size = metrics["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], max_height), "scale": 1}
    shot = await browser.send("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
    path.write_bytes(base64.b64decode(shot["data"]))


SHOWN = "document.getElementById('gallery').dataset.shown"
VISIBLE = "Array.from(document.querySelectorAll('#gallery .card:not([hidden])'))"


@pytest.fixture(scope="module")
def chromium():
    binary = find_chromium()
    if not binary:
        why = f"chromium is missing and could not be installed; install it with `{INSTALL_LINE}`"
        if os.environ.get("VLM_AUG_REQUIRE_BROWSER"):  # CI (.ci/run): the browser test runs, never skips
            pytest.fail(why)
        pytest.skip(why)
    return binary


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, tiny_vlm_dir, tiny_clip_dir):
    """A run with kept, rejected (threshold 0.99 on shard 1) and error samples, captions with a
    400-letter word and with markup, and its report."""
    root = tmp_path_factory.mktemp("report_browser")
    make_shards(root / "in", n_shards=2, per_shard=8)
    hostile = [("long word " + "x" * 400, "s02_0000"), ('<script>alert("caption")</script><img src=x>', "s02_0001")]
    write_tar(root / "in/000002.tar", [m for caption, key in hostile for m in sample_members(key, caption)])
    tiny = tiny_args(tiny_vlm_dir, tiny_clip_dir)
    base = ["run", str(REPO / "configs/preview.yaml"), "--output", str(root / "out"), "--no-progress", "--no-report"]
    assert main([*base, "--input", str(root / "in/000000.tar"), str(root / "in/000002.tar"), *tiny]) == 0
    assert main([*base, "--input", str(root / "in/000001.tar"), *tiny, "--set", "policy.name=rewrite",
                 "--set", "policy.min_clip_rewrite=0.99", "--allow-config-change"]) == 0
    assert main(["report", str(root / "out"), "--per-status", "3", "--per-view", "4"]) == 0
    assert main(["report", str(root / "out"), "--html", str(root / "out/full.html")]) == 0  # every sample a card
    import pyarrow.parquet as pq

    rows = [r for p in sorted((root / "out/shards").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return root / "out", rows


async def _ended(browser, seen: dict) -> dict:
    """What the page logged and fetched, then the session closed."""
    seen["problems"], seen["requests"] = browser.problems(), browser.requests()
    await browser.session.close()
    return seen


def _visit(exercise, chromium: str, report_dir, tmp_path, html: str, png: str):
    """Run `exercise` on the report page `html` (screenshot to `png`): no console problem, no request
    leaves the file. -> (what it saw, the run's rows, the screenshot)."""
    out, rows = report_dir
    shot = Path(os.environ.get("VLM_AUG_SCREENSHOT_DIR", tmp_path)) / png
    shot.parent.mkdir(parents=True, exist_ok=True)
    seen = asyncio.run(exercise(chromium, out / html, shot))
    assert seen["problems"] == [], seen["problems"]
    assert all(u.startswith(("data:", "file:")) for u in seen["requests"]), seen["requests"]
    return seen, rows, shot


async def _exercise(binary: str, page: Path, shot: Path) -> dict:
    browser = Browser(binary)
    try:
        await load_page(browser, page.resolve().as_uri())
        seen = {"initial": await browser.evaluate(f"{VISIBLE}.length"), "shown_attr": await browser.evaluate(SHOWN)}
        await screenshot(browser, shot)
        await browser.evaluate("document.querySelector('button[data-status=rejected]').click()")
        seen["rejected"] = await browser.evaluate(f"{VISIBLE}.map(c => c.dataset.status)")
        await browser.evaluate("document.querySelector('button[data-status=all]').click();"
                               "document.querySelector('button[data-view=lowest]').click()")
        seen["lowest"] = await browser.evaluate(f"{VISIBLE}.map(c => parseFloat(c.dataset.clipRewrite))")
        await browser.evaluate("document.querySelector('button[data-view=gain]').click()")
        seen["gain"] = await browser.evaluate(f"{VISIBLE}.map(c => parseFloat(c.dataset.gain))")
        await browser.evaluate("document.querySelector('button[data-view=sample]').click();"
                               "const s = document.getElementById('reason'); s.value = 'decode_error';"
                               "s.dispatchEvent(new Event('change'))")
        seen["decode_error"] = await browser.evaluate(f"{VISIBLE}.map(c => c.dataset.reason)")
        seen["images_broken"] = await browser.evaluate(
            "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length")
        seen["overflow"] = await browser.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        return await _ended(browser, seen)
    finally:
        browser.close()


def test_report_renders_in_chromium_with_working_filters(chromium, report_dir, tmp_path):
    seen, rows, shot = _visit(_exercise, chromium, report_dir, tmp_path, "report.html", "report.png")
    count = {s: sum(r["status"] == s for r in rows) for s in ("kept", "rejected", "error")}
    assert min(count.values()) >= 1, count
    expected = sum(min(3, n) for n in count.values())
    assert seen["initial"] == expected and seen["shown_attr"] == str(expected)
    assert seen["rejected"] == ["rejected"] * min(3, count["rejected"])
    scored = sorted(r["clip_rewrite"] for r in rows if r["clip_rewrite"] is not None)
    assert seen["lowest"] == pytest.approx(scored[:4], abs=1e-6)  # the 4 lowest, ascending
    gains = sorted((r["clip_rewrite"] - r["clip_orig"] for r in rows if r["clip_rewrite"] is not None), reverse=True)
    assert seen["gain"] == pytest.approx(gains[:4], abs=1e-6)
    assert seen["decode_error"] == ["decode_error"]
    assert seen["images_broken"] == 0
    assert seen["overflow"] <= 0, "the page scrolls sideways: a long word escapes its card"
    image = Image.open(shot)
    assert 1300 <= image.width <= 1400 and image.height > 1500  # the 1400 px viewport less its scrollbar
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 200  # a real page, not a blank one


async def _full_page(binary: str, page: Path, shot: Path) -> dict:
    browser = Browser(binary)
    try:
        await load_page(browser, page.resolve().as_uri())
        seen = {"shown": await browser.evaluate(f"{VISIBLE}.map(c => c.dataset.key)"),
                "markup": await browser.evaluate("document.querySelector('[data-key=s02_0001] dd.orig').textContent"),
                "overflow": await browser.evaluate("document.documentElement.scrollWidth - window.innerWidth"),
                "scripts": await browser.evaluate("document.scripts.length"),
                "images": await browser.evaluate("Array.from(document.images).filter(i => i.naturalWidth > 0).length")}
        await screenshot(browser, shot)
        return await _ended(browser, seen)
    finally:
        browser.close()


def test_full_report_shows_every_card_and_keeps_hostile_captions_as_text(chromium, report_dir, tmp_path):
    seen, rows, shot = _visit(_full_page, chromium, report_dir, tmp_path, "full.html", "report_full.png")
    assert sorted(seen["shown"]) == sorted(r["key"] for r in rows)  # small run: every sample is a card
    assert seen["markup"] == '<script>alert("caption")</script><img src=x>'  # shown as text, never run
    assert seen["scripts"] == 1 and seen["images"] == 4 + sum(r["status"] != "error" for r in rows)
    assert seen["overflow"] <= 0, "the page scrolls sideways: the 400-letter word escapes its card"
    assert Image.open(shot).height > 1500
