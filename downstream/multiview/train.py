"""Training the four-view classifier on the one engine (hybrid CNN-VSSM paper, Sections 4.1-4.3).

Loss ``sum_t w_t * L_t`` (default 0.5 label + 0.5 BI-RADS), ``L_t`` the mean over sides of the class-weighted
cross-entropy (inverse class frequency of the training split, ``ignore_index=-1``); the validation score
``val/score`` (label AUC + BI-RADS AUC) picks the best epoch and drives ReduceLROnPlateau. Everything else (AdamW,
clipping, mixed precision, checkpoints, resume, logs) is :class:`mvmlm.training.Engine`'s.

A run directory holds ``config.yaml``, ``provenance.json``, ``log.txt``, ``train_log.jsonl`` (one line per optimizer
step), ``val_log.jsonl`` (one line per validation), ``checkpoints/step_*`` (training state for ``train.resume``),
``best/`` (a bundle: ``model.safetensors`` + ``config.yaml``, read by :func:`load_classifier`, with ``config.json``,
``manifest.json`` and a model card, read by ``mvmlm.load_model``), ``metrics.json``, and per
evaluated split ``predictions_<split>.csv`` (scores and attention per exam) and ``plots/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from downstream.common.bundled_encoder import ENCODER_DIR, tower_architecture, write_architecture
from downstream.multiview.config import SELECT, MultiviewConfig
from downstream.multiview.data import (
    ExamSplit,
    InputTransform,
    class_names,
    class_weights,
    load_splits,
    make_loader,
    num_classes,
    resize_views,
)
from downstream.multiview.eval import (
    attention_summary,
    headline,
    monitor_score,
    plot_attention,
    plot_tasks,
    predict,
    predictions_frame,
    task_metrics,
)
from downstream.multiview.model import VIEWS, MultiViewClassifier, backbone_name
from mvmlm import checkpoint
from mvmlm.bundle import Bundle, ModelCardInfo, bundle_config, format_ci, preprocessing_of
from mvmlm.config import ConfigError, config_to_dict, config_to_yaml
from mvmlm.data.device_augment import device_augment_for
from mvmlm.data.ids import patient_keys
from mvmlm.data.transforms import build_transform
from mvmlm.rundir import RunDir
from mvmlm.training import BEST_DIR, CHECKPOINTS_DIR, Engine, FitResult, Loss, resolve_resume

__all__ = ["MultiTaskLoss", "MultiviewBundle", "train", "evaluate_split", "summary_lines", "load_classifier"]

log = logging.getLogger(__name__)


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
    if len(cfg.data.image_size) not in (0, 2):
        raise ConfigError(f"key 'data.image_size': [height, width] or [] (as cached), got {cfg.data.image_size}")


def evaluate_split(
    engine: Engine, model: nn.Module, loader: Any, split: ExamSplit, tasks: list[str], bootstrap: int = 0
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics (per task, side and pooled, CIs with ``bootstrap`` resamples; headline; attention) and predictions."""
    preds = predict(engine.accelerator, model, loader)
    patients = patient_keys(split.exams).to_numpy()[preds["index"]]
    metrics: dict[str, Any] = {"tasks": task_metrics(preds, tasks, patients, bootstrap)}
    metrics["headline"] = headline(metrics["tasks"])
    metrics["attention"] = attention_summary(preds["attention"], preds["mask"])
    return metrics, preds


def summary_lines(results: dict[str, Any], split: str) -> list[str]:
    """Readable lines of a run's results: AUC / F1-macro per task (pooled over sides) and mean attention per view."""
    metrics = results["eval"][split]
    lines = [f"four-view classifier, best epoch {results['best_epoch']} ({split} split):"]
    for task, values in metrics["tasks"].items():
        pooled = values["pooled"]
        lines.append(f"  {task:<7} AUC {pooled['auc']:.3f}  F1-macro {pooled['f1_macro']:.3f}  ({pooled['n']} breasts)")
    attention = metrics["attention"]["overall"]
    lines.append("  mean view attention: " + "  ".join(f"{view} {attention[view]:.2f}" for view in VIEWS))
    return lines


def _fit(
    engine: Engine, cfg: MultiviewConfig, model: nn.Module, splits: dict[str, ExamSplit], weights: dict[str, Tensor]
) -> FitResult:
    """Train on the training split with the class ``weights``; select on the validation split's score."""
    train_split, val_split = splits[cfg.data.train_split], splits[cfg.data.val_split]
    criterion = MultiTaskLoss(weights, cfg.task.weights).to(engine.device)
    val_loader = engine.prepare(make_loader(val_split, cfg.data, train=False, seed=cfg.train.seed))

    def loss(model: nn.Module, batch: dict) -> Loss:
        out = model(batch["images"], batch["mask"])
        total, parts = criterion(out["logits"], batch["targets"])
        return Loss(total, {f"loss_{t}": v for t, v in parts.items()}, train_split.ids(batch["index"].tolist()))

    def evaluate(model: nn.Module) -> dict[str, float]:
        metrics, _ = evaluate_split(engine, model, val_loader, val_split, cfg.task.tasks)
        return {SELECT: monitor_score(metrics["tasks"]), **{f"val/{k}": v for k, v in metrics["headline"].items()}}

    device = device_augment_for(cfg.data, engine.device, cfg.data.image_size, resize_views)
    pin = engine.device.type == "cuda"
    train_loader = make_loader(train_split, cfg.data, train=True, seed=cfg.train.seed, device=device, pin_memory=pin)
    on_device = device.images if device else None
    return engine.fit(model, train_loader, loss=loss, evaluate=evaluate, select=SELECT, on_device=on_device)


def _evaluate_splits(
    engine: Engine, cfg: MultiviewConfig, run: RunDir, model: nn.Module, splits: dict[str, ExamSplit]
) -> dict[str, Any]:
    """Metrics of ``model`` on each of ``eval.splits`` that has exams; predictions and plots written per split."""
    evaluated = {}
    for name in cfg.eval.splits:
        if name not in splits:
            log.info("no exams in split %r: not evaluated", name)
            continue
        loader = engine.prepare(make_loader(splits[name], cfg.data, train=False, seed=cfg.train.seed))
        evaluated[name], preds = evaluate_split(engine, model, loader, splits[name], cfg.task.tasks, cfg.eval.bootstrap)
        if not engine.is_main_process:
            continue
        frame = predictions_frame(splits[name].exams, preds, cfg.task.tasks)
        frame.to_csv(run.file(f"predictions_{name}.csv"), index=False)
        if cfg.eval.plots:
            title = f"{backbone_name(cfg.model)} ({'shared' if cfg.model.shared else 'view-specific'}), {name}"
            plot_attention(evaluated[name]["attention"], run.file(f"plots/attention_{name}.png"), title)
            plot_tasks(preds, class_names(cfg.task), run.file("plots"), name)
    return evaluated


class MultiviewBundle(Bundle):
    """The four-view classifier as a bundle: an exam's L-CC, L-MLO, R-CC, R-MLO -> per side class probabilities
    of each task, and the view attention."""

    kind = "multiview"
    level = "exam"

    def write_files(self, directory: Path) -> None:
        write_architecture(directory, self.config.get("encoder_config"))
        checkpoint.save_checkpoint(directory, self.module.state_dict(), OmegaConf.create(self.config["model"]))

    @classmethod
    def read_module(cls, directory: Path, config: dict) -> MultiViewClassifier:
        return load_classifier(directory)[0]

    def input_transform(self, image: Tensor) -> Tensor:
        return InputTransform(self.config["model"]["data"]["image_size"], build_transform(False))(image)

    def predict_views(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        out = self.module(images, mask)
        return {**{task: logits.float().softmax(dim=-1) for task, logits in out["logits"].items()}, **out}


def save_bundle(cfg: MultiviewConfig, model: nn.Module, run: RunDir, splits: dict, evaluated: dict) -> None:
    """``best/`` as a bundle whose card holds the exams per split and the pooled AUCs (with CIs) of each split."""
    metrics = {
        f"{split} {task} AUC": format_ci(v["pooled"]["auc"], v["pooled"].get("auc_low"), v["pooled"].get("auc_high"))
        for split, values in evaluated.items()
        for task, v in values["tasks"].items()
    }
    card = ModelCardInfo.from_run(
        run.path,
        title=f"mvmlm four-view classifier ({backbone_name(cfg.model)}, {cfg.task.setting})",
        predicts="From an exam's four views, per breast (L, R) the probabilities of " + ", ".join(cfg.task.tasks) + ".",
        counts={name: len(split.exams) for name, split in splits.items()},
        metrics=metrics,
    )
    stored, architecture = config_to_dict(cfg), None
    if cfg.model.checkpoint:  # the MV-MLM tower's architecture travels with the bundle (its weights are the model's)
        architecture = tower_architecture(cfg.model.checkpoint)
        stored["model"]["checkpoint"] = ENCODER_DIR
    preprocessing = preprocessing_of(cfg.data.table)
    config = bundle_config(stored, class_names(cfg.task), preprocessing, card, encoder_config=architecture)
    MultiviewBundle(model, config).save_pretrained(run.file(BEST_DIR))


def train(cfg: MultiviewConfig) -> dict[str, Any]:
    """Train and evaluate one configuration in the run directory ``cfg.out``; returns what metrics.json holds."""
    _check(cfg)
    resolve_resume(cfg.train.resume, Path(cfg.out) / CHECKPOINTS_DIR)  # refuse before config.yaml is overwritten
    engine = Engine(cfg.train, cfg.optim, cfg.out, hparams=config_to_dict(cfg), name="multiview")
    run = RunDir.create(cfg.out, cfg, main_process=engine.is_main_process, resume=cfg.train.resume)
    try:
        splits = load_splits(cfg.data, cfg.task, cfg.eval.splits)
        classes = num_classes(cfg.task)
        weights = {t: class_weights(v, classes[t]) for t, v in splits[cfg.data.train_split].targets.items()}
        model = MultiViewClassifier(cfg.model, classes)
        fit = _fit(engine, cfg, model, splits, weights)  # the best weights are restored into model
        if engine.is_main_process:  # best/ holds the engine's weights; with the config it is loadable
            with checkpoint.atomic_path(run.file(f"{BEST_DIR}/{checkpoint.CONFIG_NAME}")) as tmp:
                tmp.write_text(config_to_yaml(cfg))
        evaluated = _evaluate_splits(engine, cfg, run, model, splits)
        shown = cfg.data.val_split if cfg.data.val_split in evaluated else next(iter(evaluated), None)
        results: dict[str, Any] = {
            "best_epoch": fit.best["epoch"],
            "best_step": fit.best["step"],
            "best_val_score": fit.best["score"],
            "epochs_run": fit.epochs,
            "steps": fit.steps,
            "stopped_early": fit.stopped_early,
            "parameters": sum(p.numel() for p in model.parameters()),
            "class_weights": {task: weight.tolist() for task, weight in weights.items()},
            "history": fit.history,
            "eval": evaluated,
            "headline": evaluated.get(cfg.data.val_split, {}).get("headline", {}),
        }
        results["summary_lines"] = summary_lines(results, shown) if shown else []
        if engine.is_main_process:
            run.write_metrics(results)
            save_bundle(cfg, engine.unwrap(model), run, splits, evaluated)
    finally:
        engine.end()
    return results


def load_classifier(directory: str | Path, device: str = "cpu") -> tuple[MultiViewClassifier, MultiviewConfig]:
    """The classifier saved in a run's ``best/`` folder or a bundle (safetensors + config), in eval mode, and its
    config.

    Only architectures are built (the weights come from the file): a model on an MV-MLM tower reads the tower's
    config from the bundle's ``encoder/`` folder, or else from the tower's checkpoint directory.
    """
    directory = Path(directory)
    cfg = checkpoint.load_checkpoint_config(directory, MultiviewConfig)
    if cfg.model.checkpoint and (directory / ENCODER_DIR / checkpoint.CONFIG_NAME).is_file():
        cfg.model.checkpoint = str(directory / ENCODER_DIR)
    model = MultiViewClassifier(cfg.model, num_classes(cfg.task), load_pretrained=False)
    model.load_state_dict(checkpoint.load_weights(directory))
    return model.to(device).eval(), cfg
