"""The probe's config (importable without torch or scikit-learn: ``mvmlm probe --help`` reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from downstream.common.config import DataConfig, EmbedConfig, EncoderConfig

__all__ = ["ProbeConfig"]


@dataclass
class ProbeConfig:
    """Linear probes of frozen encoders per task, label fraction and seed; ``C`` chosen on validation."""

    data: DataConfig = field(default_factory=DataConfig)  # the table and its splits (batch/augment keys unused)
    encoders: dict[str, EncoderConfig] = field(default_factory=dict)  # name -> encoder, compared in one run
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    tasks: list[str] = field(default_factory=lambda: ["mass", "calcification", "density"])
    task_classes: dict[str, list[str]] = field(default_factory=dict)  # e.g. {birads: ["1", "2,3", "4,5"]}
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])  # of the training patients
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # one fraction draw per seed
    c_grid: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0])  # inverse L2 strength
    class_weight: str = "balanced"  # balanced | none
    select_metric: str = "auc"  # auc | f1_macro | balanced_accuracy | neg_log_loss (on validation)
    max_iter: int = 1000
    bootstrap: int = 1000  # bootstrap resamples of test patients (0 = no CIs)
    plots: bool = True
    out: str = "runs/probe"
