"""MV-MLM pretraining on the one engine: ``mvmlm pretrain --config configs/pretrain/mvclip_resnet34.yaml``,
``python -m pretrain ...`` or ``accelerate launch -m pretrain ...``.

The model is an MV-CLIP, the step is the contrastive accumulation of :mod:`pretrain.step` (negatives are all breasts
of all processes and micro-batches of an optimizer step), the evaluation is image<->report retrieval
(:mod:`pretrain.evaluate`); :class:`mvmlm.training.Engine` does the rest. The run directory ``out`` holds
``config.yaml``, ``provenance.json``, ``log.txt``, ``train_log.jsonl`` (one line per step), ``val_log.jsonl`` (one
line per validation), ``metrics.json`` (what :func:`main` returns: losses, validations, retrieval before and after
training), ``tracking/`` (trackers), ``checkpoints/step_*`` (full training state, the newest
``train.keep_checkpoints``) and ``model/``, a bundle (``model.safetensors`` + ``config.yaml``, loadable with
``MVCLIP.load`` / ``load_image_tower``, plus ``config.json``, ``manifest.json`` and a model card:
``mvmlm.load_model``). ``train.resume=latest`` continues from the newest checkpoint at the same place inside the
epoch, with the same following batches and losses.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from mvmlm.bundle import ModelCardInfo, bundle_config, preprocessing_of
from mvmlm.config import ConfigError, config_to_dict
from mvmlm.data.device_augment import device_augment_for
from mvmlm.losses import MultiViewClipLoss
from mvmlm.models.mvclip import MVCLIP, MVCLIPBundle
from mvmlm.models.text_encoders import FrozenTextEncoder, TextFeatureCache
from mvmlm.rundir import RunDir
from mvmlm.training import Engine, FitResult
from pretrain.config import PretrainConfig
from pretrain.data import PretrainDataset, device_hook, load_breasts, make_loader, read_reports
from pretrain.evaluate import Evaluator
from pretrain.step import ContrastiveStep

__all__ = [
    "DeviceTextEncoder",
    "Pretraining",
    "global_batch",
    "setup",
    "clamp_logit_scale",
    "check_image_size",
    "pretrain",
    "main",
]

log = logging.getLogger(__name__)

BEFORE_FILE = "before.json"  # retrieval before training, written by the first invocation of a run

MODEL_DIR = "model"


class DeviceTextEncoder(FrozenTextEncoder):
    """The frozen text encoder, encoding on ``device`` by default (so filling the text cache uses the GPU)."""

    def __init__(self, *args, device: torch.device | str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.device = device

    def encode(
        self, texts: Sequence[str], device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return super().encode(texts, device or self.device)


@dataclass
class Pretraining:
    """What :meth:`Engine.fit` gets for a pretraining run, built by :func:`setup`."""

    model: MVCLIP  # bare; the engine prepares it
    train_loader: DataLoader  # not prepared; the engine prepares it
    train_breasts: int
    step: ContrastiveStep  # the engine's backward
    evaluator: Evaluator  # retrieval on the prepared evaluation loaders
    on_device: Callable[[dict], dict] | None = None  # the engine's batch hook (device augmentation)


def _text_cache(cfg: PretrainConfig, engine: Engine, model: MVCLIP, texts: list[str]) -> TextFeatureCache:
    """Open the text feature cache and encode the reports it lacks (main process first, the others then read)."""
    root = Path(cfg.data.text_cache or Path(cfg.out) / "text_cache")
    with engine.accelerator.main_process_first():
        cache = TextFeatureCache(root, model.text_encoder)
        encoded = cache.ensure(texts)
    if engine.is_main_process:
        log.info("text cache %s: %d unique reports, %d encoded now", cache.directory, len(set(texts)), encoded)
    return cache


def global_batch(cfg: PretrainConfig, engine: Engine) -> int:
    """Breasts per optimizer step over all processes and micro-batches (the contrastive negatives)."""
    return cfg.data.batch_size * cfg.train.accum_steps * engine.accelerator.num_processes


def setup(cfg: PretrainConfig, engine: Engine) -> Pretraining:
    """Breasts and reports of the table's train and val splits, the MV-CLIP, its step and its evaluator."""
    d, acc = cfg.data, engine.accelerator
    reports = read_reports(d.corpus)
    train_rows = load_breasts(d.table, d.train_split, reports)
    val_rows = load_breasts(d.table, d.val_split, reports)
    seed = cfg.train.seed
    device = device_augment_for(d, engine.device)
    augment = d.augment if d.augment.enabled else None
    train_set = PretrainDataset(train_rows, seed, train=True, augment=augment, device=device)
    eval_sets = {"val": PretrainDataset(val_rows, seed, train=False)} if len(val_rows) else {}
    if not len(val_rows):
        log.warning("no breasts in split %r of %s: validation is skipped", d.val_split, d.table)
    if cfg.eval.train_subset:
        eval_sets["train"] = PretrainDataset(train_rows.head(cfg.eval.train_subset), seed, train=False)

    text = cfg.model.text
    encoder = DeviceTextEncoder(text.model, text.revision, text.max_length, text.dtype, device=engine.device)
    model = MVCLIP(cfg.model, text_encoder=encoder)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    texts = sorted({x for ds in (train_set, *eval_sets.values()) for x in ds.texts()})
    cache = _text_cache(cfg, engine, model, texts) if d.cached_text else None
    live_text = None if d.cached_text else encoder

    loader_args = {
        "seed": seed,
        "num_workers": d.num_workers,
        "text_cache": cache,
        "pin_memory": acc.device.type == "cuda",
    }
    train_loader = make_loader(train_set, d.batch_size, train=True, **loader_args)
    eval_batch = d.eval_batch_size or d.batch_size
    eval_loaders = {
        name: engine.prepare(make_loader(ds, eval_batch, train=False, **loader_args)) for name, ds in eval_sets.items()
    }
    loss_args = (cfg.loss.image_image_weight, cfg.loss.multi_positive)
    step = ContrastiveStep(MultiViewClipLoss(*loss_args, acc.process_index, acc.num_processes), live_text)
    evaluator = Evaluator(
        acc,
        eval_loaders,
        MultiViewClipLoss(*loss_args),
        chunk=global_batch(cfg, engine),
        ks=list(cfg.eval.ks),
        text_encoder=live_text,
    )
    return Pretraining(model, train_loader, len(train_set), step, evaluator, device_hook(device) if device else None)


def clamp_logit_scale(model: nn.Module, record: dict) -> None:
    """After each optimizer step, as CLIP: the temperature may not go below ``1 / logit_scale_max``."""
    with torch.no_grad():
        model.logit_scale.clamp_(0.0, math.log(model.config.logit_scale_max))
    record["logit_scale"] = float(model.logit_scale.detach().exp())


def _log_eval(engine: Engine, step: int, when: str, results: dict[str, dict[str, float]]) -> None:
    names = {"val": "val", "train": "train_subset"}  # train/* in the trackers are the training steps' values
    engine.accelerator.log(
        {f"{names[split]}/{k}": v for split, values in results.items() for k, v in values.items()}, step=step
    )
    for split, values in results.items():
        shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k == "loss" or k.endswith(("R@1", "R@5")))
        log.info("%s training, step %d, %s: %s", when, step, split, shown)


def _after(job: Pretraining, fit: FitResult, model: nn.Module) -> dict[str, dict[str, float]]:
    """Retrieval of the weights training ends with; ``val`` is the engine's evaluation of them when it made one."""
    step = fit.best["step"] if fit.best["step"] is not None else fit.steps  # the best weights are restored
    record = next((r for r in fit.history if r["step"] == step), {})
    after = {"val": {k.removeprefix("val/"): v for k, v in record.items() if k.startswith("val/")}} if record else {}
    return after | job.evaluator.splits(model, tuple(name for name in ("val", "train") if name not in after))


def save_model(cfg: PretrainConfig, job: Pretraining, results: dict, preprocessing: dict, run: RunDir) -> None:
    """``<out>/model``: the MV-CLIP as a bundle, its card with the breasts it saw and its retrieval after training."""
    after = results["after"].get("val", {})
    card = ModelCardInfo.from_run(
        run.path,
        title="MV-CLIP (mvmlm pretraining)",
        predicts="Embeds the CC and MLO views of a breast (and reports) into one space; use it to embed images.",
        counts={
            "train": job.train_breasts,
            **{k: len(v.dataset) for k, v in job.evaluator.loaders.items() if k == "val"},
        },
        metrics={f"val/{k}": f"{v:.3f}" for k, v in after.items() if k == "loss" or "R@" in k},
    )
    config = bundle_config(config_to_dict(cfg.model), {}, preprocessing, card, step=results["steps"])
    MVCLIPBundle(job.model, config).save_pretrained(run.file(MODEL_DIR))


def check_image_size(cfg: PretrainConfig, preprocessing: dict) -> None:
    """The model's input size must be the cache's image size (pretraining reads the cached images as they are)."""
    cached = [preprocessing["height"], preprocessing["width"]]
    if list(cfg.model.image.image_size) != cached:
        raise ConfigError(
            f"key 'model.image.image_size': {list(cfg.model.image.image_size)}, but the images of data.table="
            f"{cfg.data.table} are cached at {cached} (height, width); set "
            f"model.image.image_size=[{cached[0]},{cached[1]}] or preprocess at that size"
        )


def pretrain(cfg: PretrainConfig, engine: Engine, run: RunDir, evaluate_before: bool = True) -> dict:
    """Train, evaluate before (``evaluate_before``) and after, save ``<out>/model``; returns the results dict."""
    preprocessing = preprocessing_of(cfg.data.table)  # before training: a table without one fails at once
    check_image_size(cfg, preprocessing)
    job = setup(cfg, engine)
    results: dict = {"global_batch": global_batch(cfg, engine)}
    if evaluate_before:
        results["before"] = job.evaluator.splits(job.model.to(engine.device))
        _log_eval(engine, 0, "before", results["before"])
        if engine.is_main_process:  # kept for a resumed run's metrics.json
            run.write_json(BEFORE_FILE, results["before"])
    elif run.file(BEFORE_FILE).is_file():
        results["before"] = json.loads(run.file(BEFORE_FILE).read_text())
    fit = engine.fit(
        job.model,
        job.train_loader,
        backward=job.step,
        evaluate=job.evaluator if "val" in job.evaluator.loaders else None,
        after_step=clamp_logit_scale,
        layout={"train_breasts": job.train_breasts},
        on_device=job.on_device,
    )
    results |= {
        "resumed_from_step": fit.resumed_from_step,
        "steps": fit.steps,
        "steps_per_epoch": fit.steps_per_epoch,
        "losses": fit.losses,
        "val_history": fit.history,
        "best": fit.best,
    }
    results["after"] = _after(job, fit, engine.model)
    _log_eval(engine, fit.steps, "after", results["after"])
    engine.accelerator.wait_for_everyone()
    if engine.is_main_process:
        save_model(cfg, job, results, preprocessing, run)
    results["model_dir"] = str(run.file(MODEL_DIR))
    results["trackers"] = [tracker.name for tracker in engine.accelerator.trackers]
    return results


def main(argv: list[str] | None = None) -> dict:
    """``mvmlm pretrain --config FILE [--resume latest] [key=value ...]``; returns what ``metrics.json`` holds."""
    from pretrain import COMMAND

    cfg = COMMAND.parse(argv)
    # Refuses a second run into ``out`` (without train.resume=latest) before anything there is touched.
    engine = Engine(cfg.train, cfg.optim, cfg.out, hparams=config_to_dict(cfg), name="pretrain")
    fresh = engine.resume_from is None
    try:
        run = RunDir.create(cfg.out, cfg, main_process=engine.is_main_process, resume=cfg.train.resume)
        results = pretrain(cfg, engine, run, evaluate_before=fresh)
        if engine.is_main_process:
            run.write_metrics(results)
    finally:
        engine.end()
    return results
