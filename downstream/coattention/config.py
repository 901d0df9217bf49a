"""The typed config of ``mvmlm coattention`` (YAML files in ``configs/coattention/`` + dotted overrides).

Torch-free: ``mvmlm coattention --help`` reads only this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from downstream.common.config import EncoderConfig
from mvmlm.config import AugmentConfig, DataConfig, OptimConfig, TrainConfig
from mvmlm.models.configs import DEFAULT_TEXT_MODEL, DEFAULT_TEXT_REVISION

__all__ = ["CoAttentionModelConfig", "TextConfig", "CoAttentionData", "CoAttentionConfig"]


@dataclass
class CoAttentionModelConfig:
    width: int = 256
    heads: int = 8
    depth: int = 2  # stacked co-attention blocks
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    fine_grid: list[int] = field(default_factory=lambda: [24, 16])  # tokens of the full-resolution feature map
    coarse_grid: list[int] = field(default_factory=lambda: [8, 6])  # tokens of the downsampled image's map
    coarse_factor: int = 2
    text_depth: int = 2  # layers of the text token transformer
    views: int = 2  # CC, MLO


@dataclass
class TextConfig:
    """The frozen text encoder of the metadata text."""

    model: str = DEFAULT_TEXT_MODEL  # Hugging Face encoder (hub name or local directory)
    revision: str | None = DEFAULT_TEXT_REVISION
    max_length: int = 128
    cache: str = "runs/text_cache"  # hidden states of each metadata text, stored once


@dataclass
class CoAttentionData(DataConfig):
    """The breasts of the table's splits; training images are augmented only with ``augment.enabled``."""

    batch_size: int = 16
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(enabled=False))


@dataclass
class CoAttentionConfig:
    data: CoAttentionData = field(default_factory=CoAttentionData)
    task: str = "malignancy"  # malignancy | calcification (any binary task of downstream.common.tasks)
    metadata_fields: list[str] = field(default_factory=lambda: ["age", "density"])
    text_seed: int = 0  # template phrasing
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # mvclip checkpoint or timm encoder, with init
    text: TextConfig = field(default_factory=TextConfig)
    model: CoAttentionModelConfig = field(default_factory=CoAttentionModelConfig)
    fusions: list[str] = field(default_factory=lambda: ["coattention", "image_only", "text_only", "late_concat"])
    optim: OptimConfig = field(default_factory=OptimConfig)
    # per fusion; the weights with the best val/auc are kept; resume: latest reuses finished fusions (same
    # settings) and continues an interrupted one from its checkpoint
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20))
    bootstrap: int = 1000
    plots: bool = True
    out: str = "runs/coattention"
