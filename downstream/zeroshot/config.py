"""The zero-shot command's config (importable without torch: ``mvmlm zeroshot --help`` reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from downstream.common.config import DataConfig, EmbedConfig
from mvmlm.config import MISSING

__all__ = ["ZeroShotConfig"]


@dataclass
class ZeroShotConfig:
    """Class prompt ensembles scored against the breasts of one split with a pretrained MV-CLIP model."""

    data: DataConfig = field(default_factory=DataConfig)  # the table and its splits (batch/augment keys unused)
    checkpoint: str = MISSING  # MV-MLM checkpoint directory (model.safetensors + config.yaml)
    name: str = "mv-mlm"  # how the model is named in the tables
    text_model: str = ""  # frozen text encoder (hub name or local dir) if not the one named in the checkpoint
    split: str = "test"  # the split that is scored
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    tasks: list[str] = field(default_factory=lambda: ["mass", "calcification", "density"])
    task_classes: dict[str, list[str]] = field(default_factory=dict)
    prompts: dict[str, list[list[str]]] = field(
        default_factory=dict
    )  # task -> per class, its prompt ensemble (default: the core's)
    bootstrap: int = 1000
    plots: bool = True
    out: str = "runs/zeroshot"
