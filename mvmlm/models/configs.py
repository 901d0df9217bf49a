"""Model config dataclasses, importable without torch (command configs compose them; ``--help`` reads them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "DEFAULT_TEXT_REVISION",
    "ImageTowerConfig",
    "TextTowerConfig",
    "TokenConfig",
    "MVCLIPConfig",
]

DEFAULT_TEXT_MODEL = "emilyalsentzer/Bio_ClinicalBERT"
# The hub snapshot holding config.json, vocab.txt and pytorch_model.bin, as seen in public HF-cache paths
# (models--emilyalsentzer--Bio_ClinicalBERT/snapshots/<sha>); not re-checked against the hub (no network here).
DEFAULT_TEXT_REVISION = "d5892b39a4adaed74b92212a44081509db72f87b"


@dataclass
class ImageTowerConfig:
    """The image encoder and the image size its token map is built for.

    ``encoder_kwargs`` go to ``create_image_encoder`` (e.g. ``in_chans``, ``pretrained``, ``pretrained_path``);
    keys starting with ``pretrained`` only choose initial weights and are dropped when a checkpoint is loaded.
    """

    encoder: str = "resnet34"
    encoder_kwargs: dict[str, Any] = field(default_factory=lambda: {"in_chans": 1})
    image_size: list[int] = field(default_factory=lambda: [1520, 912])  # (H, W)


@dataclass
class TextTowerConfig:
    """The frozen text encoder, referenced by name and revision (its weights are not saved with MV-CLIP)."""

    model: str = DEFAULT_TEXT_MODEL
    revision: str | None = DEFAULT_TEXT_REVISION
    max_length: int = 256
    dtype: str = "float32"
    hidden_size: int | None = None  # read from the model's config when None; saved with the checkpoint


@dataclass
class TokenConfig:
    """Token transformer shape, shared by both towers (MV-MLM: 256 tokens, 4 layers, 8 heads)."""

    num_tokens: int = 256
    width: int = 512
    depth: int = 4
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0


@dataclass
class MVCLIPConfig:
    """MV-CLIP: the two towers, the shared embedding size and the learnable logit scale (``exp`` of a parameter)."""

    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    tokens: TokenConfig = field(default_factory=TokenConfig)
    embed_dim: int = 512
    logit_scale_init: float = 1 / 0.07
    logit_scale_max: float = 100.0  # the scale is clamped here in the loss and after every optimizer step
