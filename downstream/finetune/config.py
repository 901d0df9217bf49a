"""Fine-tuning's config (importable without torch: ``mvmlm finetune --help`` reads it).

It composes the core pieces: ``data`` (:class:`mvmlm.config.DataConfig`: the table, its splits, batch size, workers,
augmentation), ``optim`` (:class:`mvmlm.config.OptimConfig`) and ``train`` (:class:`mvmlm.config.TrainConfig`: epochs,
early stop, the selection metric, mixed precision, device, checkpoints, ``resume``), with fine-tuning's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from downstream.common.config import DataConfig, EncoderConfig
from mvmlm.config import OptimConfig, TrainConfig

__all__ = ["SELECT_METRICS", "FinetuneConfig", "FinetunedModelConfig"]

#: validation metrics a unit can be selected by (all higher-is-better)
SELECT_METRICS = ("val/auc", "val/f1_macro", "val/balanced_accuracy", "val/neg_log_loss")


def _optim() -> OptimConfig:
    return OptimConfig(lr=1e-4, weight_decay=1e-4, warmup_steps=100, schedule="cosine", grad_clip=1.0)


def _train() -> TrainConfig:
    return TrainConfig(epochs=30, early_stop=5, select="val/auc")


@dataclass
class FinetuneConfig:
    """Per encoder x task x label fraction x seed (a *unit*): fine-tune the image tower + a linear head on the train
    split, keep the best validation epoch, then score the test split once."""

    data: DataConfig = field(default_factory=DataConfig)
    encoders: dict[str, EncoderConfig] = field(default_factory=dict)  # name -> encoder, compared in one run
    tasks: list[str] = field(default_factory=lambda: ["malignancy"])
    task_classes: dict[str, list[str]] = field(default_factory=dict)  # e.g. {birads: ["1", "2,3", "4,5"]}
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])  # of the training patients
    seeds: list[int] = field(default_factory=lambda: [0])  # one fraction draw and training seed per unit
    pool: str = "mean"  # views -> breast: mean | max
    optim: OptimConfig = field(default_factory=_optim)
    train: TrainConfig = field(default_factory=_train)  # train.seed is unused: each unit is seeded by `seeds`
    bootstrap: int = 1000  # bootstrap resamples of test patients (0 = no CIs)
    plots: bool = True
    save_models: bool = False  # keep every fine-tuned model under models/ (one per unit)
    out: str = "runs/finetune"


@dataclass
class FinetunedModelConfig:
    """What rebuilds a saved fine-tuned model: its encoder (architecture only), task, classes and view pooling."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    task: str = ""
    class_names: list[str] = field(default_factory=list)
    pool: str = "mean"
