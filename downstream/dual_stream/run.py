"""Mammo-Mamba: dual-stream (lesion crop + whole image, CC + MLO) benign vs malignant classification.

``mvmlm dual-stream --config configs/dual_stream/dual_stream.yaml data.table=cache/224x224-<hash>/table.parquet``

Input: the ``table.parquet`` of a ``mvmlm preprocess ... roi.enabled=true`` cache of a dataset with lesion locations
(CBIS-DDSM ROI masks, VinDr boxes): whole images listed there, lesion crops in the ``roi_table.parquet`` beside it.
The table's split column is used as is (``data.train_split`` / ``val_split``; ``eval_splits`` at the end). A breast
is kept when it has a malignant label and, for the crop stream, a crop of at least one view; the others are logged
and skipped. Training runs on :class:`mvmlm.training.Engine` (``accelerate launch`` shards the batches, evaluation
gathers the predictions of every process): AdamW, warmup + cosine, cross-entropy with label smoothing; the best
``val/auc`` weights are kept and restored; ``train.resume=latest`` continues an interrupted run with the same
batches. The run directory (written by the main process) holds ``config.yaml``, ``train_log.jsonl`` (per step),
``val_log.jsonl`` (validation AUC, SeqMoE and fusion gate mean / std per evaluation: constant gates =
saturation), ``best/`` (a bundle: ``model.safetensors`` + ``config.yaml``, ``config.json``, ``manifest.json`` and a
model card, read by ``mvmlm.load_model``; ``mvmlm predict --rois``), ``checkpoints/``, ``results.csv`` /
``predictions.parquet`` / ROC plots (via :mod:`mvmlm.evaluation`), ``gates_<split>.png`` (per-breast gate values of
every SeqMoE block) and ``metrics.json`` with AUC, accuracy, F1, sensitivity and specificity, each with a
patient-bootstrap 95 % CI.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch.nn.functional as F

from downstream.dual_stream import COMMAND
from downstream.dual_stream.config import MammoMambaConfig
from downstream.dual_stream.data import device_hook, load_breasts, make_loader, resize_input
from downstream.dual_stream.evaluate import binary_metrics, plot_gates, predict
from downstream.dual_stream.model import DualStreamBundle, MammoMamba
from mvmlm.bundle import BundleError, ModelCardInfo, bundle_config, format_ci, preprocessing_of
from mvmlm.checkpoint import CONFIG_NAME, load_weights
from mvmlm.config import ConfigError, config_to_dict, config_to_yaml
from mvmlm.data.device_augment import device_augment_for
from mvmlm.errors import InputError
from mvmlm.evaluation import Evaluation, report
from mvmlm.metrics import auc
from mvmlm.rundir import RunDir
from mvmlm.training import BEST_DIR, CHECKPOINTS_DIR, Engine, Loss, resolve_resume

__all__ = ["train", "main"]

log = logging.getLogger(__name__)
CLASS_NAMES = ("benign", "malignant")


def _check(cfg: MammoMambaConfig) -> None:
    if len(cfg.data.image_size) != 2:
        raise ConfigError(f"key 'data.image_size': [height, width], got {cfg.data.image_size}")
    resolve_resume(cfg.train.resume, Path(cfg.out) / CHECKPOINTS_DIR)  # refuse before the run folder is rewritten


def _validation_metrics(pred: dict) -> dict[str, float]:
    metrics = {"val/auc": auc(pred["label"], pred["prob"])}
    for name, values in pred["gates"].items():
        metrics[f"val/gate_mean/{name}"] = float(values.mean())
        metrics[f"val/gate_std/{name}"] = float(values.std())
    return metrics


def train(cfg: MammoMambaConfig, engine: Engine, run: RunDir) -> dict:
    """Train on the table's training split on ``engine`` (best ``val/auc`` weights restored), evaluate
    ``eval_splits``; the metrics dict (on the main process; ``{}`` on the others)."""
    data = cfg.data
    breasts = load_breasts(data, cfg.model.streams)
    names = dict.fromkeys([data.train_split, data.val_split, *cfg.eval_splits])
    splits = {name: breasts[breasts["split"] == name] for name in names}
    for name in (data.train_split, data.val_split):
        if splits[name].empty:
            raise InputError(f"{data.table}: no usable breast in split {name!r}")
    device = device_augment_for(data, engine.device, data.image_size, resize_input)
    pin = engine.device.type == "cuda"
    loaders = {
        name: make_loader(rows, cfg, name == data.train_split, device if name == data.train_split else None, pin)
        for name, rows in splits.items()
        if len(rows)
    }
    evaluated = {name: engine.prepare(loader) for name, loader in loaders.items() if name != data.train_split}
    model = MammoMamba(cfg.model)
    smoothing = cfg.model.label_smoothing

    def loss(net: MammoMamba, batch: dict) -> Loss:
        logits = net(batch["inputs"])["logits"]
        return Loss(F.cross_entropy(logits.float(), batch["label"], label_smoothing=smoothing), ids=batch["id"])

    fit = engine.fit(
        model,
        loaders[data.train_split],
        loss=loss,
        evaluate=lambda m: _validation_metrics(predict(engine, m, evaluated[data.val_split])),
        select="val/auc",
        restore_best=False,  # the engine restores onto device "cpu:0" under multi-process CPU: safetensors refuses it
        on_device=device_hook(device) if device else None,
    )
    if fit.best["step"] is not None:
        model.load_state_dict(load_weights(engine.file(BEST_DIR)))
    if engine.is_main_process:
        run.write_text(f"{BEST_DIR}/{CONFIG_NAME}", config_to_yaml(cfg))
    setup = "+".join(model.stream_names) + ("" if cfg.model.backbone_kwargs.get("seqmoe", True) else " no-seqmoe")
    evaluations, extra = [], {}
    for split in cfg.eval_splits:
        if split not in evaluated:
            log.warning("no usable breast in eval split %r; not evaluated", split)
            continue
        pred = predict(engine, model, evaluated[split])
        info = {"model": setup, "split": split}
        evaluations.append(Evaluation(info, pred["label"], pred["prob"], pred["patient"], pred["id"], CLASS_NAMES))
        if engine.is_main_process:
            extra[split] = binary_metrics(pred["label"], pred["prob"], pred["patient"], cfg.bootstrap)
            if pred["gates"]:
                plot_gates(run.file(f"gates_{split}.png"), pred["gates"])
    if not engine.is_main_process:
        return {}
    results = report(run, evaluations, keys=["model", "split"], series_key="model", n_resamples=cfg.bootstrap)
    save_bundle(cfg, model, run, {name: len(rows) for name, rows in splits.items()}, results["results"])
    return {
        "best_val_auc": fit.best["score"],
        "best": fit.best,
        "history": fit.history,
        "train": {
            "steps": fit.steps,
            "epochs": fit.epochs,
            "steps_per_epoch": fit.steps_per_epoch,
            "processes": engine.accelerator.num_processes,
        },
        "binary": extra,
        **results,
        "breasts": {name: len(rows) for name, rows in splits.items()},
    }


def save_bundle(cfg: MammoMambaConfig, model: MammoMamba, run: RunDir, counts: dict, records: list[dict]) -> None:
    """``best/`` as a bundle whose card holds the breasts per split and the AUC (with its CI) of each split."""
    card = ModelCardInfo.from_run(
        run.path,
        title=f"mvmlm dual-stream classifier ({'+'.join(model.stream_names)}, {cfg.model.backbone})",
        predicts="From a breast's CC and MLO views (whole images and lesion crops), benign vs malignant.",
        counts=counts,
        metrics={f"{r['split']} AUC": format_ci(r["auc"], r.get("auc_low"), r.get("auc_high")) for r in records},
    )
    try:
        preprocessing = preprocessing_of(cfg.data.table)
    except BundleError as exc:  # a cache made without `mvmlm preprocess`: the run's results stand, best/ loads as is
        log.warning("best/ is saved without the bundle files (mvmlm.load_model, predict): %s", exc)
        return
    config = bundle_config(config_to_dict(cfg), {"pathology": list(CLASS_NAMES)}, preprocessing, card)
    DualStreamBundle(model, config).save_pretrained(run.file(BEST_DIR))


def main(argv: list[str] | None = None) -> dict:
    """``mvmlm dual-stream``: train and evaluate the Mammo-Mamba dual-stream model; the metrics (metrics.json)."""
    cfg = COMMAND.parse(argv)
    _check(cfg)
    engine = Engine(cfg.train, cfg.optim, cfg.out, hparams=config_to_dict(cfg), name="dual-stream")
    run = RunDir.create(cfg.out, cfg, main_process=engine.is_main_process, resume=cfg.train.resume)
    try:
        metrics = train(cfg, engine, run)
    finally:
        engine.end()
    if engine.is_main_process:
        run.write_metrics(metrics)
    return metrics
