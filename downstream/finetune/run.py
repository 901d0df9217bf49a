"""Full fine-tuning of an image tower + linear head at label fractions: ``mvmlm finetune --config ...`` (also
``python -m downstream.finetune``; ``accelerate launch -m downstream.finetune`` for several GPUs).

Per encoder, task, fraction and seed (a *unit*): the encoder (an MV-MLM image tower, a timm encoder with ImageNet
weights, or a random init) embeds each present view of a breast, the views are pooled (mean or max) and a linear head
classifies the breast. Each unit trains on the one engine (:class:`mvmlm.training.Engine`) in
``units/<encoder>_<task>_<fraction>_<seed>/``: class-weighted cross-entropy (weights ``n / (k * n_class)`` of the
training subset), AdamW with warmup + cosine decay (``optim``), validation after every epoch, the weights of the best
``train.select`` (default ``val/auc``) kept and restored, early stop after ``train.early_stop`` evaluations without a
better one. Only then is the test split read, once. Model selection never sees the test split; where no validation
score is finite (e.g. a validation split holding one class), the final weights are kept with a warning.

The run directory holds what :func:`mvmlm.evaluation.report` writes plus ``history.jsonl`` (per unit: its
validation records); each unit's folder keeps its ``train_log.jsonl`` (per step) and ``val_log.jsonl``. With
``save_models: true`` every fine-tuned model (its best validation epoch) is kept in ``models/<unit>/``
(``model.safetensors`` + ``config.yaml``, and for an MV-MLM tower the pretraining ``encoder/config.yaml``, so the
folder is self-contained); :func:`load_finetuned` reads one back.

Long sweeps survive interruption: each finished unit leaves ``finished/<unit>.json`` (test scores, summary, a key of
every setting that shapes the result, the table and the encoder weights by their content). Rerunning with
``train.resume=latest`` (``--resume latest``) and the same ``out`` reuses those whose key still matches, continues an
interrupted unit from its last checkpoint (every epoch) and trains only the rest.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from downstream.common.config import EncoderConfig
from downstream.common.embed import POOLS, build_backbone, encoder_fingerprint
from downstream.common.tasks import Task, get_tasks, load_breasts, sample_fraction
from downstream.finetune import COMMAND
from downstream.finetune.config import SELECT_METRICS, FinetuneConfig
from downstream.finetune.model import (
    BreastClassifier,
    class_weights,
    finetune_card,
    load_finetuned,
    save_finetuned,
)
from mvmlm.bundle import preprocessing_of
from mvmlm.config import AugmentConfig, ConfigError, DataConfig, config_to_dict
from mvmlm.data.device_augment import DeviceAugment, device_augment_for
from mvmlm.data.exams import BreastDataset
from mvmlm.data.transforms import SeededItems, build_transform
from mvmlm.evaluation import METRICS, Evaluation, pivot_markdown, predict_classes, report, slug, validation_score
from mvmlm.rundir import RunDir
from mvmlm.sweep import FinishedRuns, claim_unit, file_digest, shaping_settings
from mvmlm.training import BEST_DIR, Engine, Loss
from mvmlm.training.runs import open_run

__all__ = [
    "UNITS_DIR",
    "validation_metrics",
    "predict",
    "finetune_one",
    "load_finetuned",
    "sweep_settings",
    "run_finetune",
    "main",
]

log = logging.getLogger(__name__)

UNITS_DIR = "units"  # <run>/units/<unit>/: the engine's folder of each unit
#: train keys that do not shape a unit's result (left out of the resume key)


class _TaskBreasts(Dataset):
    """Breasts of one split with one task's labels: ``{"images", "mask", "label", "index", "id"}``; training items
    are augmented when ``augment`` is given (and enabled), or carry the stored values and their ``affine``
    parameters for ``device`` augmentation."""

    def __init__(
        self,
        rows: pd.DataFrame,
        labels: np.ndarray,
        split: str,
        augment: AugmentConfig | None = None,
        device: DeviceAugment | None = None,
    ):
        self.split = split
        transform = build_transform(True, augment) if augment and not device else None
        self.views = BreastDataset(rows, labels=(), transform=transform, device=device)
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        item = self.views[index]
        return {
            **{key: item[key] for key in ("images", "mask", "affine") if key in item},
            "label": self.labels[index],
            "index": index,
            "id": item["id"],
        }


def _loader(dataset: _TaskBreasts, data: DataConfig, train: bool, pin_memory: bool = False) -> DataLoader:
    batch_size = data.batch_size if train else data.eval_batch_size or data.batch_size
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=train, num_workers=data.num_workers, pin_memory=pin_memory
    )


def _probabilities(logits: Tensor) -> Tensor:
    probs = logits.float().softmax(dim=-1)
    return probs[:, 1] if probs.shape[1] == 2 else probs


@torch.no_grad()
def predict(accelerator: Accelerator, model: nn.Module, loader: DataLoader) -> np.ndarray:
    """Class probabilities (binary: of the positive class) for every item of a prepared ``loader``, in dataset order
    (each process scores its share; the shares are gathered)."""
    model.eval()
    scores, order = [], []
    for batch in loader:
        logits = model(batch["images"], batch["mask"])
        probs, index = accelerator.gather_for_metrics((_probabilities(logits), batch["index"]))
        scores.append(probs.cpu())
        order.append(index.cpu())
    out = torch.cat(scores)[torch.cat(order).argsort()]
    return out.numpy()


def validation_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """``val/auc``, ``val/f1_macro``, ``val/balanced_accuracy`` (NaN where undefined) and ``val/neg_log_loss``."""
    pred = predict_classes(scores)
    found = {f"val/{name}": float(fn(y_true, scores, pred)) for name, (fn, _) in METRICS.items()}
    return {**found, "val/neg_log_loss": validation_score(y_true, scores, "neg_log_loss")[0]}


def _weighted_cross_entropy(weights: Tensor):
    def loss(model: nn.Module, batch: dict) -> Loss:
        logits = model(batch["images"], batch["mask"])
        value = F.cross_entropy(logits.float(), batch["label"], weight=weights.to(logits.device))
        return Loss(value, ids=list(batch["id"]))

    return loss


def finetune_one(
    encoder: EncoderConfig,
    task: Task,
    splits: dict[str, tuple[pd.DataFrame, np.ndarray]],
    cfg: FinetuneConfig,
    seed: int,
    workdir: Path,
    save_to: Path | None = None,
) -> tuple[np.ndarray, dict]:
    """One unit on the engine in ``workdir``: train on ``splits["train"]``, select on ``splits["val"]``, then score
    ``splits["test"]`` once. With ``save_to`` the selected model is saved there (by the main process) before the test
    split is read. ``train.resume=latest`` continues from the newest checkpoint in ``workdir``.

    Returns:
        The test scores and a summary (best epoch, epochs run, validation score, the validation records).
    """
    train = dataclasses.replace(cfg.train, seed=seed, select=cfg.train.select or SELECT_METRICS[0])
    engine = Engine(train, cfg.optim, workdir, hparams=config_to_dict(cfg), name=f"finetune-{workdir.name}")
    model = BreastClassifier(build_backbone(encoder), task.num_classes, cfg.pool)  # after the engine seeded the head
    train_rows, train_labels = splits["train"]
    augment = cfg.data.augment if cfg.data.augment.enabled else None
    device = device_augment_for(cfg.data, engine.device)
    train_set = SeededItems(_TaskBreasts(train_rows, train_labels, "train", augment, device), seed)
    train_loader = _loader(train_set, cfg.data, train=True, pin_memory=engine.device.type == "cuda")
    val_rows, val_labels = splits["val"]
    val_loader = engine.prepare(_loader(_TaskBreasts(val_rows, val_labels, "val"), cfg.data, train=False))
    fit = engine.fit(
        model,
        train_loader,
        loss=_weighted_cross_entropy(class_weights(train_labels, task.num_classes)),
        evaluate=lambda m: validation_metrics(val_labels, predict(engine.accelerator, m, val_loader)),
        discard_checkpoints=True,
        on_device=device.images if device else None,
    )
    if save_to is not None and engine.is_main_process:
        card = finetune_card(workdir.parents[1], task, {k: len(v[1]) for k, v in splits.items()}, fit.best)
        save_finetuned(save_to, model, encoder, task, cfg.pool, preprocessing_of(cfg.data.table), card)
    test_loader = engine.prepare(_loader(_TaskBreasts(*splits["test"], "test"), cfg.data, train=False))
    test_scores = predict(engine.accelerator, model, test_loader)
    engine.end()
    summary = {
        "best_epoch": fit.best["epoch"],
        "epochs_run": fit.epochs,
        "steps": fit.steps,
        "val_score": fit.best["score"],
        "selected_by": fit.best["metric"],
        "history": fit.history,
    }
    return test_scores, summary


def sweep_settings(cfg: FinetuneConfig, processes: int) -> dict:
    """What every unit of the sweep shares and what shapes its result: the data (the table by its content),
    training settings and the number of processes (batch sizes are per process)."""
    shaping = shaping_settings({"data": config_to_dict(cfg.data), "train": config_to_dict(cfg.train)})
    return {
        "data": {**shaping["data"], "table": file_digest(cfg.data.table)},
        "optim": config_to_dict(cfg.optim),
        "train": shaping["train"],
        "pool": cfg.pool,
        "processes": processes,
    }


def run_finetune(cfg: FinetuneConfig, run: RunDir, state: PartialState) -> dict:
    """Fine-tune and report every encoder x task x fraction x seed; returns what ``metrics.json`` holds."""
    tasks = get_tasks(cfg.tasks, cfg.task_classes)
    breasts = load_breasts(cfg.data)
    patients = breasts["patient"].to_numpy()
    names = {"train": cfg.data.train_split, "val": cfg.data.val_split, "test": cfg.data.test_split}
    resume = cfg.train.resume == "latest"
    evaluations, histories = [], []
    finished, shared = FinishedRuns(run, resume, state.is_main_process), sweep_settings(cfg, state.num_processes)
    fingerprints = {name: encoder_fingerprint(encoder) for name, encoder in cfg.encoders.items()}
    for (encoder_name, encoder), task in itertools.product(cfg.encoders.items(), tasks):
        labels = task.labels(breasts)
        rows = {k: np.flatnonzero((breasts["split"] == s).to_numpy() & (labels >= 0)) for k, s in names.items()}
        for fraction, seed in itertools.product(cfg.fractions, cfg.seeds):
            train = rows["train"][sample_fraction(patients[rows["train"]], labels[rows["train"]], fraction, seed)]
            chosen = {**rows, "train": train}
            splits = {k: (breasts.iloc[idx].reset_index(drop=True), labels[idx]) for k, idx in chosen.items()}
            stem = slug([encoder_name, task.name, fraction, seed])
            settings = {
                **shared,
                "encoder": fingerprints[encoder_name],
                "task": vars(task),
                "fraction": fraction,
                "seed": seed,
            }
            record = finished.get(stem, settings)
            if record is not None:
                scores, summary = np.asarray(record["scores"]), record["summary"]
            else:
                workdir = run.file(f"{UNITS_DIR}/{stem}")
                claim_unit(workdir, settings, main_process=state.is_main_process)
                state.wait_for_everyone()
                save_to = run.file(f"models/{stem}") if cfg.save_models else None
                scores, summary = finetune_one(encoder, task, splits, cfg, seed, workdir, save_to)
                finished.put(stem, settings, {"scores": scores.tolist(), "summary": summary})
                if state.is_main_process:  # the selected weights live on in the results (and models/ if saved)
                    shutil.rmtree(workdir / BEST_DIR, ignore_errors=True)
            info = {
                "encoder": encoder_name,
                "task": task.name,
                "fraction": fraction,
                "seed": seed,
                "n_train": len(train),
                **{k: v for k, v in summary.items() if k != "history"},
            }
            histories.append({**info, "history": summary["history"]})
            test = rows["test"]
            evaluations.append(
                Evaluation(
                    info, labels[test], scores, patients[test], breasts["breast_id"].to_numpy()[test], task.class_names
                )
            )
    finished.log_reused()
    if not state.is_main_process:
        return {}
    run.write_text("history.jsonl", "".join(json.dumps(h) + "\n" for h in histories))
    return report(run, evaluations, ["encoder", "task", "fraction"], n_resamples=cfg.bootstrap, plots=cfg.plots)


def check_config(cfg: FinetuneConfig) -> None:
    """One-line errors for settings fine-tuning cannot use."""
    t = cfg.train
    if not cfg.encoders:
        raise ConfigError("no encoders: set e.g. encoders.mvmlm.checkpoint=DIR (and baselines, see configs/finetune)")
    if t.resume not in ("", "none", "latest"):
        raise ConfigError(
            f"key 'train.resume': {t.resume!r}; fine-tuning takes none or latest (finished units are "
            "reused, an interrupted one continues from its own checkpoint)"
        )
    if t.select and t.select not in SELECT_METRICS:
        raise ConfigError(f"key 'train.select': {t.select!r}; one of {', '.join(SELECT_METRICS)}")
    if t.select_mode != "max":
        raise ConfigError(f"key 'train.select_mode': {t.select_mode!r}; every fine-tuning metric is maximised (max)")
    if t.seed != 0:
        raise ConfigError("key 'train.seed': each unit is seeded by its entry of `seeds`; set seeds=[...] instead")
    if cfg.pool not in POOLS:
        raise ConfigError(f"key 'pool': {cfg.pool!r}; one of {', '.join(POOLS)}")


def main(argv: list[str] | None = None) -> dict:
    """``mvmlm finetune --config FILE [key=value ...]``; returns the metrics dict."""
    cfg = COMMAND.parse(argv)
    check_config(cfg)
    state, run = open_run(cfg)
    metrics = run_finetune(cfg, run, state)
    if state.is_main_process:
        run.write_metrics(metrics)
        print(f"\nfine-tune, test split ({run.path}):\n")
        print(pivot_markdown(metrics["summary"], ["task", "encoder"], "fraction"))
    return metrics
