"""Training the four-view classifier with Accelerate (hybrid CNN-VSSM paper, Sections 4.1-4.3).

Loss ``sum_t w_t * L_t`` (default 0.5 label + 0.5 BI-RADS), ``L_t`` the mean over sides of the class-weighted
cross-entropy (inverse class frequency of the training split, ``ignore_index=-1``). AdamW (weight decay 0.05, not on
norms and biases), ReduceLROnPlateau (factor 0.5, patience 10) on the validation label AUC + BI-RADS AUC, gradient
clipping at 1.0, the best validation epoch kept. A run directory holds ``config.yaml``, ``provenance.json``,
``log.txt``, ``train_log.jsonl`` (one line per epoch), ``checkpoints/step_<epoch>`` (training state for
``resume=latest``), ``best/`` (``model.safetensors`` + ``config.yaml``), ``metrics.json``, and per evaluated split
``predictions_<split>.csv`` (scores and attention per exam) and ``attention_<split>.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch import Tensor, nn
from tqdm.auto import tqdm

from downstream.multiview_data import (
    DataConfig,
    TaskConfig,
    class_names,
    class_weights,
    load_exams,
    make_loader,
    num_classes,
)
from downstream.multiview_eval import (
    attention_summary,
    headline,
    monitor_score,
    plot_attention,
    plot_tasks,
    predict,
    predictions_frame,
    task_metrics,
)
from downstream.multiview_model import ModelConfig, MultiViewClassifier
from mvmlm import checkpoint
from mvmlm.config import ConfigError, config_to_dict
from mvmlm.rundir import RunDir
from mvmlm.training import (
    Best,
    TrainState,
    check_finite,
    flat_hparams,
    param_groups,
    resolve_resume,
    save_checkpoint,
    tracker_name,
)

__all__ = ["OptimConfig", "TrainConfig", "EvalConfig", "MultiviewConfig", "MultiTaskLoss", "train",
           "load_classifier"]  # fmt: skip

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
BEST_DIR = "best"


@dataclass
class OptimConfig:
    lr: float = 1e-4  # the paper: 1e-4 (ResNet, hybrid), 1e-5 (pure VSSM)
    weight_decay: float = 0.05
    plateau_factor: float = 0.5
    plateau_patience: int = 10  # epochs without a better validation score before the lr is cut
    grad_clip: float = 1.0  # max global grad norm; 0 disables


@dataclass
class TrainConfig:
    epochs: int = 100
    early_stop: int = 0  # stop after this many epochs without a better validation score (0 = never)
    mixed_precision: str = "bf16"  # no | fp16 | bf16
    seed: int = 0
    cpu: bool = False  # force CPU even where a GPU is visible
    keep_checkpoints: int = 1  # newest per-epoch training states kept for resume (0 = all)
    tracker: str = "none"  # none | tensorboard
    progress: bool = True  # tqdm bar per epoch (main process)


@dataclass
class EvalConfig:
    splits: list[str] = field(default_factory=lambda: ["val", "test"])  # evaluated with the best weights if present
    bootstrap: int = 1000  # patient-level bootstrap resamples for 95 % CIs of the pooled metrics (0 = none)
    plots: bool = True  # ROC curves, confusion matrices and attention bars per evaluated split


@dataclass
class MultiviewConfig:
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out: str = "runs/multiview"  # run directory
    resume: str = ""  # "latest" (newest state in <out>/checkpoints) or a checkpoint folder


class MultiTaskLoss(nn.Module):
    """``sum_t w_t * mean_side CE_w(logits, target)``; targets -1 are ignored, sides without targets left out.

    Args:
        class_weights: per task, the (K,) cross-entropy class weights.
        task_weights: per task, its weight (normalised to sum 1 over the tasks given).
    """

    def __init__(self, class_weights: dict[str, Tensor], task_weights: dict[str, float]) -> None:
        super().__init__()
        total = sum(task_weights[t] for t in class_weights)
        self.task_weights = {t: task_weights[t] / total for t in class_weights}
        for task, weight in class_weights.items():
            self.register_buffer(f"class_weight_{task}", weight.float())

    def task_loss(self, task: str, logits: Tensor, targets: Tensor) -> Tensor:
        """Weighted CE averaged over the sides that have a target; 0 (with a graph) when none has."""
        weight = getattr(self, f"class_weight_{task}")
        losses, sides = logits.new_zeros(()).float(), logits.new_zeros(()).float()
        for j in range(targets.shape[1]):
            target = targets[:, j]
            nll = F.cross_entropy(logits[:, j].float(), target, weight=weight, ignore_index=-1, reduction="sum")
            denominator = (weight[target.clamp(min=0)] * (target >= 0)).sum()
            losses = losses + nll / denominator.clamp(min=1e-12)
            sides = sides + (denominator > 0).float()
        return losses / sides.clamp(min=1.0)

    def forward(self, logits: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and the per-task losses."""
        parts = {task: self.task_loss(task, logits[task], targets[task]) for task in self.task_weights}
        return sum(self.task_weights[t] * parts[t] for t in parts), parts


def _check(cfg: MultiviewConfig) -> None:
    if cfg.train.mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"key 'train.mixed_precision': must be no, fp16 or bf16, got {cfg.train.mixed_precision!r}")
    if cfg.train.epochs < 1:
        raise ConfigError(f"key 'train.epochs': must be >= 1, got {cfg.train.epochs}")
    if len(cfg.data.image_size) not in (0, 2):
        raise ConfigError(f"key 'data.image_size': [height, width] or [] (as cached), got {cfg.data.image_size}")


def make_accelerator(cfg: MultiviewConfig) -> Accelerator:
    """Mixed precision, CPU switch, seedable shuffling (same batches after a resume), optional tracker."""
    out = Path(cfg.out)
    return Accelerator(
        mixed_precision=cfg.train.mixed_precision, cpu=cfg.train.cpu, log_with=tracker_name(cfg.train.tracker),
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tensorboard")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.train.seed),
    )  # fmt: skip


@dataclass
class Session:
    """Everything a run works with, after ``accelerator.prepare``."""

    cfg: MultiviewConfig
    accelerator: Accelerator
    run: RunDir
    model: nn.Module  # prepared (DDP-wrapped when distributed)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    loss: MultiTaskLoss
    loaders: dict[str, Any]  # split -> prepared DataLoader
    exams: dict[str, pd.DataFrame]  # split -> its exams, in loader order
    state: TrainState  # step = epochs done
    best: Best


def build(cfg: MultiviewConfig, accelerator: Accelerator, run: RunDir) -> Session:
    """Data, model, loss, optimizer and scheduler, prepared; the training state restored when resuming."""
    set_seed(cfg.train.seed)
    exams, targets = load_exams(cfg.data, cfg.task)
    classes = num_classes(cfg.task)
    split_exams, loaders = {}, {}
    for split in dict.fromkeys(["train", "val", *cfg.eval.splits]):
        rows = np.flatnonzero(exams["split"].eq(split).to_numpy(bool))
        if len(rows) == 0:
            if split in ("train", "val"):
                raise ValueError(f"{cfg.data.table}: no exam with a target in split {split!r}")
            continue
        split_exams[split] = exams.iloc[rows].reset_index(drop=True)
        part = {task: values[rows] for task, values in targets.items()}
        loaders[split] = make_loader(split_exams[split], part, cfg.data, train=split == "train", seed=cfg.train.seed)
        if split == "train":  # class weights from the training split only
            weights = {task: class_weights(values, classes[task]) for task, values in part.items()}
            empty = [task for task, values in part.items() if not (values >= 0).any()]
            if empty:
                raise ValueError(f"{cfg.data.table}: no training target for task {empty[0]!r} (data.label_from="
                                 f"{cfg.data.label_from}, task.setting={cfg.task.setting})")  # fmt: skip
    model = MultiViewClassifier(cfg.model, classes)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.optim.plateau_factor, patience=cfg.optim.plateau_patience
    )
    model, optimizer, *prepared = accelerator.prepare(model, optimizer, *loaders.values())
    state = TrainState(layout={"num_processes": accelerator.num_processes, "batch_size": cfg.data.batch_size})
    best = Best()
    accelerator.register_for_checkpointing(scheduler, state, best)
    loss = MultiTaskLoss(weights, cfg.task.weights).to(accelerator.device)
    prepared_loaders = dict(zip(loaders, prepared, strict=True))
    session = Session(cfg, accelerator, run, model, optimizer, scheduler, loss, prepared_loaders,
                      split_exams, state, best)  # fmt: skip
    resume_from = resolve_resume(cfg.resume, run.file("checkpoints"))
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        log.info("resumed from %s after epoch %d", resume_from, state.step)
    return session


def _train_epoch(s: Session, epoch: int) -> dict[str, float]:
    """One pass over the training loader; the mean losses."""
    acc, loader = s.accelerator, s.loaders["train"]
    s.model.train()
    loader.set_epoch(epoch)
    totals: dict[str, float] = {}
    show = acc.is_local_main_process and s.cfg.train.progress
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not show)
    for batch in bar:
        out = s.model(batch["images"], batch["mask"])
        loss, parts = s.loss(out["logits"], batch["targets"])
        check_finite(acc, loss, epoch + 1, s.exams["train"]["exam_id"].iloc[batch["index"].tolist()].tolist())
        acc.backward(loss)
        if s.cfg.optim.grad_clip > 0:
            acc.clip_grad_norm_(s.model.parameters(), s.cfg.optim.grad_clip)
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        for key, value in {"loss": loss, **{f"loss_{t}": v for t, v in parts.items()}}.items():
            totals[key] = totals.get(key, 0.0) + float(value.detach())
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    return {key: value / max(len(loader), 1) for key, value in totals.items()}


def evaluate(s: Session, split: str, bootstrap: int = 0) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics (per task, side and pooled, CIs with ``bootstrap`` resamples; headline; attention) and predictions."""
    preds = predict(s.accelerator, s.model, s.loaders[split])
    patients = s.exams[split]["patient_id"].astype(str).to_numpy()[preds["index"]]
    metrics: dict[str, Any] = {"tasks": task_metrics(preds, s.cfg.task.tasks, patients, bootstrap)}
    metrics["headline"] = headline(metrics["tasks"])
    metrics["attention"] = attention_summary(preds["attention"], preds["mask"])
    return metrics, preds


def _save_best(s: Session, epoch: int) -> None:
    state_dict = s.accelerator.get_state_dict(s.model)
    if s.accelerator.is_main_process:
        checkpoint.save_checkpoint(s.run.file(BEST_DIR), state_dict, s.cfg, metadata={"epoch": str(epoch)})
    s.accelerator.wait_for_everyone()


def fit(s: Session) -> None:
    """Train from the restored epoch up to ``train.epochs`` (or early stop); keep the best validation weights."""
    cfg, acc = s.cfg, s.accelerator
    log_file = s.run.file(LOG_FILE).open("a") if acc.is_main_process else None
    for epoch in range(s.state.step, cfg.train.epochs):
        if cfg.train.early_stop and s.best.stale >= cfg.train.early_stop:
            log.info("early stop: no better validation score for %d epochs", s.best.stale)
            break
        losses = _train_epoch(s, epoch)
        val, _ = evaluate(s, "val")
        score = monitor_score(val["tasks"])
        s.scheduler.step(score)
        record = {"epoch": epoch + 1, **losses, "lr": s.optimizer.param_groups[0]["lr"], "val_score": score,
                  **{f"val_{key}": value for key, value in val["headline"].items()}}  # fmt: skip
        s.best.history.append(record)
        if score > s.best.score:
            s.best.score, s.best.epoch, s.best.stale = score, epoch + 1, 0
            _save_best(s, epoch + 1)
        else:
            s.best.stale += 1
        s.state.step = epoch + 1
        acc.log(record, step=epoch + 1)
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        log.info("epoch %d: loss %.4f, val %s", epoch + 1, losses.get("loss", float("nan")),
                 ", ".join(f"{k} {v:.4f}" for k, v in val["headline"].items()))  # fmt: skip
        save_checkpoint(acc, s.run.file("checkpoints"), epoch + 1, cfg.train.keep_checkpoints)
    if log_file is not None:
        log_file.close()


def finish(s: Session) -> dict[str, Any]:
    """Evaluate the best weights on ``eval.splits``; write predictions and attention plots per split."""
    acc, cfg = s.accelerator, s.cfg
    acc.wait_for_everyone()
    acc.unwrap_model(s.model).load_state_dict(checkpoint.load_weights(s.run.file(BEST_DIR)))
    results: dict[str, Any] = {
        "best_epoch": s.best.epoch, "best_val_score": s.best.score, "epochs_run": s.state.step,
        "parameters": sum(p.numel() for p in acc.unwrap_model(s.model).parameters()),
        "class_weights": {task.removeprefix("class_weight_"): w.tolist() for task, w in s.loss.named_buffers()},
        "history": s.best.history, "eval": {},
    }  # fmt: skip
    for split in cfg.eval.splits:
        if split not in s.loaders:
            log.info("no exams in split %r: not evaluated", split)
            continue
        metrics, preds = evaluate(s, split, cfg.eval.bootstrap)
        results["eval"][split] = metrics
        if acc.is_main_process:
            predictions_frame(s.exams[split], preds, cfg.task.tasks).to_csv(s.run.file(f"predictions_{split}.csv"),
                                                                            index=False)  # fmt: skip
        if acc.is_main_process and cfg.eval.plots:
            title = f"{cfg.model.backbone} ({'shared' if cfg.model.shared else 'view-specific'}), {split}"
            plot_attention(metrics["attention"], s.run.file(f"plots/attention_{split}.png"), title)
            plot_tasks(preds, class_names(cfg.task), s.run.file("plots"), split)
    results["headline"] = results["eval"].get("val", {}).get("headline", {})
    return results


def train(cfg: MultiviewConfig) -> dict[str, Any]:
    """Train and evaluate one configuration in the run directory ``cfg.out``; returns what metrics.json holds."""
    _check(cfg)
    accelerator = make_accelerator(cfg)
    run = RunDir.create(cfg.out, cfg, main_process=accelerator.is_main_process)
    accelerator.init_trackers("multiview", config=flat_hparams(config_to_dict(cfg)))  # no-op without a tracker
    try:
        session = build(cfg, accelerator, run)
        fit(session)
        results = finish(session)
        if accelerator.is_main_process:
            run.write_metrics(results)
    finally:
        accelerator.end_training()
    return results


def load_classifier(directory: str | Path, device: str = "cpu") -> tuple[MultiViewClassifier, MultiviewConfig]:
    """The classifier saved in a run's ``best/`` folder (safetensors + config), in eval mode, and its config.

    Pretrained-weight options of the backbone are dropped (the weights come from the file); a model built on an
    MV-MLM tower reads that tower's checkpoint directory again for its architecture.
    """
    cfg = checkpoint.load_checkpoint_config(directory, MultiviewConfig)
    kwargs = {key: value for key, value in cfg.model.backbone_kwargs.items() if not key.startswith("pretrained")}
    model = MultiViewClassifier(dataclasses.replace(cfg.model, backbone_kwargs=kwargs), num_classes(cfg.task))
    model.load_state_dict(checkpoint.load_weights(directory))
    return model.to(device).eval(), cfg
