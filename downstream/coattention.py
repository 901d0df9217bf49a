"""Co-attention fusion of mammograms with clinical-metadata text: ``python -m downstream.coattention --config ...``
(also ``mvmlm coattention``).

Per breast (CC + MLO), the selected metadata fields of the canonical table (default: age and density; never the
target or a field that determines it, see :data:`LEAKING_FIELDS`) become text through
:func:`report_synthesis.breast_facts` and :func:`report_synthesis.template_report`; the frozen text encoder's
hidden states are cached once per text. Every configured fusion (:data:`~downstream.coattention_model.FUSIONS`:
co-attention and the baselines image-only, text-only, late concatenation) is trained on the training split, the
epoch with the best validation AUC is kept, and all are scored on the test split into one table::

    python -m downstream.coattention --config configs/downstream/coattention/vindr.yaml \\
        data.table=cache/1520x912-xxxx/table.parquet encoder.checkpoint=runs/pretrain/model task=calcification

The run directory holds ``config.yaml``, ``provenance.json``, ``log.txt``, ``metrics.json``, ``results.csv``,
``summary.csv``, ``results.md`` (one row per fusion), ``predictions.parquet`` and ``plots/``
(see :func:`mvmlm.evaluation.report`), and ``finished/<fusion>.json`` per trained fusion: ``resume=true`` reuses
those whose settings still match (:mod:`mvmlm.sweep`), so an interrupted run trains only the rest.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from downstream.coattention_model import FUSIONS, CoAttentionModelConfig, FusionClassifier
from downstream.embed import EncoderConfig, encoder_fingerprint, resolve_device
from downstream.tasks import DataConfig, Task, get_task, load_breasts
from mvmlm.cli import run_command
from mvmlm.config import ConfigError, config_to_dict, load_config
from mvmlm.data.exams import BreastDataset
from mvmlm.data.preprocess import read_cached_table
from mvmlm.evaluation import Evaluation, report, validation_score
from mvmlm.models.image_encoders import ImageEncoder, create_image_encoder
from mvmlm.models.mvclip import load_image_tower
from mvmlm.models.text_encoders import DEFAULT_TEXT_MODEL, DEFAULT_TEXT_REVISION, FrozenTextEncoder, TextFeatureCache
from mvmlm.rundir import RunDir
from mvmlm.sweep import FinishedRuns, file_digest
from report_synthesis import breast_facts, template_report

__all__ = [
    "LEAKING_FIELDS", "TextConfig", "TrainConfig", "CoAttentionConfig", "check_leakage", "metadata_texts",
    "image_encoder", "run_coattention", "main",
]  # fmt: skip

log = logging.getLogger(__name__)

#: target column -> metadata fields that equal it or determine it (on some source), never allowed as input
LEAKING_FIELDS: dict[str, frozenset[str]] = {
    "malignant": frozenset(
        {"pathology", "birads", "mass_shape", "mass_margin", "calc_morphology", "calc_distribution"}
    ),
    "calcification": frozenset({"calcification", "calc_morphology", "calc_distribution"}),
    "mass": frozenset({"mass", "mass_shape", "mass_margin"}),
    "birads": frozenset({"birads", "pathology"}),
    "density": frozenset({"density"}),
}


@dataclass
class TextConfig:
    model: str = DEFAULT_TEXT_MODEL  # frozen Hugging Face encoder (hub name or local directory)
    revision: str | None = DEFAULT_TEXT_REVISION
    max_length: int = 128
    cache: str = "runs/text_cache"  # hidden states of each metadata text, stored once


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.05
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"


@dataclass
class CoAttentionConfig:
    data: DataConfig = field(default_factory=DataConfig)
    task: str = "malignancy"  # malignancy | calcification (any binary task of downstream.tasks)
    metadata_fields: list[str] = field(default_factory=lambda: ["age", "density"])
    text_seed: int = 0  # template phrasing
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # mvclip checkpoint or timm encoder
    text: TextConfig = field(default_factory=TextConfig)
    model: CoAttentionModelConfig = field(default_factory=CoAttentionModelConfig)
    fusions: list[str] = field(default_factory=lambda: ["coattention", "image_only", "text_only", "late_concat"])
    train: TrainConfig = field(default_factory=TrainConfig)
    bootstrap: int = 1000
    plots: bool = True
    resume: bool = False  # reuse the fusions finished by an earlier run into the same out (same settings only)
    out: str = "runs/coattention"


def check_leakage(fields: list[str], task: Task) -> None:
    """Raise :class:`ConfigError` if a metadata field equals or determines the task's target column."""
    leaking = sorted(set(fields) & (LEAKING_FIELDS.get(task.column, frozenset()) | {task.column}))
    if leaking:
        raise ConfigError(
            f"metadata_fields: {leaking} equal or determine the target {task.column!r} of task {task.name!r} "
            "(label leakage); remove them"
        )


def metadata_texts(table: pd.DataFrame, breast_ids: list[str], fields: list[str], seed: int) -> list[str]:
    """The metadata text of each breast: its ``fields`` as facts, written by the template backend."""
    facts = {f.breast_id: f for f in breast_facts(table)}
    missing = [b for b in breast_ids if b not in facts]
    if missing:
        raise KeyError(f"no facts for breast {missing[0]} ({len(missing)} missing)")
    return [template_report(facts[b].select(fields), seed) for b in breast_ids]


def _mvclip_encoder(cfg: EncoderConfig) -> ImageEncoder:
    return load_image_tower(cfg.checkpoint).encoder


def _timm_encoder(cfg: EncoderConfig) -> ImageEncoder:
    kwargs = {k: v for k, v in cfg.kwargs.items() if cfg.init == "pretrained" or not k.startswith("pretrained")}
    return create_image_encoder(cfg.name, **kwargs)


_ENCODERS: dict[str, Callable[[EncoderConfig], ImageEncoder]] = {"mvclip": _mvclip_encoder, "timm": _timm_encoder}


def image_encoder(cfg: EncoderConfig) -> ImageEncoder:
    """The feature-map encoder ``cfg`` names (an MV-MLM checkpoint's image encoder or a registered encoder)."""
    if cfg.source not in _ENCODERS:
        raise ConfigError(f"encoder.source {cfg.source!r}; known: {', '.join(_ENCODERS)}")
    torch.manual_seed(cfg.seed)
    return _ENCODERS[cfg.source](cfg)


class _Breasts(Dataset):
    """Breast images and view mask (:class:`BreastDataset`), class label and metadata text."""

    def __init__(self, breasts: pd.DataFrame, labels: np.ndarray, texts: list[str]) -> None:
        self.images = BreastDataset(breasts, labels=())
        self.labels, self.texts = labels, texts

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        item = self.images[index]
        return {
            "images": item["images"],
            "mask": item["mask"],
            "label": int(self.labels[index]),
            "text": self.texts[index],
        }


def _collate(items: list[dict]) -> dict:
    return {
        "images": torch.stack([i["images"] for i in items]),
        "mask": torch.stack([i["mask"] for i in items]),
        "label": torch.tensor([i["label"] for i in items]),
        "text": [i["text"] for i in items],
    }


def _logits(model: FusionClassifier, batch: dict, texts: TextFeatureCache, device: torch.device) -> torch.Tensor:
    hidden, mask = texts(batch["text"], device=device)
    return model(batch["images"].to(device), batch["mask"].to(device), hidden.to(device), mask.to(device))


@torch.no_grad()
def _predict(model: FusionClassifier, loader: DataLoader, texts: TextFeatureCache, device: torch.device) -> np.ndarray:
    model.eval()
    return torch.cat([_logits(model, b, texts, device).softmax(-1).cpu() for b in loader]).numpy()[:, 1]


def _train_one(fusion: str, cfg: CoAttentionConfig, loaders: dict, texts: TextFeatureCache, text_dim: int,
               y_val: np.ndarray) -> FusionClassifier:  # fmt: skip
    """Train ``fusion``; return it with the weights of the epoch with the best validation score."""
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    loaders["train"].generator.manual_seed(cfg.train.seed)  # each fusion sees the same batches, resumed or not
    encoder = image_encoder(cfg.encoder) if FUSIONS[fusion].image else None
    model = FusionClassifier(fusion, cfg.model, 2, encoder, text_dim).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    best, best_state = -np.inf, None
    for epoch in range(cfg.train.epochs):
        model.train()
        for batch in loaders["train"]:
            optimizer.zero_grad()
            F.cross_entropy(_logits(model, batch, texts, device), batch["label"].to(device)).backward()
            optimizer.step()
        score, metric = validation_score(y_val, _predict(model, loaders["val"], texts, device), "auc")
        log.info("%s epoch %d: validation %s %.4f", fusion, epoch + 1, metric, score)
        if score > best:
            best, best_state = score, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model


def run_settings(cfg: CoAttentionConfig) -> dict:
    """Everything besides the fusion that shapes its test scores (the table by its content, the encoder by its
    weights); read once per run."""
    train = {k: v for k, v in config_to_dict(cfg.train).items() if k not in ("num_workers", "device")}
    text = {k: v for k, v in config_to_dict(cfg.text).items() if k != "cache"}
    data = {**config_to_dict(cfg.data), "table": file_digest(cfg.data.table)}  # by content, wherever it lies
    return {"data": data, "task": cfg.task, "fields": cfg.metadata_fields, "text_seed": cfg.text_seed,
            "encoder": encoder_fingerprint(cfg.encoder), "text": text, "model": config_to_dict(cfg.model),
            "train": train}  # fmt: skip


def run_coattention(cfg: CoAttentionConfig, run: RunDir) -> dict:
    """Train and score every configured fusion on one task; write one results table."""
    task = get_task(cfg.task)
    if not task.binary:
        raise ConfigError(f"task {cfg.task!r} is not binary; co-attention classifies malignancy or calcification")
    check_leakage(cfg.metadata_fields, task)
    unknown = [f for f in cfg.fusions if f not in FUSIONS]
    if unknown or not cfg.fusions:
        raise ConfigError(f"fusions: {unknown or 'empty'}; known: {', '.join(FUSIONS)}")
    breasts = load_breasts(cfg.data)
    labels = task.labels(breasts)
    breasts, labels = breasts[labels >= 0].reset_index(drop=True), labels[labels >= 0]
    texts = metadata_texts(read_cached_table(cfg.data.table), list(breasts["breast_id"]), cfg.metadata_fields,
                           cfg.text_seed)  # fmt: skip
    encoder = FrozenTextEncoder(cfg.text.model, cfg.text.revision, cfg.text.max_length)
    cache = TextFeatureCache(cfg.text.cache, encoder)
    cache.ensure(sorted(set(texts)), device=resolve_device(cfg.train.device))
    loaders, rows = {}, {}
    for role, split in (("train", cfg.data.train_split), ("val", cfg.data.val_split), ("test", cfg.data.test_split)):
        rows[role] = np.flatnonzero(breasts["split"].to_numpy() == split)
        if rows[role].size == 0:
            raise ValueError(f"{cfg.data.table}: no breasts labelled for task {task.name!r} in split {split!r}")
        part = breasts.iloc[rows[role]].reset_index(drop=True)
        data = _Breasts(part, labels[rows[role]], [texts[i] for i in rows[role]])
        loaders[role] = DataLoader(data, batch_size=cfg.train.batch_size, shuffle=role == "train", drop_last=False,
                                   num_workers=cfg.train.num_workers, collate_fn=_collate,
                                   generator=torch.Generator().manual_seed(cfg.train.seed))  # fmt: skip
    test = breasts.iloc[rows["test"]]
    evaluations, finished, shared = [], FinishedRuns(run, cfg.resume), run_settings(cfg)
    for fusion in cfg.fusions:
        settings = {**shared, "fusion": fusion}
        record = finished.get(fusion, settings)
        if record is not None:
            scores = np.asarray(record["scores"])
        else:
            model = _train_one(fusion, cfg, loaders, cache, encoder.hidden_size, labels[rows["val"]])
            scores = _predict(model, loaders["test"], cache, resolve_device(cfg.train.device))
            finished.put(fusion, settings, {"scores": scores.tolist()})
        evaluations.append(Evaluation({"model": fusion, "task": task.name}, labels[rows["test"]], scores,
                                      list(test["patient"]), list(test["breast_id"]), task.class_names))  # fmt: skip
    finished.log_reused()
    return report(run, evaluations, keys=["model", "task"], series_key="model", n_resamples=cfg.bootstrap,
                  plots=cfg.plots)  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    cfg = load_config(CoAttentionConfig, argv, prog="python -m downstream.coattention",
                      description=__doc__)  # fmt: skip
    run = RunDir.create(cfg.out, cfg)
    results = run_coattention(cfg, run)
    run.write_metrics(results)
    return results


if __name__ == "__main__":
    sys.exit(run_command(main))
