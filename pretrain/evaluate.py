"""Validation of an MV-CLIP during pretraining: loss and image<->report retrieval recall@k on a breast set.

A breast's image embedding is the normalised sum of its present views' embeddings. Reports that are identical
(same text) count as correct for each other in both directions, so duplicated synthetic reports do not turn
right answers into misses; ``chance_R@k`` is what a random ranking scores under the same rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mvmlm.losses import MultiViewClipLoss
from mvmlm.metrics import retrieval_recall
from mvmlm.models.text_encoders import FrozenTextEncoder
from pretrain.step import forward_features

__all__ = ["embed_breasts", "chance_recall", "retrieval_metrics", "chunked_loss", "evaluate", "Evaluator"]


@torch.no_grad()
def embed_breasts(
    accelerator, model: nn.Module, loader: DataLoader, text_encoder: FrozenTextEncoder | None = None
) -> dict[str, Tensor]:
    """Embeddings of every breast of a prepared evaluation ``loader``, gathered from all processes (on CPU).

    Returns ``cc, mlo, text (N, D)``, ``cc_present, mlo_present (N,)`` bool, ``text_ids (N,)`` and ``scale``.
    """
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {}
    scale = torch.tensor(1.0)
    for batch in loader:
        features = forward_features(model, batch, text_encoder)
        local = {
            "cc": features.cc.float(),
            "mlo": features.mlo.float(),
            "text": features.text.float(),
            "cc_present": batch["cc_present"].long(),
            "mlo_present": batch["mlo_present"].long(),
            "text_ids": batch["text_ids"].to(features.cc.device),
        }
        for key, value in accelerator.gather_for_metrics(local).items():
            parts.setdefault(key, []).append(value.cpu())
        scale = features.scale.detach().float().cpu()
    model.train(was_training)
    if not parts:
        raise ValueError("the evaluation loader yielded no batch")
    out = {key: torch.cat(values) for key, values in parts.items()}
    out["cc_present"], out["mlo_present"] = out["cc_present"].bool(), out["mlo_present"].bool()
    out["scale"] = scale
    return out


def chance_recall(positives: Tensor, k: int) -> float:
    """Mean over queries of P(a uniformly random ranking puts a positive in the top ``k``)."""
    n = positives.shape[1]
    counts = positives.sum(dim=1).tolist()
    return sum(1 - math.comb(n - p, k) / math.comb(n, k) if k <= n else float(p > 0) for p in counts) / len(counts)


def retrieval_metrics(emb: dict[str, Tensor], ks: list[int]) -> dict[str, float]:
    """``i2t_R@k``, ``t2i_R@k`` and ``chance_R@k`` with identical reports as joint positives."""
    views = emb["cc"] * emb["cc_present"][:, None] + emb["mlo"] * emb["mlo_present"][:, None]
    image = F.normalize(views, dim=1)
    same = emb["text_ids"][:, None] == emb["text_ids"][None, :]
    out = {f"i2t_{k}": v for k, v in retrieval_recall(image, emb["text"], ks, positives=same).items()}
    out |= {f"t2i_{k}": v for k, v in retrieval_recall(emb["text"], image, ks, positives=same).items()}
    out |= {f"chance_R@{k}": chance_recall(same, k) for k in ks}
    return out


def chunked_loss(emb: dict[str, Tensor], loss_fn: MultiViewClipLoss, chunk: int) -> float:
    """The MV-CLIP loss over consecutive chunks of ``chunk`` breasts (the training batch size, so the value is
    comparable to the training loss), averaged with the chunk sizes as weights; ``loss_fn`` is single-process."""
    total, count = 0.0, 0
    for start in range(0, len(emb["text"]), chunk):
        part = slice(start, start + chunk)
        out = loss_fn(
            emb["cc"][part],
            emb["mlo"][part],
            emb["text"][part],
            emb["scale"],
            emb["cc_present"][part],
            emb["mlo_present"][part],
            emb["text_ids"][part],
        )
        size = len(emb["text"][part])
        total, count = total + float(out["loss"]) * size, count + size
    return total / count


def evaluate(
    accelerator,
    model: nn.Module,
    loader: DataLoader,
    loss_fn: MultiViewClipLoss,
    chunk: int,
    ks: list[int],
    text_encoder: FrozenTextEncoder | None = None,
) -> dict[str, float]:
    """``loss`` and retrieval recall of the breasts of ``loader`` (every process gets the same numbers)."""
    emb = embed_breasts(accelerator, model, loader, text_encoder)
    return {"loss": chunked_loss(emb, loss_fn, chunk), **retrieval_metrics(emb, ks), "breasts": len(emb["text"])}


@dataclass
class Evaluator:
    """Loss and retrieval of the current weights on prepared evaluation loaders (``val`` and ``train``, a subset).

    Called with a model it is the engine's periodic validation (``val/loss``, ``val/i2t_R@1``, ...).

    Attributes:
        accelerator: the engine's (for the gathers and mixed precision).
        loaders: split name -> loader prepared with ``engine.prepare`` (each process embeds its share).
        loss_fn: a single-process MV-CLIP loss.
        chunk: breasts per loss chunk: the global training batch, so the loss compares with the training loss.
        ks: the k of recall@k.
        text_encoder: the frozen encoder for batches without cached text features.
    """

    accelerator: Any
    loaders: dict[str, DataLoader]
    loss_fn: MultiViewClipLoss
    chunk: int
    ks: list[int]
    text_encoder: FrozenTextEncoder | None = None

    def splits(self, model: nn.Module, names: tuple[str, ...] = ("val", "train")) -> dict[str, dict[str, float]]:
        """``{split: {"loss", "i2t_R@1", ...}}`` for the ``names`` this evaluator has loaders for."""
        acc, found = self.accelerator, [name for name in names if name in self.loaders]
        with acc.autocast():
            return {
                n: evaluate(acc, model, self.loaders[n], self.loss_fn, self.chunk, self.ks, self.text_encoder)
                for n in found
            }

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return {f"val/{key}": value for key, value in self.splits(model, ("val",)).get("val", {}).items()}
