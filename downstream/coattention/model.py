"""Co-attention fusion of mammogram tokens with clinical-metadata text tokens, and the baselines it is compared to.

- Image tokens (hierarchical): the image encoder runs on the full-resolution image (fine scale, the detail) and on
  the image downsampled by ``coarse_factor`` (coarse scale, wider context per cell); each feature map is pooled to
  its token grid, mapped to the model width and given learned position, scale and view embeddings. The views of
  a breast (CC, MLO) are concatenated; an absent view's tokens are masked.
- Text tokens: frozen text-encoder hidden states (see :mod:`mvmlm.models.text_encoders`) through a trainable
  :class:`~mvmlm.models.token_transformer.TokenTransformer`, padded positions masked.
- Co-attention blocks (ViLBERT-style): image tokens attend to text tokens and text tokens to image tokens (both
  from the block's input), then a feed-forward layer per stream; ``depth`` blocks are stacked.
- Masked mean pooling per stream; the pooled vectors are concatenated and classified.

Fusion modes (:data:`FUSIONS`): ``coattention``, ``late_concat`` (no cross-attention), ``image_only``, ``text_only``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from downstream.coattention.config import CoAttentionModelConfig
from mvmlm.models.image_encoders import ImageEncoder
from mvmlm.models.token_transformer import TokenTransformer

__all__ = [
    "Fusion",
    "FUSIONS",
    "HierarchicalImageTokens",
    "CoAttentionBlock",
    "masked_mean",
    "FusionClassifier",
]


@dataclass(frozen=True)
class Fusion:
    """Which streams a model sees and whether they exchange information by cross-attention."""

    image: bool
    text: bool
    cross: bool


FUSIONS: dict[str, Fusion] = {
    "coattention": Fusion(image=True, text=True, cross=True),
    "late_concat": Fusion(image=True, text=True, cross=False),
    "image_only": Fusion(image=True, text=False, cross=False),
    "text_only": Fusion(image=False, text=True, cross=False),
}


class HierarchicalImageTokens(nn.Module):
    """Images ``(B, V, C, H, W)`` + view mask ``(B, V)`` -> tokens ``(B, V * (Nf + Nc), width)`` + mask."""

    def __init__(self, encoder: ImageEncoder, cfg: CoAttentionModelConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.grids = (tuple(cfg.fine_grid), tuple(cfg.coarse_grid))
        self.coarse_factor = cfg.coarse_factor
        self.proj = nn.Linear(encoder.out_channels, cfg.width)
        self.position = nn.ParameterList(nn.Parameter(torch.zeros(math.prod(g), cfg.width)) for g in self.grids)
        self.scale = nn.Parameter(torch.zeros(len(self.grids), cfg.width))
        self.view = nn.Parameter(torch.zeros(cfg.views, cfg.width))
        for p in (*self.position, self.scale, self.view):
            nn.init.trunc_normal_(p, std=0.02)

    @property
    def tokens_per_view(self) -> int:
        return sum(math.prod(g) for g in self.grids)

    def _scale_tokens(self, images: Tensor, level: int) -> Tensor:
        if level:
            images = F.interpolate(images, scale_factor=1 / self.coarse_factor, mode="bilinear", antialias=True)
        features = F.adaptive_avg_pool2d(self.encoder(images), self.grids[level])  # (N, C, gh, gw)
        return self.proj(features.flatten(2).transpose(1, 2)) + self.position[level] + self.scale[level]

    def forward(self, images: Tensor, view_mask: Tensor) -> tuple[Tensor, Tensor]:
        b, v = images.shape[:2]
        if v != self.view.shape[0]:
            raise ValueError(f"expected {self.view.shape[0]} views per item, got images {tuple(images.shape)}")
        flat = images.flatten(0, 1)
        tokens = torch.cat([self._scale_tokens(flat, level) for level in range(len(self.grids))], dim=1)
        tokens = tokens.unflatten(0, (b, v)) + self.view[None, :, None, :]
        mask = view_mask.bool()[:, :, None].expand(b, v, tokens.shape[2])
        return tokens.flatten(1, 2), mask.flatten(1)


class CoAttentionBlock(nn.Module):
    """Pre-norm cross-attention both ways (from the block's input streams), then a feed-forward layer per stream."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_img, self.norm_txt = nn.LayerNorm(width), nn.LayerNorm(width)
        self.img_to_txt = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.txt_to_img = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        hidden = int(width * mlp_ratio)
        self.mlp_img, self.mlp_txt = (
            nn.Sequential(
                nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width)
            )
            for _ in range(2)
        )

    def forward(self, img: Tensor, img_mask: Tensor, txt: Tensor, txt_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Streams ``(B, N, width)`` with masks ``(B, N)`` (True = real token) -> updated streams."""
        qi, qt = self.norm_img(img), self.norm_txt(txt)
        img = img + self.img_to_txt(qi, qt, qt, key_padding_mask=~txt_mask, need_weights=False)[0]
        txt = txt + self.txt_to_img(qt, qi, qi, key_padding_mask=~img_mask, need_weights=False)[0]
        return img + self.mlp_img(img), txt + self.mlp_txt(txt)


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean of the real tokens ``(B, N, D)`` -> ``(B, D)``; every row must have one."""
    if not bool(mask.any(dim=1).all()):
        raise ValueError("an item has no real token (all views / text positions masked)")
    weights = mask.to(tokens.dtype)[..., None]
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1)


class FusionClassifier(nn.Module):
    """Image and/or text tokens -> (co-attention) -> pooled, concatenated -> class logits.

    Args:
        fusion: a :data:`FUSIONS` name.
        encoder: the image encoder (unused by ``text_only``, which then has no image parameters).
        text_dim: hidden size of the frozen text encoder (unused by ``image_only``).
    """

    def __init__(
        self, fusion: str, cfg: CoAttentionModelConfig, num_classes: int, encoder: ImageEncoder | None, text_dim: int
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; known: {', '.join(FUSIONS)}")
        self.fusion = FUSIONS[fusion]
        if self.fusion.image and encoder is None:
            raise ValueError(f"fusion {fusion!r} needs an image encoder")
        self.image = HierarchicalImageTokens(encoder, cfg) if self.fusion.image else None
        self.text = (
            TokenTransformer(
                text_dim,
                cfg.width,
                width=cfg.width,
                depth=cfg.text_depth,
                heads=cfg.heads,
                mlp_ratio=cfg.mlp_ratio,
                dropout=cfg.dropout,
            )
            if self.fusion.text
            else None
        )
        depth = cfg.depth if self.fusion.cross else 0
        self.blocks = nn.ModuleList(
            CoAttentionBlock(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(depth)
        )
        streams = int(self.fusion.image) + int(self.fusion.text)
        self.head = nn.Sequential(
            nn.LayerNorm(streams * cfg.width), nn.Dropout(cfg.dropout), nn.Linear(streams * cfg.width, num_classes)
        )

    def forward(
        self,
        images: Tensor | None = None,
        view_mask: Tensor | None = None,
        text_hidden: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> Tensor:
        """Logits ``(B, num_classes)`` from images ``(B, V, C, H, W)`` + ``view_mask (B, V)`` and/or frozen text
        hidden states ``(B, L, H)`` + ``text_mask (B, L)``; a stream the fusion does not use is ignored."""
        pooled = []
        img = txt = None
        if self.image is not None:
            img, img_mask = self.image(images, view_mask)
        if self.text is not None:
            txt = self.text(text_hidden, mask=text_mask, return_tokens=True)[1]
            txt_mask = text_mask.bool()
        for block in self.blocks:
            img, txt = block(img, img_mask, txt, txt_mask)
        if img is not None:
            pooled.append(masked_mean(img, img_mask))
        if txt is not None:
            pooled.append(masked_mean(txt, txt_mask))
        return self.head(torch.cat(pooled, dim=1))
