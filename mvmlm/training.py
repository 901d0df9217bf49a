"""Pieces every Accelerate training loop of mvmlm shares: optimizer groups, warmup + cosine schedule, a step
counter that is checkpointed, atomic checkpoint rotation, a non-finite loss guard and tracker selection.

A checkpoint is ``<root>/step_<00000123>/`` written by ``accelerator.save_state`` into a temporary folder that is
renamed when complete, so ``latest_checkpoint`` never returns a half-written one (a run killed while saving
leaves only a ``.tmp-*`` folder, removed by the next save).
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "param_groups", "average_gradients", "WarmupCosine", "warmup_cosine_schedule", "Best", "TrainState",
    "NonFiniteLossError", "check_finite", "checkpoint_dirs", "latest_checkpoint", "resolve_resume", "save_checkpoint",
    "tracker_name", "flat_hparams",
]  # fmt: skip

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d+)$")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices and kernels; none on norms, biases, scalars (e.g. the logit scale)
    and any parameter marked ``param._no_weight_decay = True``. Frozen parameters are left out."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim <= 1 or getattr(param, "_no_weight_decay", False)
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class WarmupCosine:
    """LR factor at step ``s``: linear warmup from ~0 to 1 over ``warmup_steps``, then cosine to ``min_ratio``.

    A dataclass (not a lambda) so ``LambdaLR.state_dict`` stores its settings with the checkpoint.
    """

    warmup_steps: int
    total_steps: int
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> LambdaLR:
    """A scheduler to step once per optimizer step (do not ``accelerator.prepare`` it: a prepared scheduler
    steps ``num_processes`` times per call). Register it with ``accelerator.register_for_checkpointing``."""
    if warmup_steps < 0 or total_steps <= 0 or not 0 <= min_ratio <= 1:
        raise ValueError(f"bad schedule: warmup_steps={warmup_steps}, total_steps={total_steps}, min_ratio={min_ratio}")
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_ratio))


@dataclass
class Best:
    """Validation history and the best epoch so far, checkpointed with the training state."""

    score: float = -math.inf
    epoch: int = -1
    stale: int = 0  # epochs since the best
    history: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {"score": self.score, "epoch": self.epoch, "stale": self.stale, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.score, self.epoch, self.stale = float(state["score"]), int(state["epoch"]), int(state["stale"])
        self.history = list(state["history"])


@dataclass
class TrainState:
    """Optimizer steps done, checkpointed through ``accelerator.register_for_checkpointing``.

    ``layout`` holds what must not change across a resume for the data position to mean the same batches
    (e.g. processes, batch size, accumulation); loading a checkpoint written with another layout raises.
    """

    step: int = 0
    layout: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "layout": dict(self.layout)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("layout", {})
        changed = {k: (saved.get(k), v) for k, v in self.layout.items() if saved.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changed.items())
            raise ValueError(
                f"cannot resume: the checkpoint was written with another layout ({detail}); "
                "resume with the same number of processes, batch size and accumulation"
            )
        self.step = int(state["step"])


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the step was not applied."""


def check_finite(accelerator: Any, loss: torch.Tensor, step: int, ids: Sequence[str]) -> None:
    """Raise :class:`NonFiniteLossError` on every process if the loss is not finite on any process.

    Called before ``backward``, so neither the weights nor the optimizer state see the bad step. The message
    names the step and the ids of the samples of the batch (of every process).
    """
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=loss.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, "sum")
    if bad.item() == 0:
        return
    all_ids = accelerator.gather_object(list(ids)) if accelerator.num_processes > 1 else list(ids)
    raise NonFiniteLossError(
        f"non-finite loss ({loss.item()} on process {accelerator.process_index}) at step {step}; the step was not "
        f"applied and nothing was saved. Batch ids: {', '.join(map(str, all_ids))}"
    )


def average_gradients(accelerator: Any, parameters: Iterable[nn.Parameter]) -> None:
    """Average ``.grad`` over processes in place (one flat all-reduce per dtype); no-op on one process.

    For backward passes run under ``accelerator.no_sync(model)``: pretraining reduces gradients here, once per
    optimizer step, instead of inside DDP's backward (see :mod:`pretrain.step` for why).
    """
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for param in parameters:
        if param.grad is not None:
            by_dtype.setdefault(param.grad.dtype, []).append(param.grad)
    for grads in by_dtype.values():
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= accelerator.num_processes
        for grad, reduced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            grad.copy_(reduced)


def checkpoint_dirs(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as ``(step, path)``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (None when there is none)."""
    found = checkpoint_dirs(root)
    return found[-1][1] if found else None


def resolve_resume(resume: str, root: str | Path) -> Path | None:
    """``""`` -> None; ``"latest"`` -> the newest checkpoint under ``root`` (None if none yet); else that folder."""
    if not resume:
        return None
    if resume == "latest":
        found = latest_checkpoint(root)
        if found is None:
            log.info("resume=latest: no checkpoint under %s yet, starting from scratch", root)
        return found
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"resume checkpoint not found: {path} (use 'latest' or a {root}/step_* folder)")
    return path


def save_checkpoint(accelerator: Any, root: str | Path, step: int, keep: int) -> Path:
    """``accelerator.save_state`` into ``root/step_<step>`` atomically; keep the ``keep`` newest (0 = all).

    Checkpoints of later steps (an earlier run into the same folder) are removed, so ``resume=latest`` always
    continues this run.
    """
    root = Path(root)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"
    if accelerator.is_main_process:
        for stale in root.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for later, stale in checkpoint_dirs(root):
            if later > step:  # left by an earlier run into the same folder: this run supersedes it
                shutil.rmtree(stale, ignore_errors=True)
        if keep > 0:
            for _, old in checkpoint_dirs(root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def tracker_name(requested: str) -> str | None:
    """The Accelerate tracker to use: ``requested`` if its package is installed, else None (with a warning)."""
    if requested in ("", "none"):
        return None
    from accelerate.utils import is_tensorboard_available

    available = {"tensorboard": is_tensorboard_available}
    if requested not in available:
        raise ValueError(f"unknown tracker {requested!r}; known: none, {', '.join(sorted(available))}")
    if not available[requested]():
        log.warning("%s is not installed (pip install %s): metrics go to the run directory's JSON files only",
                    requested, requested)  # fmt: skip
        return None
    return requested


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict flattened to ``a.b.c -> scalar`` (lists as text), as TensorBoard hparams need."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
