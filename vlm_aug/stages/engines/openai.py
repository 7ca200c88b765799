"""`vlm.engine: openai`: any OpenAI-compatible chat-completions server (`vllm serve`, SGLang,
lmdeploy, TGI, hosted APIs). The image goes as a data URL of its original bytes; the server applies
the model's own chat template. At most `vlm.max_in_flight` requests per worker, spread across the
endpoints; connection errors, timeouts, 408, 429 and 5xx are retried with backoff (Retry-After
honoured), on the next endpoint first. Every endpoint must serve the model at start-up; one that does
not answer then is left out, with a warning, when another does.

A request the server refuses for itself (400, 413, 422: an image or prompt it cannot take) fails its
sample with `rewrite_error` and the error text. Anything that says the server cannot serve (it does
not answer, 401/403/404: its key, model or path, 408/429/5xx still after the retries) raises
EngineUnavailable for the window, naming that cause: the shard fails and a rerun redoes it, instead of
committing samples with errors that a rerun would skip. A 200 reply that is not a chat completion (no
`choices`, not JSON, a `content` that is not a string) is retried like a 5xx, then fails the shard
likewise. The API key is read from the variable `vlm.api_key_env` names and is never written anywhere:
every text taken from a reply or an exception has it replaced by `***` before it is stored, printed or
raised (a server may echo the Authorization header in its error)."""

from __future__ import annotations

import base64
import io
import itertools
import json
import logging
import os
import random
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from vlm_aug.config import ConfigError, GenerationConfig, VLMConfig
from vlm_aug.formats import MIME_OF_EXT
from vlm_aug.shards.images import header_facts
from vlm_aug.stages.engines.base import EngineUnavailable, Request, Result
from vlm_aug.stages.models import ModelUnavailable

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
SERVER_STATUS = {401, 403, 404}  # the server's setup (its key, the model name, the path), not the sample
MAX_WAIT_S = 30.0
KEY_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")  # what vlm.api_key_env may hold: a variable's name, never a key
EXCERPT = 300  # characters of a reply quoted in an error


class NotACompletion(ValueError):
    """A 200 reply that is not an OpenAI chat completion."""


class _Down:
    """Set once a request learns that the server cannot serve this window; keeps the first cause."""

    def __init__(self):
        self.event, self.lock, self.reason = threading.Event(), threading.Lock(), None

    def set(self, reason: str) -> None:
        with self.lock:
            if self.reason is None:
                self.reason = reason
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()


class _Unreachable(Exception):
    """No endpoint answered (connection refused or reset): the server is down."""


def data_url(data: bytes, ext: Optional[str]) -> str:
    """The bytes as a data URL; the MIME type is read from the bytes, not the member name."""
    mime = MIME_OF_EXT.get(header_facts(data, ext)[0] or "", "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def request_image(request: Request) -> str:
    """The data URL of a request's image: its original bytes, or, where decoding changed their pixels
    (an EXIF orientation, transparency on white, 16 bits a channel), the decoded image as a PNG, so
    the server's VLM sees the pixels the hf engine and CLIP see (a server decodes the bytes plainly)."""
    if request.image_altered and request.image is not None:
        buffer = io.BytesIO()
        request.image.save(buffer, format="PNG", compress_level=1)
        return data_url(buffer.getvalue(), "png")
    return data_url(request.image_bytes, request.image_ext)


class OpenAIEngine:
    name = "openai"
    per_call = None  # a window goes out together, max_in_flight at a time

    def __init__(self, vlm: VLMConfig, generation: GenerationConfig):
        self.vlm, self.generation = vlm, generation
        self.endpoints = list(vlm.endpoint or [])
        self.model_name = vlm.served_model_name or vlm.model
        self.revision = None  # the weights are the server's: their identity is the model id it reports
        self.device, self.dtype = "server", "server"  # the server decides both
        self.client = self.pool = None
        self.served_model: Optional[str] = None
        self.server_version: Optional[str] = None
        self.versions: dict[str, Optional[str]] = {}  # endpoint -> its server's version at setup
        self._turn = itertools.count()
        self._key: Optional[str] = None  # the API key, once read: redacted from every text taken from a reply

    # --- setup ---------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        name = self.vlm.api_key_env
        if not name:
            return {}
        if not KEY_NAME.fullmatch(name):  # a key put there by mistake: never echo it
            raise ConfigError("vlm.api_key_env must name an environment variable (e.g. OPENAI_API_KEY), not hold "
                              "the key itself: keys never go into a config")
        key = os.environ.get(name)
        if not key:
            raise ConfigError(f"vlm.api_key_env names {name}, which is not set in this worker's environment: "
                              f"export {name}=... (on a Ray cluster, on every worker)")
        self._key = key
        return {"Authorization": f"Bearer {key}"}

    def _redact(self, text: object) -> str:
        """`text` (from a reply or an exception) without the API key: a server may echo the Authorization
        header. Also its JSON-escaped and URL-encoded forms; called before any cut, so no part survives."""
        text = str(text)
        key = self._key
        if key:
            from urllib.parse import quote

            for form in {key, json.dumps(key)[1:-1], quote(key, safe="")}:
                text = text.replace(form, "***")
        return text

    def _excerpt(self, reply) -> str:
        """The start of a reply's body, on one line, without the key."""
        try:
            body = reply.text
        except Exception:  # noqa: BLE001 - an undecodable body: its bytes, as text
            body = reply.content.decode("utf-8", "replace")
        body = " ".join(self._redact(body).split())
        return body[:EXCERPT] + ("..." if len(body) > EXCERPT else "")

    def setup(self) -> None:
        import httpx

        timeout = httpx.Timeout(self.vlm.request_timeout_s, connect=min(10.0, self.vlm.request_timeout_s))
        limits = httpx.Limits(max_connections=self.vlm.max_in_flight, max_keepalive_connections=self.vlm.max_in_flight)
        self.client = httpx.Client(timeout=timeout, limits=limits, headers=self._headers())
        self.pool = ThreadPoolExecutor(self.vlm.max_in_flight, thread_name_prefix="vlm_aug-openai")
        served = self._models()
        for url, names in served.items():  # every endpoint: requests are spread over all of them
            if self.model_name not in names:
                raise ModelUnavailable(
                    f"the server at {url} serves {self._redact(sorted(names))}, not {self.model_name!r}: set "
                    f"vlm.served_model_name to one of them, or start the server with --served-model-name "
                    f"{self.model_name}")
        self.endpoints = [url for url in self.endpoints if url in served]
        self.served_model = self.model_name
        self.versions = {url: self._server_version(url) for url in self.endpoints}
        if any(v is None for v in self.versions.values()) and any(self.versions.values()):
            time.sleep(1.0)  # some said their version, some not: once more before taking "not" for an answer
            self.versions = {url: v or self._server_version(url) for url, v in self.versions.items()}
        known = {v for v in self.versions.values() if v is not None}
        if len(known) > 1 or (known and None in self.versions.values()):  # each record names one version
            said = ", ".join(f"{url}: {v or 'no /version'}" for url, v in self.versions.items())
            raise ModelUnavailable(f"vlm.endpoint: the servers run different versions or do not all say theirs "
                                   f"({said}), and each record names the one server version that generated it. "
                                   "Run one version on every endpoint, or list only the endpoints of one version")
        self.server_version = next(iter(known), None)

    def check_versions(self) -> None:
        """EngineUnavailable when a server now reports another version than when this worker started (it was
        restarted or upgraded): this worker's shards fail from then on, and a rerun, whose records name the
        new version, redoes them. Checked before each batch, and after one that retried (a restart mid-batch),
        for the endpoints that said their version at start (a hosted API without /version costs nothing)."""
        for url, before in self.versions.items():
            if before is None:
                continue
            now = self._server_version(url, timeout=2.0)
            if now is not None and now != before:
                raise EngineUnavailable(f"the server at {url} now reports {now}, not {before} as "
                                        "when this worker started (restarted or upgraded): this shard's records "
                                        "would name the wrong version; a rerun redoes it with the new one")

    def _models(self) -> dict[str, set[str]]:
        """endpoint -> the model ids it serves (GET /models), for every endpoint that answers. Endpoints are
        asked in rounds, with a wait between rounds (a server still starting); once one has answered, the
        others get one more round and are then left out with a warning."""
        pending, served, errors = list(self.endpoints), {}, {}
        for attempt in range(self.vlm.max_retries + 1):
            for url in list(pending):
                try:
                    reply = self.client.get(f"{url}/models")
                except Exception as exc:  # connection refused while the server starts: wait, then try again
                    errors[url] = f"{type(exc).__name__}: {self._redact(exc)}"
                    continue
                if reply.status_code in RETRY_STATUS:
                    errors[url] = f"HTTP {reply.status_code}"
                    continue
                served[url] = self._model_ids(url, reply)
                pending.remove(url)
            if not pending or (served and attempt >= 1):
                break
            if attempt == 0 and not served and self.vlm.max_retries:  # say so before waiting ~31 s in silence
                print(f"vlm-aug: no answer yet from {', '.join(pending)} ({errors[pending[0]]}): waiting for the "
                      f"server, {self.vlm.max_retries} more {'try' if self.vlm.max_retries == 1 else 'tries'} over "
                      f"up to {self._total_wait():.1f} s "
                      "(vlm.max_retries, vlm.retry_backoff_s)", file=sys.stderr, flush=True)
            if attempt < self.vlm.max_retries:
                self._sleep(attempt)
        if not served:
            said = "; ".join(f"{url}: {error}" for url, error in list(errors.items())[-2:])
            raise ModelUnavailable(f"vlm.engine openai: no endpoint answered GET /models ({said}; "
                                   f"{self.vlm.max_retries + 1} tries). Start the server, or fix vlm.endpoint "
                                   "(the base URL ending in /v1)")
        if pending:
            log.warning("vlm.endpoint: %s did not answer GET /models (%s); this worker uses the other %d",
                        ", ".join(pending), "; ".join(errors[u] for u in pending), len(served))
            print(f"vlm-aug: warning: vlm.endpoint {', '.join(pending)} did not answer GET /models "
                  f"({'; '.join(errors[u] for u in pending)}); this worker uses the other {len(served)}", file=sys.stderr)
        return served

    def _total_wait(self) -> float:
        return sum(min(MAX_WAIT_S, self.vlm.retry_backoff_s * 2 ** a) for a in range(self.vlm.max_retries))

    def _model_ids(self, url: str, reply) -> set[str]:
        if reply.status_code in (401, 403):
            raise ModelUnavailable(f"{url}/models answered {reply.status_code}: check the key in the variable "
                                   f"vlm.api_key_env names ({self.vlm.api_key_env or 'none set'})")
        try:
            if reply.status_code != 200:
                raise ValueError(f"HTTP {reply.status_code}")
            return {m["id"] for m in reply.json().get("data", [])}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelUnavailable(f"{url}/models did not answer a list of models ({self._redact(exc)}): is {url} the "
                                   "server's OpenAI-compatible base URL, ending in /v1 (e.g. http://127.0.0.1:8000/v1)?"
                                   ) from None

    def _server_version(self, url: str, timeout: float = 5.0) -> Optional[str]:
        base = url.rsplit("/v1", 1)[0]
        try:
            reply = self.client.get(f"{base}/version", timeout=timeout)
            if reply.status_code == 200 and "version" in reply.json():
                return self._redact(f"vllm {reply.json()['version']}")  # vllm serve answers /version; others may not
        except Exception:
            pass
        return None

    def describe(self) -> dict:
        settings: dict[str, Any] = {"served_model": self.served_model, "endpoints": len(self.endpoints),
                                    "max_in_flight": self.vlm.max_in_flight}
        if self.vlm.processor_kwargs:
            settings["mm_processor_kwargs"] = dict(self.vlm.processor_kwargs)
        return {"name": self.name, "version": self.server_version, "settings": settings}

    # --- requests ------------------------------------------------------------------------------
    def payload(self, request: Request) -> dict:
        g = self.generation
        content = [{"type": "image_url", "image_url": {"url": request_image(request)}},
                   {"type": "text", "text": request.rendered_prompt}]
        body: dict[str, Any] = {"model": self.model_name, "messages": [{"role": "user", "content": content}],
                                "max_tokens": g.max_new_tokens, "seed": request.seed,
                                "temperature": g.temperature if g.do_sample else 0.0,
                                "top_p": g.top_p if g.do_sample else 1.0}
        if self.vlm.processor_kwargs:  # vLLM's extension: the same image tokens as the hf engine
            body["mm_processor_kwargs"] = dict(self.vlm.processor_kwargs)
        return body

    def _sleep(self, attempt: int, reply=None) -> None:
        wait = min(MAX_WAIT_S, self.vlm.retry_backoff_s * 2 ** attempt) * random.uniform(0.75, 1.0)
        after = reply.headers.get("retry-after") if reply is not None else None
        if after:
            try:
                wait = min(MAX_WAIT_S, max(wait, float(after)))
            except ValueError:
                pass
        time.sleep(wait)

    def _one(self, request: Request, down: _Down) -> Result:
        import httpx

        body = self.payload(request)
        start, ends = next(self._turn), len(self.endpoints)
        retries, last, reply = 0, "", None
        for attempt in range(self.vlm.max_retries + 1):
            if down.is_set():
                return Result(retries=retries, error="not sent")
            url = self.endpoints[(start + attempt) % ends]
            reply = None
            try:
                reply = self.client.post(f"{url}/chat/completions", json=body)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                last = f"{url}: {type(exc).__name__}: {self._redact(exc)}"
            except httpx.TimeoutException as exc:
                last = f"{url}: timeout after {self.vlm.request_timeout_s} s ({type(exc).__name__})"
            else:
                if reply.status_code == 200:
                    try:
                        return self._completion(reply, retries)
                    except NotACompletion as exc:  # a gateway's page, an error object: the server misbehaves
                        last = (f"{url}/chat/completions answered 200 with a reply that is not an OpenAI chat "
                                f"completion ({exc}): {self._excerpt(reply)!r}")
                else:
                    last = f"{url}: HTTP {reply.status_code}: {self._excerpt(reply)}"
                if reply.status_code in SERVER_STATUS:  # its key, model or path: every request would fail alike
                    down.set(last)
                    return Result(retries=retries, error=last)
                if reply.status_code not in RETRY_STATUS | {200}:  # the request itself is refused: no retry helps
                    return Result(retries=retries, error=last)
            if attempt < self.vlm.max_retries:
                retries += 1
                if (attempt + 1) % ends == 0:  # every endpoint tried once since the last wait
                    self._sleep(attempt // ends, reply)
        down.set(last)  # still failing after the retries: the server cannot serve now; a rerun redoes the shard
        return Result(retries=retries, error=last)

    @staticmethod
    def _completion(reply, retries: int) -> Result:
        """The Result of a 200 reply; NotACompletion when it is not an OpenAI chat completion."""
        try:
            data = reply.json()
        except ValueError:
            raise NotACompletion("not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
            raise NotACompletion("no choices")
        choice = data["choices"][0]
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise NotACompletion("no choices[0].message")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise NotACompletion(f"choices[0].message.content is a {type(content).__name__}, not a string")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        tokens = usage.get("completion_tokens")
        return Result(text=content or "", retries=retries,
                      new_tokens=tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None,
                      hit_limit=choice.get("finish_reason") == "length")

    def generate(self, requests: list[Request]) -> list[Result]:
        down = _Down()
        self.check_versions()
        results = list(self.pool.map(lambda r: self._one(r, down), requests))
        failed = [r for r in results if r.error is not None]
        if down.is_set() or (len(requests) > 1 and len(failed) == len(requests)):
            unsent = sum(r.error == "not sent" for r in failed)
            cause = down.reason or next((r.error for r in failed if r.error != "not sent"), "unknown")
            raise EngineUnavailable(f"the server did not serve this shard: {cause} ({len(failed) - unsent} of "
                                    f"{len(requests)} requests failed, {unsent} not sent after that)")
        if any(r.retries for r in results):
            self.check_versions()
        return results

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        if self.client is not None:
            self.client.close()
