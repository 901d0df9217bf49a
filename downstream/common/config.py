"""The config pieces the downstream commands share, importable without torch (``--help`` reads them).

- :class:`EncoderConfig` names an image encoder: an MV-MLM checkpoint's image tower or a registered (timm) encoder,
  with its pretrained weights or a seeded random init (built by :func:`downstream.common.embed.build_backbone`);
- :class:`EmbedConfig`: how frozen embeddings are computed and cached;
- ``DataConfig`` is the core's :class:`mvmlm.config.DataConfig` (the table and its split names; its batch and
  augmentation keys serve the commands that train).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mvmlm.config import DataConfig

__all__ = ["DataConfig", "EncoderConfig", "EmbedConfig"]


@dataclass
class EncoderConfig:
    """An image encoder, e.g. ``{source: mvclip, checkpoint: runs/pretrain/model}`` or ``{source: timm, name:
    resnet34, init: random}``."""

    source: str = "mvclip"  # mvclip (an MV-MLM checkpoint directory) | timm (a registered image encoder)
    checkpoint: str = ""  # mvclip: directory with model.safetensors + config.yaml
    name: str = "resnet34"  # timm: image encoder name (resnet18/34/50, efficientnet_b5, timm:<model>, ...)
    kwargs: dict[str, Any] = field(default_factory=lambda: {"in_chans": 1})  # timm: encoder arguments
    init: str = "pretrained"  # pretrained (checkpoint / ImageNet weights) | random (same architecture)
    seed: int = 0  # random init seed
    features: str = "embedding"  # mvclip: embedding (the tower's projected output) | encoder (its CNN, pooled)


@dataclass
class EmbedConfig:
    """Frozen embeddings of every cached image, pooled per breast."""

    batch_size: int = 32
    num_workers: int = 0
    pool: str = "mean"  # views -> breast: mean | max over the present views
    cache: str = "runs/embeddings"  # cache root; "" = no cache
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:1 ...
