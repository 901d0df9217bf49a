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

from report_synthesis import structured
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


def sampling_kwargs(sampling: SamplingConfig, seed: int, structured_output: bool = False) -> dict:
    """Keyword arguments of ``vllm.SamplingParams(...)`` for one request (``seed`` is per request); with
    ``structured_output``, ``structured_outputs`` holds the ``StructuredOutputsParams`` arguments."""
    kwargs = {
        "n": 1,
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "stop": list(sampling.stop) or None,
        "seed": seed,
    }
    if structured_output:
        kwargs["structured_outputs"] = {"json": structured.SCHEMA}
    return kwargs


@register_backend("vllm")
class VllmBackend:
    """One ``vllm.LLM`` for the whole run; each :meth:`generate` call is one ``LLM.chat`` over a chunk."""

    name = "vllm"

    def __init__(self, cfg: BackendConfig):
        self.cfg = cfg
        vllm = import_vllm()
        self._sampling_params = vllm.SamplingParams
        if cfg.vllm.structured:
            self._structured_params = importlib.import_module("vllm.sampling_params").StructuredOutputsParams
        self._llm = vllm.LLM(**llm_kwargs(cfg))

    def _params(self, seed: int):
        kwargs = sampling_kwargs(self.cfg.sampling, seed, self.cfg.vllm.structured)
        if "structured_outputs" in kwargs:
            kwargs["structured_outputs"] = self._structured_params(**kwargs["structured_outputs"])
        return self._sampling_params(**kwargs)

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        if not requests:
            return []
        params = [self._params(r.seed) for r in requests]
        structured_output = self.cfg.vllm.structured
        outputs = self._llm.chat(
            [structured.with_instruction(r.messages) if structured_output else r.messages for r in requests],
            params,
            use_tqdm=False,
            chat_template_kwargs=dict(self.cfg.vllm.chat_template_kwargs) or None,
        )
        wrap = structured.parse if structured_output else Generation
        return [
            wrap(r.id, out.outputs[0].text, out.outputs[0].finish_reason)
            for r, out in zip(requests, outputs, strict=True)
        ]
