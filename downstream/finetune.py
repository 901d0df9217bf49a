"""Full fine-tuning of an image tower + linear head at label fractions: ``python -m downstream.finetune --config ...``
(also ``mvmlm finetune``; ``accelerate launch -m downstream.finetune`` for several GPUs).

Per encoder, task, fraction and seed: the encoder (an MV-MLM image tower, a timm encoder with ImageNet weights, or
a random init) embeds each present view of a breast, the views are pooled (mean or max) and a linear head
classifies the breast. Training uses class-weighted cross-entropy (weights ``n / (k * n_class)`` of the training
subset), AdamW with warmup + cosine decay, and stops early when the validation score has not improved for
``train.patience`` epochs. The weights of the best validation epoch are restored and only then is the test split
read, once. Model selection never sees the test split.

The run directory holds what :func:`mvmlm.evaluation.report` writes plus ``history.jsonl`` (per epoch: training
loss, validation score). With ``save_models: true`` every fine-tuned model (its best validation epoch) is kept in
``models/<encoder>_<task>_<fraction>_<seed>/`` (``model.safetensors`` + ``config.yaml``, and for an MV-MLM tower the
pretraining ``encoder/config.yaml``, so the folder is self-contained); :func:`load_finetuned` reads one back.

Long sweeps survive interruption: each finished encoder x task x fraction x seed leaves
``finished/<encoder>_<task>_<fraction>_<seed>.json`` (test scores, summary, a key of every setting that shapes the
result, the table and the encoder weights by their content); rerunning with ``resume=true`` and the same ``out``
reuses those whose key still matches and trains only the rest.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from downstream.embed import Backbone, EncoderConfig, build_backbone, encoder_fingerprint, pool_views
from downstream.tasks import DataConfig, Task, get_tasks, load_breasts, sample_fraction
from mvmlm.checkpoint import CONFIG_NAME, load_checkpoint_config, load_weights, save_checkpoint
from mvmlm.cli import run_command
from mvmlm.config import ConfigError, config_to_dict, load_config
from mvmlm.data.exams import BreastDataset
from mvmlm.data.transforms import AugmentConfig, build_transform
from mvmlm.evaluation import Evaluation, pivot_markdown, report, slug, validation_score
from mvmlm.rundir import RunDir
from mvmlm.sweep import FinishedRuns, file_digest
from mvmlm.training import check_finite, param_groups, warmup_cosine_schedule

__all__ = [
    "OptimConfig", "TrainConfig", "FinetuneConfig", "FinetunedModelConfig", "BreastClassifier", "class_weights",
    "predict", "finetune_one", "save_finetuned", "load_finetuned", "run_finetune", "main",
]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-4  # not applied to norms and biases
    warmup_steps: int = 100
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping


@dataclass
class TrainConfig:
    epochs: int = 30  # at most
    patience: int = 5  # epochs without a better validation score before stopping
    batch_size: int = 8  # breasts per process
    num_workers: int = 4
    augment: bool = True
    augment_params: AugmentConfig = field(default_factory=AugmentConfig)
    select_metric: str = "auc"  # auc | f1_macro | balanced_accuracy | neg_log_loss (on validation)
    mixed_precision: str = "no"  # no | fp16 | bf16
    cpu: bool = False


@dataclass
class FinetuneConfig:
    data: DataConfig = field(default_factory=DataConfig)
    encoders: dict[str, EncoderConfig] = field(default_factory=dict)  # name -> encoder, compared in one run
    tasks: list[str] = field(default_factory=lambda: ["malignancy"])
    task_classes: dict[str, list[str]] = field(default_factory=dict)  # e.g. {birads: ["1", "2,3", "4,5"]}
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0])
    pool: str = "mean"  # views -> breast: mean | max
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    bootstrap: int = 1000
    plots: bool = True
    save_models: bool = False  # keep every fine-tuned model under models/ (one per encoder x task x fraction x seed)
    resume: bool = False  # reuse the finished/ results of an earlier run into the same out (same settings only)
    out: str = "runs/finetune"


@dataclass
class FinetunedModelConfig:
    """What rebuilds a saved fine-tuned model: its encoder (architecture only), task, classes and view pooling."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    task: str = ""
    class_names: list[str] = field(default_factory=list)
    pool: str = "mean"


class BreastClassifier(nn.Module):
    """Breast views ``(B, V, C, H, W)`` with presence ``(B, V)`` -> class logits ``(B, k)``."""

    def __init__(self, backbone: Backbone, num_classes: int, pool: str = "mean") -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.dim, num_classes)
        self.pool = pool

    def forward(self, images: Tensor, present: Tensor) -> Tensor:
        flat = present.flatten()
        features = self.backbone(images.flatten(0, 1)[flat])
        views = features.new_zeros(flat.numel(), features.shape[-1])
        views[flat] = features
        return self.head(pool_views(views.view(*present.shape, -1), present, self.pool))


class _TaskBreasts(Dataset):
    """Breasts of one split with one task's labels: ``{"images", "mask", "label", "index"}``; training items are
    augmented when ``augment`` is given."""

    def __init__(self, rows: pd.DataFrame, labels: np.ndarray, split: str, train: bool, augment: AugmentConfig | None):
        self.split = split
        transform = build_transform(True, augment) if train and augment is not None else None
        self.views = BreastDataset(rows, labels=(), transform=transform)
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        item = self.views[index]
        return {"images": item["images"], "mask": item["mask"], "label": self.labels[index], "index": index}


def class_weights(labels: np.ndarray, num_classes: int) -> Tensor:
    """``n / (k * n_c)`` per class (0 for classes absent from ``labels``), as in scikit-learn's "balanced"."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def _probabilities(logits: Tensor) -> Tensor:
    probs = logits.float().softmax(dim=-1)
    return probs[:, 1] if probs.shape[1] == 2 else probs


@torch.no_grad()
def predict(accelerator: Accelerator, model: nn.Module, loader: DataLoader) -> np.ndarray:
    """Class probabilities (binary: of the positive class) for every item of ``loader``, in dataset order."""
    model.eval()
    scores, order = [], []
    for batch in loader:
        logits = model(batch["images"], batch["mask"])
        probs, index = accelerator.gather_for_metrics((_probabilities(logits), batch["index"]))
        scores.append(probs.cpu())
        order.append(index.cpu())
    out = torch.cat(scores)[torch.cat(order).argsort()]
    return out.numpy()


def _loader(dataset: _TaskBreasts, cfg: TrainConfig, train: bool, seed: int) -> DataLoader:
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=train, num_workers=cfg.num_workers,
                      generator=torch.Generator().manual_seed(seed), drop_last=False)  # fmt: skip


def _train_epoch(acc: Accelerator, model, loader, optimizer, scheduler, weights: Tensor, cfg: FinetuneConfig) -> float:
    model.train()
    losses = []
    for batch in loader:
        logits = model(batch["images"], batch["mask"])
        loss = F.cross_entropy(logits.float(), batch["label"], weight=weights.to(logits.device))
        check_finite(acc, loss, scheduler.last_epoch + 1, [str(int(i)) for i in batch["index"]])
        acc.backward(loss)
        if cfg.optim.grad_clip > 0:
            acc.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def finetune_one(
    acc: Accelerator, encoder: EncoderConfig, task: Task, splits: dict[str, tuple[pd.DataFrame, np.ndarray]],
    cfg: FinetuneConfig, seed: int, save_to: Path | None = None,
) -> tuple[np.ndarray, dict]:  # fmt: skip
    """Train on ``splits["train"]``, select the epoch on ``splits["val"]``, then score ``splits["test"]`` once.
    With ``save_to`` the selected model is saved there (by the main process) before the test split is read.

    Returns:
        The test scores and a summary (best epoch, epochs run, validation score, per-epoch history).
    """
    t = cfg.train
    set_seed(seed)
    train_rows, train_labels = splits["train"]
    model = BreastClassifier(build_backbone(encoder), task.num_classes, cfg.pool)
    weights = class_weights(train_labels, task.num_classes)
    loaders = {name: _loader(_TaskBreasts(rows, labels, name, name == "train", t.augment_params if t.augment else None),
                             t, name == "train", seed)
               for name, (rows, labels) in splits.items()}  # fmt: skip
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr)
    total = t.epochs * len(loaders["train"])
    scheduler = warmup_cosine_schedule(optimizer, min(cfg.optim.warmup_steps, total - 1), total)
    model, optimizer, train_loader, val_loader = acc.prepare(model, optimizer, loaders["train"], loaders["val"])
    history, best_state, best = [], None, {"epoch": -1, "val_score": -np.inf, "selected_by": t.select_metric}
    for epoch in tqdm(range(t.epochs), desc=f"finetune {task.name}", disable=not acc.is_local_main_process):
        loss = _train_epoch(acc, model, train_loader, optimizer, scheduler, weights, cfg)
        score, used = validation_score(splits["val"][1], predict(acc, model, val_loader), t.select_metric)
        history.append({"epoch": epoch, "train_loss": loss, "val_score": score, "selected_by": used})
        if score > best["val_score"]:
            best = {"epoch": epoch, "val_score": score, "selected_by": used}
            best_state = copy.deepcopy(acc.unwrap_model(model).state_dict())
        elif epoch - best["epoch"] >= t.patience:
            break
    if best_state is None:
        raise ValueError(f"task {task.name!r}: no finite validation score in {len(history)} epoch(s)")
    acc.unwrap_model(model).load_state_dict(best_state)
    if save_to is not None and acc.is_main_process:
        save_finetuned(save_to, acc.unwrap_model(model), encoder, task, cfg.pool)
    test_scores = predict(acc, model, acc.prepare(loaders["test"]))
    acc.free_memory()
    return test_scores, {"best_epoch": best["epoch"], "epochs_run": len(history), "val_score": best["val_score"],
                         "selected_by": best["selected_by"], "history": history}  # fmt: skip


ENCODER_DIR = "encoder"  # a saved model's copy of its MV-MLM pretraining config


def save_finetuned(directory: Path, model: BreastClassifier, encoder: EncoderConfig, task: Task, pool: str) -> Path:
    """Write ``model`` to ``directory`` so that :func:`load_finetuned` rebuilds it without the pretraining files."""
    stored = EncoderConfig(**{**vars(encoder), "init": "random"})  # the architecture; the weights are in the file
    if encoder.source == "mvclip":
        (directory / ENCODER_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(encoder.checkpoint) / CONFIG_NAME, directory / ENCODER_DIR / CONFIG_NAME)
        stored.checkpoint = ENCODER_DIR
    config = FinetunedModelConfig(stored, task.name, list(task.class_names), pool)
    return save_checkpoint(directory, model.state_dict(), config)


def load_finetuned(directory: str | Path, device: str = "cpu") -> tuple[BreastClassifier, FinetunedModelConfig]:
    """A model saved by ``save_models: true`` (eval mode on ``device``) and its config."""
    directory = Path(directory)
    config = load_checkpoint_config(directory, FinetunedModelConfig)
    encoder = config.encoder
    if encoder.source == "mvclip":
        encoder = EncoderConfig(**{**vars(encoder), "checkpoint": str(directory / encoder.checkpoint)})
    model = BreastClassifier(build_backbone(encoder), len(config.class_names), config.pool)
    model.load_state_dict(load_weights(directory))
    return model.to(device).eval(), config


def sweep_settings(cfg: FinetuneConfig, processes: int) -> dict:
    """What every run of the sweep shares and what shapes its result: the data (the table by its content),
    training settings and the number of processes (batch sizes are per process)."""
    train = {k: v for k, v in config_to_dict(cfg.train).items() if k != "num_workers"}
    data = {**config_to_dict(cfg.data), "table": file_digest(cfg.data.table)}
    return {"data": data, "optim": config_to_dict(cfg.optim), "train": train, "pool": cfg.pool,
            "processes": processes}  # fmt: skip


def run_finetune(cfg: FinetuneConfig, acc: Accelerator, run: RunDir) -> dict:
    """Fine-tune and report every encoder x task x fraction x seed; returns what ``metrics.json`` holds."""
    tasks = get_tasks(cfg.tasks, cfg.task_classes)
    breasts = load_breasts(cfg.data)
    patients = breasts["patient"].to_numpy()
    names = {"train": cfg.data.train_split, "val": cfg.data.val_split, "test": cfg.data.test_split}
    evaluations, histories = [], []
    finished, shared = FinishedRuns(run, cfg.resume, acc.is_main_process), sweep_settings(cfg, acc.num_processes)
    fingerprints = {name: encoder_fingerprint(encoder) for name, encoder in cfg.encoders.items()}
    for (encoder_name, encoder), task in itertools.product(cfg.encoders.items(), tasks):
        labels = task.labels(breasts)
        rows = {k: np.flatnonzero((breasts["split"] == s).to_numpy() & (labels >= 0)) for k, s in names.items()}
        for fraction, seed in itertools.product(cfg.fractions, cfg.seeds):
            train = rows["train"][sample_fraction(patients[rows["train"]], labels[rows["train"]], fraction, seed)]
            chosen = {**rows, "train": train}
            splits = {k: (breasts.iloc[idx].reset_index(drop=True), labels[idx]) for k, idx in chosen.items()}
            stem = slug([encoder_name, task.name, fraction, seed])
            settings = {**shared, "encoder": fingerprints[encoder_name], "task": vars(task), "fraction": fraction,
                        "seed": seed}  # fmt: skip
            record = finished.get(stem, settings)
            if record is not None:
                scores, summary = np.asarray(record["scores"]), record["summary"]
            else:
                save_to = run.file(f"models/{stem}") if cfg.save_models else None
                scores, summary = finetune_one(acc, encoder, task, splits, cfg, seed, save_to)
                finished.put(stem, settings, {"scores": scores.tolist(), "summary": summary})
            info = {"encoder": encoder_name, "task": task.name, "fraction": fraction, "seed": seed,
                    "n_train": len(train), **{k: v for k, v in summary.items() if k != "history"}}  # fmt: skip
            histories.append({**info, "history": summary["history"]})
            test = rows["test"]
            evaluations.append(Evaluation(info, labels[test], scores, patients[test],
                                          breasts["breast_id"].to_numpy()[test], task.class_names))  # fmt: skip
    finished.log_reused()
    if not acc.is_main_process:
        return {}
    run.write_text("history.jsonl", "".join(json.dumps(h) + "\n" for h in histories))
    return report(run, evaluations, ["encoder", "task", "fraction"], n_resamples=cfg.bootstrap, plots=cfg.plots)


def main(argv: list[str] | None = None) -> dict:
    """``python -m downstream.finetune --config FILE [key=value ...]``; returns the metrics dict."""
    cfg = load_config(FinetuneConfig, argv, prog="python -m downstream.finetune", description=__doc__)
    if not cfg.encoders:
        raise ConfigError("no encoders: set e.g. encoders.mvmlm.checkpoint=DIR (and baselines, see configs/downstream)")
    if cfg.train.epochs < 1 or cfg.train.patience < 1:
        raise ConfigError("train.epochs and train.patience must be >= 1")
    acc = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=cfg.train.cpu)
    run = RunDir.create(cfg.out, cfg, main_process=acc.is_main_process)
    metrics = run_finetune(cfg, acc, run)
    if acc.is_main_process:
        run.write_metrics(metrics)
        print(f"\nfine-tune, test split ({run.path}):\n")
        print(pivot_markdown(metrics["summary"], ["task", "encoder"], "fraction"))
    return metrics


if __name__ == "__main__":
    sys.exit(run_command(main))
