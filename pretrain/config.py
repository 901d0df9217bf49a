"""The typed config of ``mvmlm pretrain`` (YAML files in ``configs/pretrain/`` + dotted overrides); torch-free.

It composes the core's shared pieces (``data`` extends :class:`~mvmlm.config.DataConfig`, ``optim`` and ``train``
are :class:`~mvmlm.config.OptimConfig` and :class:`~mvmlm.config.TrainConfig` with MV-MLM defaults) and adds the
model, the loss and the retrieval evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mvmlm.config import MISSING, DataConfig, OptimConfig, TrainConfig
from mvmlm.models.configs import MVCLIPConfig

__all__ = ["PretrainData", "LossConfig", "EvalConfig", "PretrainConfig"]


@dataclass
class PretrainData(DataConfig):
    """The image table's splits plus the report corpus; one sample is a breast (CC + MLO + one report)."""

    batch_size: int = 18  # breasts per process per micro-batch (MV-MLM: 18 per GPU for EfficientNet-B5)
    num_workers: int = 4
    corpus: str = MISSING  # report corpus folder (parts/part-*.parquet) from `mvmlm reports`
    cached_text: bool = True  # read the frozen text tower's hidden states from the on-disk cache
    text_cache: str = ""  # cache root; "" = <out>/text_cache (share one across runs to encode reports once)


@dataclass
class LossConfig:
    """``L = mean(CLIP(cc, text), CLIP(mlo, text)) + image_image_weight * CLIP(cc, mlo)``."""

    image_image_weight: float = 1.0  # lambda of the CC-vs-MLO term (0 disables it)
    multi_positive: bool = True  # identical reports in the global batch are positives of each other


@dataclass
class EvalConfig:
    """Retrieval evaluation: the val split every ``train.eval_every`` steps; val + a train subset before and after."""

    train_subset: int = 512  # first N training breasts also evaluated before/after training (0 = none)
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])  # recall@k of image->report and report->image


@dataclass
class PretrainConfig:
    """``mvmlm pretrain``: MV-CLIP on breasts (CC + MLO) and their reports."""

    model: MVCLIPConfig = field(default_factory=MVCLIPConfig)
    data: PretrainData = field(default_factory=PretrainData)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=5e-5, weight_decay=0.1, betas=[0.9, 0.98], eps=1e-6, warmup_steps=500)
    )
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=10,
            mixed_precision="bf16",
            eval_every=1000,
            save_every=1000,
            keep_checkpoints=3,
            trackers=["tensorboard"],
        )
    )
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    grad_checkpointing: bool = False  # recompute activations in the backward: less memory, slower steps
    out: str = "runs/pretrain"  # run directory; a second run into it needs train.resume=latest
