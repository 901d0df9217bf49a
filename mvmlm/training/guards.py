"""The non-finite loss guard and the one-all-reduce gradient average."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["NonFiniteLossError", "check_finite", "average_gradients"]


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
