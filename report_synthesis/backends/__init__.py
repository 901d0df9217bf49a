"""Text generation backends behind one interface: ``backend.generate(requests) -> generations`` (same order).

``vllm`` (in-process, GPU), ``openai`` (any OpenAI-compatible ``/v1/chat/completions`` server),
``transformers`` (a local causal LM, CPU or GPU) and ``template`` (no model). Each module registers itself
with :func:`register_backend`; :func:`create_backend` imports it on first use, so heavy or optional
dependencies (vLLM, torch) load only for the backend in use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mvmlm.config import ConfigError
from mvmlm.errors import InputError
from mvmlm.registry import Registry
from report_synthesis.facts import BreastFacts

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendConfig",
    "BackendError",
    "BackendUnavailable",
    "Generation",
    "OpenAIOptions",
    "Request",
    "SamplingConfig",
    "TransformersOptions",
    "VllmOptions",
    "create_backend",
    "derive_seed",
    "register_backend",
    "require_model",
]

#: backend name -> module that registers it (imported on first use)
#: backend name -> ``factory(cfg: BackendConfig) -> Backend``; each module registers itself when first used
BACKENDS: Registry[Callable[[BackendConfig], Backend]] = Registry(
    "report backend",
    lazy={name: f"report_synthesis.backends.{name}" for name in ("vllm", "openai", "transformers", "template")},
)
register_backend = BACKENDS.register


class BackendUnavailable(ImportError, InputError):
    """A backend's optional dependency is not installed (the message names the extra to install)."""


class BackendError(RuntimeError):
    """A backend failed as a whole (e.g. the server answered no request of a chunk)."""


@dataclass
class SamplingConfig:
    max_tokens: int = 320  # always explicit: vLLM's default is 16
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.95
    stop: list[str] = field(default_factory=list)


@dataclass
class VllmOptions:
    tensor_parallel_size: int = 1
    max_model_len: int | None = 4096
    gpu_memory_utilization: float = 0.9
    dtype: str = "auto"
    trust_remote_code: bool = False
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {enable_thinking: false}
    structured: bool = False  # JSON {report, stated_facts} under a schema (StructuredOutputsParams); see structured.py


@dataclass
class OpenAIOptions:
    base_url: str = "http://localhost:8000/v1"
    api_key_env: str | None = None  # name of the environment variable holding the API key; null = no key
    concurrency: int = 8  # requests in flight
    timeout_s: float = 120.0  # per HTTP request
    max_retries: int = 5  # on 429, 5xx, timeouts and connection errors
    backoff_s: float = 1.0  # first retry delay; doubles per retry (with jitter)
    max_backoff_s: float = 60.0
    structured: bool = False  # JSON {report, stated_facts} via response_format json_schema; see structured.py


@dataclass
class TransformersOptions:
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    batch_size: int = 8


@dataclass
class BackendConfig:
    name: str = "template"  # vllm | openai | transformers | template
    model: str | None = None  # hub name or local path (served model name for openai)
    revision: str | None = None  # pin a commit for reproducibility
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    vllm: VllmOptions = field(default_factory=VllmOptions)
    openai: OpenAIOptions = field(default_factory=OpenAIOptions)
    transformers: TransformersOptions = field(default_factory=TransformersOptions)


@dataclass(frozen=True)
class Request:
    """One generation: ``id`` = ``breast_id#variant``; ``seed`` differs per id and attempt."""

    id: str
    messages: list[dict[str, str]]
    seed: int
    facts: BreastFacts


@dataclass(frozen=True)
class Generation:
    """A backend's answer to one request: raw text, or an error that the pipeline records."""

    id: str
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | None (unknown)
    error: str | None = None
    stated_facts: dict | None = None  # what a structured answer says its report states (checked like the text)


class Backend(Protocol):
    name: str

    def generate(self, requests: Sequence[Request]) -> list[Generation]: ...


def create_backend(cfg: BackendConfig) -> Backend:
    """Build the backend named ``cfg.name`` (importing its module on first use)."""
    if cfg.name not in BACKENDS:
        raise ConfigError(f"key 'backend.name': unknown report backend {cfg.name!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS.get(cfg.name)(cfg)


def require_model(cfg: BackendConfig) -> str:
    """``cfg.model`` or a :class:`ConfigError` saying the backend needs one."""
    if not cfg.model:
        raise ConfigError(f"key 'backend.model': the {cfg.name} backend needs a model name or path")
    return cfg.model


def derive_seed(*parts: object) -> int:
    """A 31-bit seed derived from ``parts`` (stable across processes and Python versions)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
