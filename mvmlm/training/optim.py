"""AdamW parameter groups and the learning-rate schedules every trainer uses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from mvmlm.config import ConfigError, OptimConfig

__all__ = ["param_groups", "WarmupCosine", "warmup_cosine_schedule", "build_optimizer", "build_scheduler", "SCHEDULES"]

SCHEDULES = ("cosine", "plateau", "constant")


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


#: device types with torch's fused AdamW kernel (one pass over all parameters; same update as the loop)
FUSED_DEVICES = ("cpu", "cuda")


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` with the groups of :func:`param_groups`.

    Fused (``fused=True``) when every parameter is a float tensor on a CPU or CUDA device: on a CPU, torch's
    default is the per-parameter loop, 3-4x slower on one thread (``benchmarks/pretrain_step.py``, ratio (c)).
    The parameters may move between these devices afterwards (``accelerator.prepare``).
    """
    groups = param_groups(model, cfg.weight_decay)
    params = [p for group in groups for p in group["params"]]
    fused = all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, mode: str = "max"
) -> LambdaLR | ReduceLROnPlateau:
    """The schedule ``cfg.schedule`` names: ``cosine`` and ``constant`` step once per optimizer step, ``plateau``
    once per evaluation with the selected metric (``mode`` max or min)."""
    if cfg.schedule == "cosine":
        return warmup_cosine_schedule(
            optimizer, min(cfg.warmup_steps, max(total_steps - 1, 0)), total_steps, cfg.min_lr_ratio
        )
    if cfg.schedule == "constant":
        return LambdaLR(optimizer, WarmupCosine(cfg.warmup_steps, total_steps, 1.0))
    if cfg.schedule == "plateau":
        return ReduceLROnPlateau(optimizer, mode=mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    raise ConfigError(f"key 'optim.schedule': {cfg.schedule!r}; known: {', '.join(SCHEDULES)}")
