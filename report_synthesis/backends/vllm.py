"""In-process vLLM: ``LLM.chat`` over a chunk of conversations with one explicit ``SamplingParams`` per request.

vLLM is imported only when this backend is built. Requests are first built as plain dicts
(:func:`llm_kwargs`, :func:`sampling_kwargs`) so their construction is testable without vLLM; they become
``vllm.LLM`` / ``vllm.SamplingParams`` only inside :class:`VllmBackend`. ``generation_config="vllm"`` stops
vLLM from silently applying the model's ``generation_config.json`` over our sampling parameters.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

from report_synthesis.backends import (
    BackendConfig,
    BackendUnavailable,
    Generation,
    Request,
    SamplingConfig,
    register_backend,
    require_model,
)

__all__ = ["VllmBackend", "llm_kwargs", "sampling_kwargs", "import_vllm"]


def import_vllm() -> ModuleType:
    """``import vllm`` or :class:`BackendUnavailable` naming the extra to install."""
    try:
        return importlib.import_module("vllm")
    except ImportError as exc:
        raise BackendUnavailable(
            f"the vllm report backend needs vLLM, which is not importable here ({exc}); "
            'install it on a CUDA machine with `pip install -e ".[llm]"` run in the repository root, or use '
            "backend.name=openai against a served model, or backend.name=transformers / template"
        ) from exc


def llm_kwargs(cfg: BackendConfig) -> dict:
    """Keyword arguments of ``vllm.LLM(...)`` for ``cfg``."""
    opts = cfg.vllm
    return {
        "model": require_model(cfg),
        "revision": cfg.revision,
        "tensor_parallel_size": opts.tensor_parallel_size,
        "max_model_len": opts.max_model_len,
        "gpu_memory_utilization": opts.gpu_memory_utilization,
        "dtype": opts.dtype,
        "trust_remote_code": opts.trust_remote_code,
        "generation_config": "vllm",
    }


def sampling_kwargs(sampling: SamplingConfig, seed: int) -> dict:
    """Keyword arguments of ``vllm.SamplingParams(...)`` for one request (``seed`` is per request)."""
    return {
        "n": 1,
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "stop": list(sampling.stop) or None,
        "seed": seed,
    }


@register_backend("vllm")
class VllmBackend:
    """One ``vllm.LLM`` for the whole run; each :meth:`generate` call is one ``LLM.chat`` over a chunk."""

    name = "vllm"

    def __init__(self, cfg: BackendConfig):
        self.cfg = cfg
        vllm = import_vllm()
        self._sampling_params = vllm.SamplingParams
        self._llm = vllm.LLM(**llm_kwargs(cfg))

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        if not requests:
            return []
        params = [self._sampling_params(**sampling_kwargs(self.cfg.sampling, r.seed)) for r in requests]
        outputs = self._llm.chat(
            [r.messages for r in requests],
            params,
            use_tqdm=False,
            chat_template_kwargs=dict(self.cfg.vllm.chat_template_kwargs) or None,
        )
        return [
            Generation(r.id, out.outputs[0].text, out.outputs[0].finish_reason)
            for r, out in zip(requests, outputs, strict=True)
        ]
