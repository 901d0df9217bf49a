"""A local causal LM through transformers: chat template, left-padded batches, ``model.generate``.

Works on CPU with a small instruct model (e.g. ``Qwen/Qwen2.5-0.5B-Instruct``). Sampling draws from
torch's global generator seeded per batch from the requests' seeds, so a run is reproducible for a
fixed ``batch_size`` and chunking.
"""

from __future__ import annotations

from collections.abc import Sequence

from mvmlm.config import ConfigError
from report_synthesis.backends import (
    BackendConfig,
    Generation,
    Request,
    derive_seed,
    register_backend,
    require_model,
)

__all__ = ["TransformersBackend"]


@register_backend("transformers")
class TransformersBackend:
    """``AutoModelForCausalLM`` + ``AutoTokenizer`` (which must carry a chat template)."""

    name = "transformers"

    def __init__(self, cfg: BackendConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.torch = torch
        model = require_model(cfg)
        opts = cfg.transformers
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if opts.device == "auto" else opts.device
        self.tokenizer = AutoTokenizer.from_pretrained(model, revision=cfg.revision)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"key 'backend.model': {model} has no chat template; use an instruct/chat model")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = "auto" if opts.dtype == "auto" else getattr(torch, opts.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model, revision=cfg.revision, dtype=dtype)
        self.model.to(self.device).eval()

    def _generate_kwargs(self) -> dict:
        sampling = self.cfg.sampling
        kwargs = {"max_new_tokens": sampling.max_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        return kwargs

    def _stop_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids) if isinstance(ids, list) else {ids}
        return {i for i in ids | {self.tokenizer.eos_token_id} if i is not None}

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        out: list[Generation] = []
        size = max(1, self.cfg.transformers.batch_size)
        stop_ids = self._stop_ids()
        for start in range(0, len(requests), size):
            batch = requests[start : start + size]
            prompts = [
                self.tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
                for r in batch
            ]
            inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            inputs = inputs.to(self.device)
            self.torch.manual_seed(derive_seed(*(r.seed for r in batch)))
            with self.torch.inference_mode():
                tokens = self.model.generate(**inputs, **self._generate_kwargs())
            new = tokens[:, inputs["input_ids"].shape[1] :]
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            for request, row, text in zip(batch, new.tolist(), texts, strict=True):
                truncated = len(row) >= self.cfg.sampling.max_tokens and not stop_ids & set(row)
                out.append(Generation(request.id, text, "length" if truncated else "stop"))
        return out
