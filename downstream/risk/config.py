"""The typed config of ``mvmlm risk`` (YAML files in ``configs/risk/`` + dotted overrides).

Torch-free: ``mvmlm risk --help`` reads only this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from downstream.common.config import EmbedConfig, EncoderConfig
from mvmlm.config import AugmentConfig, DataConfig, OptimConfig, TrainConfig

__all__ = ["RiskData", "CoxnetConfig", "HazardConfig", "RiskModelsConfig", "RiskConfig"]


@dataclass
class RiskData(DataConfig):
    """The exams with follow-up of the table's splits; ``batch_size`` / ``num_workers`` feed the hazard head's
    training on the exam embeddings (``embed.*`` sets how the images are embedded, never augmented)."""

    batch_size: int = 256
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(enabled=False))
    pool: str = "mean"  # four views -> exam: mean | max over the present views


@dataclass
class CoxnetConfig:
    """Elastic-net Cox (scikit-survival ``CoxnetSurvivalAnalysis``); the penalty of its path with the best
    validation Harrell's C is kept."""

    l1_ratio: float = 0.5
    n_alphas: int = 50
    alpha_min_ratio: float = 0.01
    max_iter: int = 100000


@dataclass
class HazardConfig:
    """Additive-hazard head (Mirai) on the exam embeddings; trained by the engine with ``optim`` and ``train``
    (the weights with the lowest validation loss are kept)."""

    hidden: int = 256  # 0: linear head on the embedding
    dropout: float = 0.1


@dataclass
class RiskModelsConfig:
    """What each model sees and how its risks are calibrated. ``inputs``: ``image`` (the exam embedding),
    ``clinical`` (the ``covariates`` only) or ``combined`` (both); every model kind runs on every input."""

    max_followup: int = 5  # Mirai: cumulative 1..T-year risk
    covariates: list[str] = field(default_factory=list)  # canonical-table columns, e.g. [age, density]
    inputs: list[str] = field(default_factory=lambda: ["image"])
    calibration: str = "isotonic"  # per horizon, fitted on validation: isotonic | platt | none
    coxnet: CoxnetConfig = field(default_factory=CoxnetConfig)
    hazard: HazardConfig = field(default_factory=HazardConfig)


@dataclass
class RiskConfig:
    data: RiskData = field(default_factory=RiskData)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    models: list[str] = field(default_factory=lambda: ["coxnet", "hazard"])
    risk: RiskModelsConfig = field(default_factory=RiskModelsConfig)
    # the hazard head's optimizer and loop (Adam-W, constant rate, Mirai-style: no clipping)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=1e-4, schedule="constant", grad_clip=0.0)
    )
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=100, progress=False))
    auc_times: list[float] = field(default_factory=lambda: [2.0, 5.0])  # years of the time-dependent AUC
    bootstrap: int = 1000  # bootstrap resamples of test patients
    plots: bool = True
    out: str = "runs/risk"
