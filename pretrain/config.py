"""The typed config of ``python -m pretrain`` (YAML files in ``configs/pretrain/`` + dotted overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mvmlm.config import MISSING
from mvmlm.data.transforms import AugmentConfig
from mvmlm.models.mvclip import MVCLIPConfig

__all__ = ["DataConfig", "OptimConfig", "TrainConfig", "EvalConfig", "PretrainConfig"]


@dataclass
class DataConfig:
    table: str = MISSING  # table.parquet of a `mvmlm preprocess` cache folder (rows with cache_path)
    corpus: str = MISSING  # report corpus folder (parts/part-*.parquet) from `python -m report_synthesis`
    train_split: str = "train"
    val_split: str = "val"  # no rows with this split: validation is skipped (with a warning)
    batch_size: int = 18  # breasts per process per micro-batch (MV-MLM: 18 per GPU for EfficientNet-B5)
    num_workers: int = 4
    augment: bool = True  # random affine on training images (mvmlm.data.transforms)
    augment_params: AugmentConfig = field(default_factory=AugmentConfig)
    cached_text: bool = True  # read the frozen text tower's hidden states from the on-disk cache
    text_cache: str = ""  # cache root; "" = <out>/text_cache (share one across runs to encode reports once)


@dataclass
class OptimConfig:
    lr: float = 5e-5
    weight_decay: float = 0.1  # not applied to norms, biases and the logit scale
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 500
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int = 0  # optimizer steps; 0 = epochs x steps per epoch
    accum_steps: int = 1  # micro-batches per optimizer step (features cached, negatives = the whole step)
    mixed_precision: str = "bf16"  # no | fp16 | bf16
    grad_checkpointing: bool = False
    image_image_weight: float = 1.0  # lambda of the CC-vs-MLO term
    multi_positive: bool = True  # identical reports in the global batch are positives of each other
    seed: int = 0
    cpu: bool = False  # force CPU even where a GPU is visible
    log_every: int = 10  # steps between tracker / progress-bar updates (train_log.jsonl gets every step)
    save_every: int = 1000  # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept (0 = all)
    tracker: str = "tensorboard"  # tensorboard | none


@dataclass
class EvalConfig:
    every: int = 1000  # steps between validations (0 = only before and after training)
    train_subset: int = 512  # first N training breasts also evaluated before/after (0 = none)
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    batch_size: int = 0  # breasts per process per eval batch; 0 = data.batch_size


@dataclass
class PretrainConfig:
    model: MVCLIPConfig = field(default_factory=MVCLIPConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out: str = "runs/pretrain"  # run directory
    resume: str = ""  # "latest" (newest checkpoint in <out>/checkpoints) or a checkpoint folder
