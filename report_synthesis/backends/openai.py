"""Any OpenAI-compatible ``/v1/chat/completions`` server (``vllm serve``, llama.cpp server, Ollama, hosted APIs).

Plain ``urllib`` with a thread pool: bounded concurrency, retries with exponential backoff (and jitter,
and ``Retry-After`` when the server sends one) on 429, 5xx, timeouts and connection errors. Other HTTP
errors and malformed bodies are not retried here; they come back as :class:`Generation` errors that the
pipeline records and handles like a rejected report.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from mvmlm.config import ConfigError
from report_synthesis import structured
from report_synthesis.backends import BackendConfig, Generation, Request, register_backend, require_model

__all__ = ["OpenAIBackend"]

log = logging.getLogger(__name__)
_TRANSIENT = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException)


class _Retry(Exception):
    """A transient failure: retry after ``wait`` seconds (0 = use the backoff schedule)."""

    def __init__(self, message: str, wait: float = 0.0):
        super().__init__(message)
        self.wait = wait


def _retry_after(headers) -> float:
    try:
        return max(0.0, float(headers.get("Retry-After", 0) or 0))
    except (TypeError, ValueError):  # an HTTP date: fall back to our own schedule
        return 0.0


def parse_completion(request_id: str, body: bytes) -> Generation:
    """The first choice of a chat-completions response body, or a Generation with a ``malformed`` error."""
    try:
        choice = json.loads(body)["choices"][0]
        text = choice["message"]["content"]
        if not isinstance(text, str):
            raise TypeError(f"message content is {type(text).__name__}")
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        snippet = body[:120].decode("utf-8", "replace")
        return Generation(request_id, error=f"malformed response ({type(exc).__name__}: {exc}): {snippet!r}")
    return Generation(request_id, text, choice.get("finish_reason"))


@register_backend("openai")
class OpenAIBackend:
    """POST one chat-completions request per report, ``concurrency`` at a time."""

    name = "openai"

    def __init__(self, cfg: BackendConfig):
        self.cfg = cfg
        self.opts = cfg.openai
        self.model = require_model(cfg)
        self.url = self.opts.base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        if self.opts.api_key_env:
            key = os.environ.get(self.opts.api_key_env)
            if not key:
                raise ConfigError(
                    f"key 'backend.openai.api_key_env': environment variable {self.opts.api_key_env} is not set; "
                    "export it, or set backend.openai.api_key_env=null for a server without a key"
                )
            self.headers["Authorization"] = f"Bearer {key}"

    def body(self, request: Request) -> dict:
        """The JSON body of one request."""
        sampling = self.cfg.sampling
        body = {
            "model": self.model,
            "messages": structured.with_instruction(request.messages) if self.opts.structured else request.messages,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": request.seed,
            "n": 1,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if self.opts.structured:
            schema = {"name": "mammography_report", "schema": structured.SCHEMA, "strict": True}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        return body

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=max(1, self.opts.concurrency)) as pool:
            return list(pool.map(self._one, requests))

    def _post(self, request: Request) -> Generation:
        data = json.dumps(self.body(request)).encode()
        http_request = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(http_request, timeout=self.opts.timeout_s) as response:
                generation = parse_completion(request.id, response.read())
            if self.opts.structured and not generation.error:
                return structured.parse(request.id, generation.text, generation.finish_reason)
            return generation
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace")
            if exc.code == 429 or exc.code >= 500:
                raise _Retry(f"HTTP {exc.code}: {detail}", _retry_after(exc.headers)) from None
            return Generation(request.id, error=f"HTTP {exc.code}: {detail}")
        except _TRANSIENT as exc:
            raise _Retry(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None

    def _one(self, request: Request) -> Generation:
        jitter = random.Random(request.seed)
        for attempt in range(self.opts.max_retries + 1):
            try:
                return self._post(request)
            except _Retry as exc:
                last = str(exc)
                if attempt == self.opts.max_retries:
                    break
                delay = self.opts.backoff_s * 2**attempt * jitter.uniform(0.5, 1.0)
                delay = min(self.opts.max_backoff_s, max(delay, exc.wait))
                log.debug("%s: %s; retry %d in %.2fs", request.id, last, attempt + 1, delay)
                time.sleep(delay)
        return Generation(request.id, error=f"{last} (gave up after {self.opts.max_retries + 1} attempts)")
