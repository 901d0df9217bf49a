"""Configs of ``mvmlm dual-stream`` (torch-free: ``--help`` reads them without importing the model).

The command config composes the core's pieces: ``data`` (:class:`DualStreamData`, a :class:`~mvmlm.config.DataConfig`
with the network input size), ``optim`` and ``train``, plus the model (:class:`MammoMambaModelConfig`, with the
loss's label smoothing), the evaluated splits and the bootstrap resamples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mvmlm.config import DataConfig, OptimConfig, TrainConfig

__all__ = ["STREAMS", "MammoMambaModelConfig", "DualStreamData", "MammoMambaConfig"]

STREAMS = ("crop", "whole")


@dataclass
class MammoMambaModelConfig:
    backbone: str = "mambavision_hybrid"  # any registered image encoder
    # its arguments; the paper's (configs/dual_stream/dual_stream.yaml): {size: L, seqmoe: true, freeze_stages: 2}.
    # Empty by default: a dict merges key by key, so defaults of one backbone would stick to any other.
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    streams: list[str] = field(default_factory=lambda: list(STREAMS))  # ablations: [crop] or [whole]
    hidden: int = 512  # MLP hidden width
    dropout: float = 0.3
    num_classes: int = 2  # benign, malignant
    label_smoothing: float = 0.1  # of the cross-entropy loss


@dataclass
class DualStreamData(DataConfig):
    """``table``: the ``table.parquet`` of a ``mvmlm preprocess ... roi.enabled=true`` cache; the lesion crops are
    read from the ``roi_table.parquet`` beside it. Augmentation (``augment``, no flip by default) applies to both
    streams."""

    image_size: list[int] = field(default_factory=lambda: [224, 224])  # network input (H, W) of both streams


@dataclass
class MammoMambaConfig:
    data: DualStreamData = field(default_factory=DualStreamData)
    model: MammoMambaModelConfig = field(default_factory=MammoMambaModelConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=0.05, schedule="cosine", warmup_steps=150)
    )  # the paper: AdamW + cosine annealing; 150 steps ~ one epoch of CBIS-DDSM at batch 8
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=50, select="val/auc"))
    eval_splits: list[str] = field(default_factory=lambda: ["test"])  # splits of the table evaluated at the end
    bootstrap: int = 1000  # patient-level bootstrap resamples for the CIs (0 = none)
    out: str = "runs/mammo_mamba"
