"""Mammo-Mamba: dual-stream (lesion crop + whole image, CC + MLO) benign vs malignant classification.

``python -m downstream.dual_stream --config configs/downstream/mammo_mamba/dual_stream.yaml \
    data.table=cache/224x224-<hash>/table.parquet data.root=/data/cbis_ddsm``

Input: the ``table.parquet`` of a ``mvmlm preprocess`` cache (whole images, e.g. 224x224) of a dataset with lesion
locations (CBIS-DDSM ROI masks, VinDr boxes) and the dataset root. Lesion crops are cached beside the image cache
(:mod:`mvmlm.data.roi`). A breast is kept when it has a malignant label and, for the crop stream, a crop of at
least one view; the others are logged and skipped. Training as the paper: AdamW, cosine annealing, batch 8,
cross-entropy with label smoothing; the best validation-AUC epoch is kept. After every epoch the training state is
saved in ``checkpoints/``; ``resume=latest`` continues an interrupted run with the same batches. The run directory
holds ``config.yaml``, ``train_log.jsonl`` (loss, validation AUC, SeqMoE and fusion gate mean / std per epoch:
constant gates = saturation), ``best/`` (``model.safetensors`` + ``config.yaml``), ``results.csv`` /
``predictions.parquet`` / ROC plots (via :mod:`mvmlm.evaluation`), ``gates_<split>.png`` (SeqMoE gate values per
stage and block) and ``metrics.json`` with AUC, accuracy, F1, sensitivity and specificity, each with a
patient-bootstrap 95 % CI.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset

from downstream.dual_stream_model import MammoMamba, MammoMambaModelConfig
from downstream.multiview_data import assign_split
from mvmlm import checkpoint
from mvmlm.cli import run_command
from mvmlm.config import MISSING, ConfigError, load_config
from mvmlm.data.exams import BREAST_KEYS, BREAST_SLOTS, BreastDataset, build_breasts
from mvmlm.data.preprocess import read_cached_table
from mvmlm.data.roi import RoiParams, roi_cache_table
from mvmlm.data.transforms import AugmentConfig, build_transform
from mvmlm.evaluation import Evaluation, report
from mvmlm.metrics import auc, bootstrap_ci
from mvmlm.rundir import RunDir
from mvmlm.training import Best, param_groups, resolve_resume, warmup_cosine_schedule
from mvmlm.training import save_checkpoint as save_training_state

__all__ = ["DataConfig", "OptimConfig", "MammoMambaConfig", "DualStreamDataset", "load_breasts", "binary_metrics",
           "train", "main"]  # fmt: skip

log = logging.getLogger(__name__)
CLASS_NAMES = ("benign", "malignant")
BEST_DIR, CHECKPOINTS_DIR = "best", "checkpoints"


@dataclass
class DataConfig:
    table: str = MISSING  # table.parquet of a `mvmlm preprocess` cache (whole images)
    root: str = MISSING  # dataset root: ROI masks, crop files and full images for the crops
    roi: RoiParams = field(default_factory=RoiParams)
    image_size: list[int] = field(default_factory=lambda: [224, 224])  # network input (H, W) for both streams
    val_fraction: float = 0.0  # > 0: test kept, the other patients re-split into train / val; 0: the table's split
    split_seed: int = 0
    batch_size: int = 8
    num_workers: int = 0
    augment: bool = True
    augment_params: AugmentConfig = field(default_factory=lambda: AugmentConfig(hflip=0.0))


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    epochs: int = 50
    grad_clip: float = 1.0  # 0 disables


@dataclass
class MammoMambaConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: MammoMambaModelConfig = field(default_factory=MammoMambaModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval_splits: list[str] = field(default_factory=lambda: ["test"])
    bootstrap: int = 1000  # patient-level bootstrap resamples for the CIs (0 = none)
    seed: int = 0
    cpu: bool = False  # force CPU where a GPU is visible
    resume: str = ""  # "latest" (newest training state in <out>/checkpoints) or a checkpoint folder
    keep_checkpoints: int = 1  # newest per-epoch training states kept for resume (0 = all)
    out: str = "runs/mammo_mamba"


def load_breasts(cfg: DataConfig, streams: list[str]) -> pd.DataFrame:
    """One row per breast with a malignant label: per stream and view ``<stream>_<view>_{cache_path,present,...}``.

    Breasts without a label, or (with the crop stream) without any crop, are logged and left out.
    """
    images = read_cached_table(cfg.table)
    tables = {"whole": images}
    if "crop" in streams:
        tables["crop"] = roi_cache_table(images, cfg.root, Path(cfg.table).parent.parent, cfg.roi, progress=False)
    breasts = build_breasts(images)[[*BREAST_KEYS, "split", "malignant"]]
    breasts["split"] = assign_split(breasts, cfg.val_fraction, cfg.split_seed)
    for stream, table in tables.items():
        part = build_breasts(table).set_index(BREAST_KEYS)
        slots = [c for c in part.columns if c.split("_")[0] in BREAST_SLOTS]
        part = part[slots].rename(columns={c: f"{stream}_{c}" for c in slots})
        breasts = breasts.join(part, on=BREAST_KEYS)
        for view in BREAST_SLOTS:
            breasts[f"{stream}_{view}_present"] = breasts[f"{stream}_{view}_present"].eq(True)
    unlabelled = breasts["malignant"].isna()
    no_crop = ~unlabelled & ("crop" in streams) & ~breasts.filter(regex="^crop_.*_present$").any(axis=1)
    for reason, rows in (("no malignant label", unlabelled), ("no lesion crop in either view", no_crop)):
        if rows.any():
            log.warning("skipping %d breast(s) with %s: %s", int(rows.sum()), reason,
                        ", ".join(breasts.loc[rows, "patient_id"] + "/" + breasts.loc[rows, "laterality"]))  # fmt: skip
    return breasts[~unlabelled & ~no_crop].reset_index(drop=True)


class DualStreamDataset(Dataset):
    """Items ``{"inputs": {stream: (images (2, 1, H, W), mask (2,))}, "label", "id", "patient"}``."""

    def __init__(self, breasts: pd.DataFrame, streams: list[str], size: list[int], train: bool, aug: AugmentConfig):
        augment = build_transform(train, aug)

        def transform(image: torch.Tensor) -> torch.Tensor:
            image = F.interpolate(image[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
            return augment(image)

        self.breasts = breasts.reset_index(drop=True)
        self.views = {}
        for stream in streams:
            columns = {c: c[len(stream) + 1 :] for c in breasts.columns if c.startswith(f"{stream}_")}
            rows = self.breasts[[*BREAST_KEYS, "malignant", *columns]].rename(columns=columns)
            self.views[stream] = BreastDataset(rows, labels=["malignant"], transform=transform)

    def __len__(self) -> int:
        return len(self.breasts)

    def __getitem__(self, index: int) -> dict:
        items = {stream: views[index] for stream, views in self.views.items()}
        first = next(iter(items.values()))
        inputs = {stream: (item["images"], item["mask"]) for stream, item in items.items()}
        patient = first["id"].split("/")[1]  # id = dataset/patient/exam/laterality
        return {"inputs": inputs, "label": first["labels"]["malignant"], "id": first["id"], "patient": patient}


def binary_metrics(y: np.ndarray, prob: np.ndarray, patients: list[str], n_resamples: int) -> dict[str, float]:
    """Accuracy, F1 (malignant), sensitivity, specificity at threshold 0.5, each with a patient-bootstrap CI."""
    pred = (prob >= 0.5).astype(int)

    def rate(rows: np.ndarray, num: int, den: int | None) -> float:
        hits = (pred[rows] == num) & (y[rows] == (num if den is None else den))
        base = len(rows) if den is None else int((y[rows] == den).sum())
        return float(hits.sum() / base) if base else float("nan")

    def f1(rows: np.ndarray) -> float:
        tp = int(((pred[rows] == 1) & (y[rows] == 1)).sum())
        return 2 * tp / max(1, int((pred[rows] == 1).sum() + (y[rows] == 1).sum()))

    fns = {"accuracy": lambda r: float((pred[r] == y[r]).mean()), "f1": f1,
           "sensitivity": lambda r: rate(r, 1, 1), "specificity": lambda r: rate(r, 0, 0)}  # fmt: skip
    out = {}
    for name, fn in fns.items():
        if n_resamples:
            value, low, high = bootstrap_ci(fn, patients, n_resamples=n_resamples)
        else:
            value, low, high = fn(np.arange(len(y))), float("nan"), float("nan")
        out.update({name: value, f"{name}_low": low, f"{name}_high": high})
    return out


def _to(inputs: dict, device: torch.device) -> dict:
    return {s: (images.to(device), mask.to(device)) for s, (images, mask) in inputs.items()}


@torch.no_grad()
def predict(model: MammoMamba, loader: DataLoader, device: torch.device) -> dict:
    """Malignant probabilities, labels, ids, patients, and every SeqMoE / fusion gate value of ``loader``."""
    model.eval()
    probs, labels, ids, patients, gates = [], [], [], [], {}
    for batch in loader:
        out = model(_to(batch["inputs"], device))
        probs.append(out["logits"].float().softmax(-1)[:, 1].cpu())
        labels.append(batch["label"])
        ids += batch["id"]
        patients += batch["patient"]
        blocks = {f"{k}.block{j}": g for k, values in model.seqmoe_gates().items() for j, g in enumerate(values)}
        if "fusion_gate" in out:
            blocks["fusion"] = out["fusion_gate"]
        for key, value in blocks.items():
            gates.setdefault(key, []).append(value.float().mean(-1).cpu())  # per sample (and window)
    return {"prob": torch.cat(probs).numpy(), "label": torch.cat(labels).numpy(), "id": ids, "patient": patients,
            "gates": {k: torch.cat(v).numpy() for k, v in gates.items()}}  # fmt: skip


def plot_gates(path: Path, gates: dict[str, np.ndarray]) -> Path:
    """Box plot of the per-sample mean gate of every SeqMoE block (and the stream fusion): saturation shows."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 0.45 * len(gates) + 1), 3.6), layout="constrained")
    ax = fig.subplots()
    ax.boxplot(list(gates.values()), showfliers=False)
    ax.set_xticks(range(1, len(gates) + 1), list(gates), rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("gate value")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _loader(breasts: pd.DataFrame, cfg: MammoMambaConfig, train: bool) -> DataLoader:
    data = cfg.data
    dataset = DualStreamDataset(breasts, cfg.model.streams, data.image_size, train and data.augment,
                                data.augment_params)  # fmt: skip
    generator = torch.Generator().manual_seed(cfg.seed)
    drop_last = train and len(dataset) > data.batch_size  # a last batch of one breaks BatchNorm
    return DataLoader(dataset, batch_size=data.batch_size, shuffle=train, drop_last=drop_last,
                      num_workers=data.num_workers, generator=generator)  # fmt: skip


def train(cfg: MammoMambaConfig, run: RunDir) -> dict:
    """Train (from the newest training state with ``resume``), keep the best validation-AUC weights in ``best/``,
    evaluate ``eval_splits``; the metrics dict."""
    if len(cfg.data.image_size) != 2:
        raise ConfigError(f"key 'data.image_size': [height, width], got {cfg.data.image_size}")
    torch.manual_seed(cfg.seed)
    acc = Accelerator(cpu=cfg.cpu)
    device = acc.device
    breasts = load_breasts(cfg.data, cfg.model.streams)
    splits = {s: breasts[breasts["split"] == s] for s in dict.fromkeys(["train", "val", *cfg.eval_splits])}
    for name in ("train", "val"):
        if splits[name].empty:
            raise ValueError(f"{cfg.data.table}: no usable breast in split {name!r}")
    loaders = {s: _loader(rows, cfg, s == "train") for s, rows in splits.items() if len(rows)}
    model = MammoMamba(cfg.model)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr)
    steps = len(loaders["train"])
    scheduler = warmup_cosine_schedule(optimizer, cfg.optim.warmup_epochs * steps, cfg.optim.epochs * steps)
    model, optimizer = acc.prepare(model, optimizer)
    best = Best()
    acc.register_for_checkpointing(scheduler, best)
    resume_from = resolve_resume(cfg.resume, run.file(CHECKPOINTS_DIR))
    if resume_from is not None:
        acc.load_state(str(resume_from))
        log.info("resumed from %s after epoch %d", resume_from, len(best.history))
    for epoch in range(len(best.history), cfg.optim.epochs):
        model.train()
        loaders["train"].generator.manual_seed(cfg.seed + epoch)  # the same batches after a resume
        losses = []
        for batch in loaders["train"]:
            out = model(_to(batch["inputs"], device))
            loss = F.cross_entropy(out["logits"].float(), batch["label"].to(device),
                                   label_smoothing=cfg.optim.label_smoothing)  # fmt: skip
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch}: non-finite loss on breasts {batch['id']}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        val = predict(acc.unwrap_model(model), loaders["val"], device)
        val_auc = auc(val["label"], val["prob"])
        gates = {k: [float(v.mean()), float(v.std())] for k, v in val["gates"].items()}
        best.history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_auc": val_auc,
                             "gates_mean_std": gates})  # fmt: skip
        log.info("epoch %d: loss %.4f, val AUC %.4f", epoch, best.history[-1]["loss"], val_auc)
        if best.epoch < 0 or (np.isfinite(val_auc) and val_auc > best.score):
            best.score, best.epoch = val_auc, epoch
            checkpoint.save_checkpoint(
                run.file(BEST_DIR), acc.get_state_dict(model), cfg, metadata={"epoch": str(epoch)}
            )
        save_training_state(acc, run.file(CHECKPOINTS_DIR), epoch + 1, cfg.keep_checkpoints)
        run.write_text("train_log.jsonl", "".join(json.dumps(h) + "\n" for h in best.history))  # as checkpointed
    model = acc.unwrap_model(model)
    model.load_state_dict(checkpoint.load_weights(run.file(BEST_DIR)))
    setup = "+".join(model.stream_names) + ("" if cfg.model.backbone_kwargs.get("seqmoe", True) else " no-seqmoe")
    evaluations, extra = [], {}
    for split in cfg.eval_splits:
        if split not in loaders:
            log.warning("no usable breast in eval split %r; not evaluated", split)
            continue
        pred = predict(model, loaders[split], device)
        evaluations.append(Evaluation({"model": setup, "split": split}, pred["label"], pred["prob"],
                                      pred["patient"], pred["id"], CLASS_NAMES))  # fmt: skip
        extra[split] = binary_metrics(pred["label"], pred["prob"], pred["patient"], cfg.bootstrap)
        if pred["gates"]:
            plot_gates(run.file(f"gates_{split}.png"), pred["gates"])
    results = report(run, evaluations, keys=["model", "split"], series_key="model", n_resamples=cfg.bootstrap)
    return {"best_val_auc": best.score, "epochs": best.history, "binary": extra, **results,
            "breasts": {s: len(rows) for s, rows in splits.items()}}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """``python -m downstream.dual_stream``: train and evaluate the Mammo-Mamba dual-stream model."""
    cfg = load_config(MammoMambaConfig, argv, prog="python -m downstream.dual_stream", description=__doc__)
    run = RunDir.create(cfg.out, cfg)
    run.attach_log()
    metrics = train(cfg, run)
    run.write_metrics(metrics)
    return metrics


if __name__ == "__main__":
    sys.exit(run_command(main))
