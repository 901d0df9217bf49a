"""MV-CLIP loss: image-text CLIP for both views plus a CC-vs-MLO image-image CLIP term.

``L = 1/2 [CLIP(z_cc, z_t) + CLIP(z_mlo, z_t)] + lambda * CLIP(z_cc, z_mlo)``

Built on open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True, rank, world_size)`` for the gathering
of negatives across processes (the one setting that gives the same gradients as one process on the global
batch). On top of it:

* **missing views** - a breast whose view is absent is removed from that term exactly: its row is not a query
  and its column is not a candidate; the mean runs over the valid rows of the *global* batch, so the gradient
  equals that of one process on the global batch whatever the per-process counts are;
* **duplicate reports** - rows whose texts are identical (same ``text_ids``) are positives of each other:
  the target of a row is uniform over all columns of its group (multi-positive soft targets), instead of
  treating identical reports as negatives. (Where the features of equal texts are exactly equal, the soft
  targets give the same loss and gradients as one-hot targets; they differ - and matter - as soon as the
  features differ, e.g. under dropout in the text token transformer or with report variants mapped to one id.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import Tensor, nn

__all__ = ["PairClipLoss", "MultiViewClipLoss", "text_group_ids"]


def text_group_ids(texts: Sequence[str]) -> Tensor:
    """Stable int64 ids of report texts: equal texts (after whitespace normalisation) get equal ids."""
    ids = []
    for text in texts:
        digest = hashlib.blake2b(" ".join(text.split()).encode(), digest_size=8).digest()
        ids.append(int.from_bytes(digest, "little", signed=True))
    return torch.tensor(ids, dtype=torch.long)


def _gather(x: Tensor, world_size: int) -> Tensor:
    """All-gather a tensor without autograd (masks and ids), concatenated along dim 0 in rank order."""
    if world_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _soft_cross_entropy(logits: Tensor, targets: Tensor, candidates: Tensor) -> Tensor:
    """Per-row cross-entropy of ``logits`` against soft ``targets``, softmax restricted to ``candidates`` columns."""
    masked = logits.float().masked_fill(~candidates[None, :], torch.finfo(torch.float32).min)
    log_prob = F.log_softmax(masked, dim=1)
    return -(targets * torch.where(targets > 0, log_prob, torch.zeros_like(log_prob))).sum(dim=1)


class PairClipLoss(nn.Module):
    """Symmetric CLIP loss over pairs ``(a_i, b_i)`` with a validity mask and optional multi-positive groups.

    Args:
        rank, world_size: the process's place in the distributed job (``accelerator.process_index`` and
            ``accelerator.num_processes``).
    """

    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.rank, self.world_size = rank, world_size
        self.clip = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)

    def forward(
        self,
        a: Tensor,
        b: Tensor,
        logit_scale: Tensor,
        valid: Tensor | None = None,
        groups: Tensor | None = None,
    ) -> Tensor:
        """Loss for L2-normalised ``a``, ``b`` of shape (n, d) and an exponentiated ``logit_scale``.

        Args:
            valid: bool (n,), pairs that take part (default all).
            groups: int64 (n,), pairs with equal ids are positives of each other (default: only the diagonal).
        """
        n = a.shape[0]
        valid = torch.ones(n, dtype=torch.bool, device=a.device) if valid is None else valid.to(a.device).bool()
        logits_ab, logits_ba = self.clip.get_logits(a, b, logit_scale)
        all_valid = _gather(valid, self.world_size)
        if groups is None:
            own = self.clip.get_ground_truth(a.device, n)
            targets = F.one_hot(own, num_classes=all_valid.numel()).float()
        else:
            groups = groups.to(a.device)
            targets = (groups[:, None] == _gather(groups, self.world_size)[None, :]).float()
        targets = targets * all_valid[None, :]
        targets = targets / targets.sum(dim=1, keepdim=True).clamp_min(1)
        rows = _soft_cross_entropy(logits_ab, targets, all_valid) + _soft_cross_entropy(logits_ba, targets, all_valid)
        n_valid = all_valid.sum()
        if n_valid == 0:
            return (a.sum() + b.sum()) * 0.0
        return rows[valid].sum() / 2 * self.world_size / n_valid


class MultiViewClipLoss(nn.Module):
    """``1/2 [CLIP(cc, text) + CLIP(mlo, text)] + image_image_weight * CLIP(cc, mlo)``.

    Args:
        image_image_weight: lambda of the CC-vs-MLO term (0 disables it).
        multi_positive: treat identical report texts in the global batch as positives of each other.
    """

    def __init__(
        self, image_image_weight: float = 1.0, multi_positive: bool = True, rank: int = 0, world_size: int = 1
    ):
        super().__init__()
        self.image_image_weight = image_image_weight
        self.multi_positive = multi_positive
        self.pair = PairClipLoss(rank=rank, world_size=world_size)

    def forward(
        self,
        z_cc: Tensor,
        z_mlo: Tensor,
        z_text: Tensor,
        logit_scale: Tensor,
        cc_present: Tensor,
        mlo_present: Tensor,
        text_ids: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Return ``{"loss", "image_text", "image_image"}``; features must be L2-normalised."""
        groups = text_ids if self.multi_positive else None
        image_text = 0.5 * (
            self.pair(z_cc, z_text, logit_scale, cc_present, groups)
            + self.pair(z_mlo, z_text, logit_scale, mlo_present, groups)
        )
        if self.image_image_weight:
            image_image = self.pair(z_cc, z_mlo, logit_scale, cc_present.bool() & mlo_present.bool())
        else:
            image_image = torch.zeros((), device=z_cc.device)
        return {
            "loss": image_text + self.image_image_weight * image_image,
            "image_text": image_text,
            "image_image": image_image,
        }
