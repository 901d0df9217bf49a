"""The four-view, multi-task classifier of the hybrid CNN-VSSM paper (Sections 2.1-2.2).

Four views (L-CC, L-MLO, R-CC, R-MLO; right views already flipped by preprocessing) go through one backbone shared
by all views, or through two view-specific backbones (one for CC, one for MLO). Each view's feature map is
average-pooled to ``v_i``; a gated attention fusion weighs the views, ``alpha = softmax(MLP(concat v))`` with a
two-layer ReLU MLP, and concatenates ``alpha_i * v_i``; after dropout, four linear heads predict label-L, label-R
(normal + benign vs malignant) and BI-RADS-L, BI-RADS-R (a single-task model has only its task's two heads)::

    model = MultiViewClassifier(ModelConfig(backbone="resnet18"), {"label": 2, "birads": 3})
    out = model(images, mask)     # images (B, 4, 1, H, W), mask (B, 4) bool: the views that are present
    out["logits"]["birads"]       # (B, 2, 3): sides L, R
    out["attention"]              # (B, 4): the view weights alpha

Missing views are zero images, as in the paper; with ``mask_missing`` (default) they are also removed from the
softmax, so they get weight 0 and the present views' weights sum to 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from downstream.multiview.config import ModelConfig
from mvmlm.data.exams import EXAM_SLOTS
from mvmlm.models.image_encoders import create_image_encoder
from mvmlm.models.mvclip import load_image_tower
from mvmlm.registry import Registry

__all__ = [
    "VIEWS",
    "SIDES",
    "POOLS",
    "ModelConfig",
    "PooledEncoder",
    "backbone_name",
    "GatedAttentionFusion",
    "MultiViewClassifier",
]

#: input view order (as ``mvmlm.data.exams.ExamDataset`` stacks them)
VIEWS: tuple[str, ...] = EXAM_SLOTS
SIDES: tuple[str, ...] = ("L", "R")


#: global pooling of a feature map (N, C, h, w) -> (N, C)
POOLS: Registry[Callable[[Tensor], Tensor]] = Registry("pooling")
POOLS.add("avg", lambda features: features.mean(dim=(2, 3)))
POOLS.add("max", lambda features: features.amax(dim=(2, 3)))


class PooledEncoder(nn.Module):
    """A registered image encoder followed by global pooling: ``(N, C, H, W)`` -> ``(N, out_dim)``."""

    def __init__(self, name: str, pool: str = "avg", **kwargs: Any) -> None:
        super().__init__()
        self.pool = POOLS.get(pool)
        self.encoder = create_image_encoder(name, **kwargs)
        self.out_dim = self.encoder.out_channels

    def forward(self, images: Tensor) -> Tensor:
        return self.pool(self.encoder(images))


class _TowerEncoder(nn.Module):
    """The image tower of an MV-MLM checkpoint (encoder + token transformer): its embedding is ``v_i``."""

    def __init__(self, directory: str, weights: bool = True) -> None:
        super().__init__()
        self.tower = load_image_tower(directory, weights=weights)
        self.out_dim = self.tower.tokens.proj.out_features

    def forward(self, images: Tensor) -> Tensor:
        return self.tower(images)


def backbone_name(cfg: ModelConfig) -> str:
    """What the views go through, for titles and cards: the registered encoder, or the MV-MLM tower."""
    return "MV-MLM image tower" if cfg.checkpoint else cfg.backbone


def build_view_encoder(cfg: ModelConfig, load_pretrained: bool = True) -> nn.Module:
    """One backbone (with ``out_dim``): the MV-MLM tower of ``cfg.checkpoint`` or the registered encoder.

    ``load_pretrained=False`` builds the architecture only (the tower's config, no ``pretrained*`` encoder options):
    for a classifier whose saved weights are loaded next.
    """
    if cfg.checkpoint:
        return _TowerEncoder(cfg.checkpoint, weights=load_pretrained)
    kwargs = cfg.backbone_kwargs
    if not load_pretrained:
        kwargs = {key: value for key, value in kwargs.items() if not key.startswith("pretrained")}
    return PooledEncoder(cfg.backbone, cfg.pool, **kwargs)


class GatedAttentionFusion(nn.Module):
    """``alpha = softmax(MLP(concat v))``, ``v_fused = concat(alpha_i * v_i)`` (paper eq. 8-10).

    Args:
        dim: feature size ``D`` of each view.
        views: number of views ``V``.
        hidden: hidden width of the two-layer MLP.
        mask_missing: set the logits of missing views to -inf, so their weight is 0.
    """

    def __init__(self, dim: int, views: int = 4, hidden: int = 256, mask_missing: bool = True) -> None:
        super().__init__()
        self.mask_missing = mask_missing
        self.gate = nn.Sequential(nn.Linear(views * dim, hidden), nn.ReLU(), nn.Linear(hidden, views))

    def forward(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``features`` (B, V, D), ``mask`` (B, V) bool -> fused (B, V * D) and weights alpha (B, V)."""
        logits = self.gate(features.flatten(1)).float()
        if self.mask_missing:
            empty = ~mask.any(dim=1)
            if empty.any():
                raise ValueError(f"exam(s) at batch rows {empty.nonzero().flatten().tolist()} have no present view")
            logits = logits.masked_fill(~mask, float("-inf"))
        alpha = logits.softmax(dim=-1)
        fused = (alpha.unsqueeze(-1).to(features.dtype) * features).flatten(1)
        return fused, alpha


class MultiViewClassifier(nn.Module):
    """Backbone(s) -> pooled per-view features -> gated attention fusion -> dropout -> per-side heads.

    Args:
        cfg: the model config.
        num_classes: classes per task, e.g. ``{"label": 2, "birads": 5}``; a single-task model has one entry.
        load_pretrained: load the backbone's pretrained weights (MV-MLM tower, ``pretrained*`` options); False when
            the classifier's own saved weights are loaded next.
    """

    def __init__(self, cfg: ModelConfig, num_classes: dict[str, int], load_pretrained: bool = True) -> None:
        super().__init__()
        if not num_classes:
            raise ValueError("MultiViewClassifier needs at least one task")
        self.cfg = cfg
        self.num_classes = dict(num_classes)
        # view group -> indices into VIEWS; view-specific: one backbone per projection
        groups = (
            {"all": list(range(len(VIEWS)))}
            if cfg.shared
            else {view: [i for i, slot in enumerate(VIEWS) if slot.endswith(f"_{view}")] for view in ("CC", "MLO")}
        )
        self.groups = groups
        self.backbones = nn.ModuleDict({name: build_view_encoder(cfg, load_pretrained) for name in groups})
        dim = next(iter(self.backbones.values())).out_dim
        self.feature_dim = dim
        self.fusion = GatedAttentionFusion(dim, len(VIEWS), cfg.fusion_hidden, cfg.mask_missing)
        self.dropout = nn.Dropout(cfg.dropout)
        self.heads = nn.ModuleDict(
            {f"{task}_{side}": nn.Linear(len(VIEWS) * dim, k) for task, k in num_classes.items() for side in SIDES}
        )

    def view_features(self, images: Tensor) -> Tensor:
        """``images`` (B, 4, C, H, W) -> pooled features (B, 4, D), each view through its group's backbone."""
        if images.ndim != 5 or images.shape[1] != len(VIEWS):
            raise ValueError(f"expected images (B, {len(VIEWS)}, C, H, W) in order {VIEWS}, got {tuple(images.shape)}")
        batch = images.shape[0]
        parts: dict[int, Tensor] = {}
        for name, index in self.groups.items():
            out = self.backbones[name](images[:, index].flatten(0, 1)).view(batch, len(index), -1)
            parts.update({i: out[:, j] for j, i in enumerate(index)})
        return torch.stack([parts[i] for i in range(len(VIEWS))], dim=1)

    def forward(self, images: Tensor, mask: Tensor) -> dict[str, Any]:
        """Logits per task ``(B, 2, K)`` (sides L, R) and the attention weights ``(B, 4)``."""
        fused, alpha = self.fusion(self.view_features(images), mask.bool())
        hidden = self.dropout(fused)
        logits = {
            task: torch.stack([self.heads[f"{task}_{side}"](hidden) for side in SIDES], dim=1)
            for task in self.num_classes
        }
        return {"logits": logits, "attention": alpha}
