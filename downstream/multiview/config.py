"""Configs of ``mvmlm multiview`` and ``mvmlm multiview-grid``; torch-free, so ``--help`` answers at once.

The command configs compose the core's shared pieces (:mod:`mvmlm.config`) with the defaults of the hybrid CNN-VSSM
paper (arXiv 2507.16955, Sections 3-4): AdamW lr 1e-4, weight decay 0.05, ReduceLROnPlateau (factor 0.5, patience
10) on the validation score (label AUC + BI-RADS AUC), gradient clipping at 1.0, 100 epochs, bf16.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mvmlm.config import MISSING, AugmentConfig, DataConfig, OptimConfig, TrainConfig

__all__ = [
    "TASKS",
    "SETTINGS",
    "MODES",
    "SELECT",
    "MultiviewData",
    "TaskConfig",
    "ModelConfig",
    "EvalConfig",
    "MultiviewConfig",
    "GridRow",
    "GridConfig",
]

TASKS = ("label", "birads")
#: task setting -> the BI-RADS categories kept, in class-index order
SETTINGS: dict[str, tuple[int, ...]] = {"binary": (1, 5), "ternary": (1, 3, 5), "five": (1, 2, 3, 4, 5)}
#: grid mode -> the task lists of its runs (single-task mode: one run per task)
MODES: dict[str, list[list[str]]] = {"multi": [list(TASKS)], "single": [[task] for task in TASKS]}
#: the validation metric that picks the best epoch: the sum of the pooled AUCs of the trained tasks
SELECT = "val/score"


@dataclass
class MultiviewData(DataConfig):
    """The table's exams (its split column as it is) resized to ``image_size``; the paper's flip is on."""

    image_size: list[int] = field(default_factory=lambda: [512, 512])  # network input (H, W); [] = as cached
    label_from: str = "malignant"  # malignant | birads_4_5 (BI-RADS 4-6 = 1: a surrogate where there is no pathology)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(hflip=0.5))


@dataclass
class TaskConfig:
    setting: str = "five"  # binary (BI-RADS 1 vs 5) | ternary (1/3/5) | five (1-5)
    tasks: list[str] = field(default_factory=lambda: list(TASKS))  # one entry = single-task
    weights: dict[str, float] = field(default_factory=lambda: {"label": 0.5, "birads": 0.5})
    subset: bool = True  # breasts with a BI-RADS outside the setting get no label target either


@dataclass
class ModelConfig:
    backbone: str = "hybrid_resnet_vssm"  # registered image encoder: resnet18, resnet50, vssm, hybrid_resnet_vssm, ...
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the encoder, e.g. {pretrained: true}
    checkpoint: str = ""  # MV-MLM checkpoint directory: its image tower is the backbone (backbone* are then unused)
    shared: bool = True  # one backbone for all views; false: one for CC views and one for MLO views
    pool: str = "avg"  # global pooling of each view's feature map: avg (the paper's ResNets) | max
    fusion_hidden: int = 256  # hidden width of the gated-attention MLP
    dropout: float = 0.5  # before the heads
    mask_missing: bool = True  # missing views get attention 0 (removed from the softmax)


@dataclass
class EvalConfig:
    splits: list[str] = field(default_factory=lambda: ["val", "test"])  # table splits evaluated with the best weights
    bootstrap: int = 1000  # patient-level bootstrap resamples for 95 % CIs of the pooled metrics (0 = none)
    plots: bool = True  # ROC curves, confusion matrices and attention bars per evaluated split


def _paper_optim() -> OptimConfig:
    return OptimConfig(
        lr=1e-4, weight_decay=0.05, schedule="plateau", plateau_factor=0.5, plateau_patience=10, grad_clip=1.0
    )


def _paper_train() -> TrainConfig:
    return TrainConfig(epochs=100, mixed_precision="bf16", select=SELECT, keep_checkpoints=1)


@dataclass
class MultiviewConfig:
    data: MultiviewData = field(default_factory=MultiviewData)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=_paper_optim)
    train: TrainConfig = field(default_factory=_paper_train)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out: str = "runs/multiview"  # run directory


@dataclass
class GridRow:
    key: str = MISSING  # folder name of the row's runs, e.g. hybrid_shared
    name: str = MISSING  # row label in the table, e.g. "Hybrid ResNet-VSSM (Shared)"
    backbone: str = MISSING  # registered image encoder
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # replaces run.model.backbone_kwargs
    shared: bool = True
    lr: float = 0.0  # 0 = run.optim.lr


@dataclass
class GridConfig:
    run: MultiviewConfig = field(default_factory=MultiviewConfig)  # every run's config before the row's changes
    rows: list[GridRow] = field(default_factory=list)
    settings: list[str] = field(default_factory=lambda: list(SETTINGS))
    modes: list[str] = field(default_factory=lambda: list(MODES))
    only: list[str] = field(default_factory=list)  # glob patterns of run names to run; [] = all
    out: str = "runs/multiview_grid"
