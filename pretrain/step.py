"""One MV-CLIP optimisation step's forward and backward, with contrastive-correct gradient accumulation.

With ``k`` micro-batches per step (open_clip's ``--accum-freq``): a no-grad forward over all micro-batches caches
their features; then each micro-batch is forwarded again with gradients, its fresh features are spliced into the
cached ones and the loss over the *whole* accumulated batch is back-propagated. Summed over the micro-batches
this is exactly the gradient of one batch ``k`` times as large (every loss sees all of its negatives), at the
cost of one extra forward per micro-batch (of the trained towers: a live frozen text encoder runs once per
micro-batch, its output serving both passes). The logit scale enters every pass, so it keeps its gradient in one
pass only; otherwise its gradient would be counted ``k`` times. A non-finite loss raises before any backward.

Every backward runs under ``accelerator.no_sync`` and the gradients are averaged over processes once afterwards
(:func:`mvmlm.training.average_gradients`). Letting DDP reduce inside the backward, as usual, gave wrong gradients
in the setting of ``tests/pretrain/test_distributed.py`` (2 CPU processes, gloo, torch 2.15; the loss itself was
right), presumably because its bucket all-reduces run while the loss's differentiable all-gathers are being
back-propagated (compare pytorch#120386). One all-reduce after the backward is exact, at the cost of not
overlapping that communication with the backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mvmlm.losses import MultiViewClipLoss
from mvmlm.models.text_encoders import FrozenTextEncoder
from mvmlm.training import Engine, average_gradients, check_finite

__all__ = ["Features", "with_text_features", "forward_features", "contrastive_backward", "ContrastiveStep"]


@dataclass
class Features:
    """L2-normalised embeddings of a (micro-)batch and the exponentiated logit scale."""

    cc: Tensor
    mlo: Tensor
    text: Tensor
    scale: Tensor

    @staticmethod
    def cat(parts: Sequence[Features], scale: Tensor) -> Features:
        """The micro-batches' features concatenated in order, with ``scale`` as the logit scale."""
        return Features(*(torch.cat([getattr(p, name) for p in parts]) for name in ("cc", "mlo", "text")), scale)


def with_text_features(batch: dict, text_encoder: FrozenTextEncoder | None = None) -> dict:
    """``batch`` with ``text_hidden``/``text_mask``: its own (the cache) or, without them, those of the frozen
    ``text_encoder`` run on ``batch["texts"]`` on the images' device (a shallow copy; ``batch`` is not changed)."""
    if "text_hidden" in batch:
        return batch
    if text_encoder is None:
        raise ValueError("the batch has no cached text features and no text encoder was given")
    hidden, mask = text_encoder.encode(batch["texts"], device=batch["cc"].device)
    return {**batch, "text_hidden": hidden, "text_mask": mask}


def forward_features(model: nn.Module, batch: dict, text_encoder: FrozenTextEncoder | None = None) -> Features:
    """Both views and the report of every breast through ``model`` (an MVCLIP, possibly DDP-wrapped).

    Text as :func:`with_text_features` gives it.
    """
    batch = with_text_features(batch, text_encoder)
    images = torch.cat([batch["cc"], batch["mlo"]])
    image_features, text_features, scale = model(images, text_hidden=batch["text_hidden"], text_mask=batch["text_mask"])
    cc, mlo = image_features.chunk(2)
    return Features(cc, mlo, text_features, scale)


def _loss(loss_fn: MultiViewClipLoss, features: Features, batches: Sequence[dict]) -> dict[str, Tensor]:
    cc_present = torch.cat([b["cc_present"] for b in batches]).to(features.cc.device)
    mlo_present = torch.cat([b["mlo_present"] for b in batches]).to(features.cc.device)
    text_ids = torch.cat([b["text_ids"] for b in batches]).to(features.cc.device)
    return loss_fn(features.cc, features.mlo, features.text, features.scale, cc_present, mlo_present, text_ids)


def contrastive_backward(
    accelerator,
    model: nn.Module,
    loss_fn: MultiViewClipLoss,
    micro_batches: Sequence[dict],
    step: int,
    text_encoder: FrozenTextEncoder | None = None,
) -> dict[str, float]:
    """Accumulate into ``.grad`` the gradient of the MV-CLIP loss over all ``micro_batches`` of this process
    (and, through the loss's gathers, of every process). Does not step or zero the optimizer.

    Returns:
        ``loss``, ``image_text``, ``image_image`` of the global batch (mean over processes of the local shares).

    Raises:
        NonFiniteLossError: on every process, before any backward, naming ``step`` and the breast ids.
    """
    ids = [i for b in micro_batches for i in b["ids"]]
    with accelerator.no_sync(model):
        if len(micro_batches) == 1:
            losses = _loss(loss_fn, forward_features(model, micro_batches[0], text_encoder), micro_batches)
            check_finite(accelerator, losses["loss"], step, ids)
            accelerator.backward(losses["loss"])
        else:
            micro_batches = [with_text_features(b, text_encoder) for b in micro_batches]  # once, for both passes
            with torch.no_grad():
                cached = [forward_features(model, b, text_encoder) for b in micro_batches]
                losses = _loss(loss_fn, Features.cat(cached, cached[0].scale), micro_batches)
            check_finite(accelerator, losses["loss"], step, ids)
            last = len(micro_batches) - 1
            for j, batch in enumerate(micro_batches):
                fresh = forward_features(model, batch, text_encoder)
                scale = fresh.scale if j == last else fresh.scale.detach()
                spliced = Features.cat([*cached[:j], fresh, *cached[j + 1 :]], scale)
                accelerator.backward(_loss(loss_fn, spliced, micro_batches)["loss"])
    average_gradients(accelerator, model.parameters())
    values = torch.stack([losses[k].detach().float() for k in ("loss", "image_text", "image_image")])
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, "mean")
    loss, image_text, image_image = values.tolist()
    return {"loss": loss, "image_text": image_text, "image_image": image_image}


@dataclass
class ContrastiveStep:
    """:func:`contrastive_backward` as the engine's ``backward=``: ``step(engine, model, micro_batches, step_number)``
    with the prepared (e.g. DDP-wrapped) model.

    Attributes:
        loss_fn: the distributed MV-CLIP loss (rank and world size of the engine's processes).
        text_encoder: the frozen encoder for batches without cached text features.
    """

    loss_fn: MultiViewClipLoss
    text_encoder: FrozenTextEncoder | None = None

    def __call__(self, engine: Engine, model: nn.Module, micro_batches: list[dict], step: int) -> dict[str, float]:
        return contrastive_backward(engine.accelerator, model, self.loss_fn, micro_batches, step, self.text_encoder)
