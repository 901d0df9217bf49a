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


def _under(name: str, prefix: str) -> bool:
    """Whether parameter ``name`` is ``prefix`` or lies in the module ``prefix``."""
    return name == prefix or name.startswith(prefix + ".")


def _scale_of(name: str, lr_scales: dict[str, float]) -> float:
    """The multiplier of the longest prefix of ``lr_scales`` that ``name`` lies under (1 when none)."""
    matches = [prefix for prefix in lr_scales if _under(name, prefix)]
    return float(lr_scales[max(matches, key=len)]) if matches else 1.0


def param_groups(
    model: nn.Module, weight_decay: float, lr_scales: dict[str, float] | None = None, lr: float = 1.0
) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices and kernels; none on norms, biases, scalars (e.g. the logit scale)
    and any parameter marked ``param._no_weight_decay = True``. Frozen parameters are left out.

    Args:
        lr_scales: LR multiplier per parameter-name prefix (``{"backbones": 0.1}``); parameters scaled by 0 are
            frozen (``requires_grad`` turned off). Without it, two groups (decay, no decay) with the optimizer's lr.
        lr: the base learning rate the scales multiply (used only with ``lr_scales``).

    Raises:
        ConfigError: a prefix names no parameter, or a scale is negative.
    """
    lr_scales = dict(lr_scales or {})
    names = [name for name, _ in model.named_parameters()]
    for prefix, scale in lr_scales.items():
        if scale < 0:
            raise ConfigError(f"optim.lr_scales.{prefix}: a multiplier >= 0, got {scale}")
        if not any(_under(name, prefix) for name in names):
            tops = sorted({name.split(".")[0] for name in names})
            raise ConfigError(f"optim.lr_scales: {prefix!r} names no parameter; modules: {', '.join(tops)}")
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {(True, 1.0): [], (False, 1.0): []}
    for name, param in model.named_parameters():
        scale = _scale_of(name, lr_scales)
        if scale == 0:
            param.requires_grad_(False)
        if not param.requires_grad:
            continue
        skip = param.ndim <= 1 or getattr(param, "_no_weight_decay", False)
        groups.setdefault((not skip, scale), []).append(param)
    out = []
    for (decay, scale), params in groups.items():
        group: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decay else 0.0}
        if lr_scales:
            group["lr"] = lr * scale
        if params or scale == 1.0:
            out.append(group)
    return out


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
    groups = param_groups(model, cfg.weight_decay, cfg.lr_scales, cfg.lr)
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
