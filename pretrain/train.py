"""MV-MLM pretraining with Accelerate: ``python -m pretrain --config configs/pretrain/mvclip_resnet34.yaml``,
``accelerate launch -m pretrain --config ...`` or ``mvmlm pretrain --config ...``.

Per optimizer step every process takes ``train.accum_steps`` micro-batches of ``data.batch_size`` breasts; the
contrastive negatives are all breasts of all processes and micro-batches (:mod:`pretrain.step`). The run
directory ``out`` holds ``config.yaml``, ``provenance.json``, ``log.txt``, ``train_log.jsonl`` (one line per
step), ``metrics.json`` (validation history, retrieval before/after), ``tensorboard/``, ``checkpoints/step_*``
(full training state, the newest ``train.keep_checkpoints``) and ``model/`` (``model.safetensors`` +
``config.yaml``, loadable with ``MVCLIP.load`` / ``load_image_tower``). ``resume=latest`` continues from the
newest checkpoint at the same place inside the epoch, with the same following batches and losses.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mvmlm.config import config_to_dict, load_config
from mvmlm.losses import MultiViewClipLoss
from mvmlm.models.mvclip import MVCLIP
from mvmlm.models.text_encoders import FrozenTextEncoder, TextFeatureCache
from mvmlm.rundir import RunDir
from mvmlm.training import (
    TrainState,
    flat_hparams,
    param_groups,
    resolve_resume,
    save_checkpoint,
    tracker_name,
    warmup_cosine_schedule,
)
from pretrain.config import PretrainConfig
from pretrain.data import EpochSampler, PretrainDataset, load_breasts, make_loader, read_reports
from pretrain.evaluate import evaluate
from pretrain.step import contrastive_backward

__all__ = ["DeviceTextEncoder", "Session", "build_session", "train", "main"]

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"


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
class Session:
    """Everything a training run works with, after ``accelerator.prepare``."""

    cfg: PretrainConfig
    accelerator: Accelerator
    run: RunDir
    model: torch.nn.Module  # prepared (DDP-wrapped when distributed)
    core: MVCLIP  # the bare model
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    state: TrainState
    train_set: PretrainDataset
    train_sampler: EpochSampler
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    loss_fn: MultiViewClipLoss
    text_encoder: FrozenTextEncoder | None  # live text encoding (None: features come from the cache)
    steps_per_epoch: int
    total_steps: int

    @property
    def global_batch(self) -> int:
        return self.cfg.data.batch_size * self.cfg.train.accum_steps * self.accelerator.num_processes


def _text_cache(cfg: PretrainConfig, accelerator: Accelerator, model: MVCLIP, texts: list[str]) -> TextFeatureCache:
    """Open the text feature cache and encode the reports it lacks (main process first, the others then read)."""
    root = Path(cfg.data.text_cache or Path(cfg.out) / "text_cache")
    with accelerator.main_process_first():
        cache = TextFeatureCache(root, model.text_encoder)
        encoded = cache.ensure(texts)
    if accelerator.is_main_process:
        log.info("text cache %s: %d unique reports, %d encoded now", cache.directory, len(set(texts)), encoded)
    return cache


def build_session(cfg: PretrainConfig, accelerator: Accelerator, run: RunDir) -> Session:
    """Data, model, optimizer, schedule and loss, prepared by ``accelerator``; restores a checkpoint if asked."""
    d, t = cfg.data, cfg.train
    set_seed(t.seed)
    reports = read_reports(d.corpus)
    train_rows = load_breasts(d.table, d.train_split, reports)
    val_rows = load_breasts(d.table, d.val_split, reports)
    train_set = PretrainDataset(train_rows, t.seed, train=True, augment=d.augment_params if d.augment else None)
    eval_sets = {"val": PretrainDataset(val_rows, t.seed, train=False)} if len(val_rows) else {}
    if not len(val_rows):
        log.warning("no breasts in split %r of %s: validation is skipped", d.val_split, d.table)
    if cfg.eval.train_subset:
        eval_sets["train"] = PretrainDataset(train_rows.head(cfg.eval.train_subset), t.seed, train=False)

    text = cfg.model.text
    encoder = DeviceTextEncoder(text.model, text.revision, text.max_length, text.dtype, device=accelerator.device)
    core = MVCLIP(cfg.model, text_encoder=encoder)
    if t.grad_checkpointing:
        core.set_grad_checkpointing(True)
    texts = sorted({x for ds in (train_set, *eval_sets.values()) for x in ds.texts()})
    cache = _text_cache(cfg, accelerator, core, texts) if d.cached_text else None

    loader_args = dict(seed=t.seed, num_workers=d.num_workers, text_cache=cache)
    train_loader, train_sampler = make_loader(train_set, d.batch_size, train=True, **loader_args)
    eval_loaders = {k: make_loader(ds, cfg.eval.batch_size or d.batch_size, train=False, **loader_args)[0]
                    for k, ds in eval_sets.items()}  # fmt: skip
    optimizer = torch.optim.AdamW(param_groups(core, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)  # fmt: skip
    model, optimizer, train_loader, *prepared = accelerator.prepare(
        core, optimizer, train_loader, *eval_loaders.values()
    )
    steps_per_epoch = len(train_loader) // t.accum_steps
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(train_loader)} batches per process per epoch are fewer than accum_steps={t.accum_steps}"
        )
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    # Not prepared: stepped by hand once per optimizer step (a prepared one steps num_processes times).
    scheduler = warmup_cosine_schedule(optimizer.optimizer, cfg.optim.warmup_steps, total_steps, cfg.optim.min_lr_ratio)
    layout = {"num_processes": accelerator.num_processes, "batch_size": d.batch_size, "accum_steps": t.accum_steps,
              "train_breasts": len(train_set)}  # fmt: skip
    state = TrainState(layout=layout)
    accelerator.register_for_checkpointing(scheduler, state)
    session = Session(
        cfg, accelerator, run, model, core, optimizer, scheduler, state, train_set, train_sampler, train_loader,
        dict(zip(eval_loaders, prepared, strict=True)),
        MultiViewClipLoss(t.image_image_weight, t.multi_positive, accelerator.process_index, accelerator.num_processes),
        None if d.cached_text else encoder, steps_per_epoch, total_steps,
    )  # fmt: skip
    checkpoint = resolve_resume(cfg.resume, run.file("checkpoints"))
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        log.info("resumed from %s at step %d", checkpoint, state.step)
        if accelerator.is_main_process:
            _truncate_log(run.file(LOG_FILE), state.step)
    return session


def _truncate_log(path: Path, step: int) -> None:
    """Drop the per-step records after ``step`` (written by a run killed after its last checkpoint)."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(f"{line}\n" for line in lines))


def _optimizer_step(s: Session, micro_batches: list[dict]) -> dict[str, float]:
    step = s.state.step + 1  # the step being computed, numbered as in train_log.jsonl
    record = contrastive_backward(s.accelerator, s.model, s.loss_fn, micro_batches, step, s.text_encoder)
    if s.cfg.optim.grad_clip > 0:
        record["grad_norm"] = float(s.accelerator.clip_grad_norm_(s.model.parameters(), s.cfg.optim.grad_clip))
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():  # as CLIP: the temperature may not go below 1 / logit_scale_max
        s.core.logit_scale.clamp_(0.0, math.log(s.cfg.model.logit_scale_max))
    record["lr"] = s.scheduler.get_last_lr()[0]
    record["logit_scale"] = float(s.core.logit_scale.detach().exp())
    return record


def _evaluate_all(s: Session, names: tuple[str, ...] = ("val", "train")) -> dict[str, dict[str, float]]:
    chunk = s.global_batch
    single = MultiViewClipLoss(s.cfg.train.image_image_weight, s.cfg.train.multi_positive)
    return {name: evaluate(s.accelerator, s.model, s.eval_loaders[name], single, chunk, s.cfg.eval.ks, s.text_encoder)
            for name in names if name in s.eval_loaders}  # fmt: skip


def _log_eval(s: Session, step: int, results: dict[str, dict[str, float]]) -> None:
    s.accelerator.log({f"{split}/{k}": v for split, values in results.items() for k, v in values.items()}, step=step)
    for split, values in results.items():
        shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k == "loss" or k.endswith(("R@1", "R@5")))
        log.info("step %d %s: %s", step, split, shown)


def train(s: Session) -> dict:
    """Run optimizer steps up to ``total_steps``; returns the losses of this invocation and the evaluations."""
    acc, cfg, k = s.accelerator, s.cfg, s.cfg.train.accum_steps
    main_process = acc.is_main_process
    results: dict = {"resumed_from_step": s.state.step, "global_batch": s.global_batch, "steps": s.total_steps,
                     "steps_per_epoch": s.steps_per_epoch, "losses": [], "val_history": []}  # fmt: skip
    if s.state.step == 0:
        results["before"] = _evaluate_all(s)
        _log_eval(s, 0, results["before"])
    bar = tqdm(total=s.total_steps, initial=s.state.step, desc="pretrain", disable=not acc.is_local_main_process)
    log_file = s.run.file(LOG_FILE).open("a") if main_process else None
    try:  # close the bar and the log also when a step raises (NaN guard), so nothing prints after the run
        while s.state.step < s.total_steps:
            epoch, done = divmod(s.state.step, s.steps_per_epoch)
            for obj in (s.train_set, s.train_sampler, s.train_loader):
                obj.set_epoch(epoch)
            loader = acc.skip_first_batches(s.train_loader, done * k) if done else s.train_loader
            batches = iter(loader)
            for _ in range(done, s.steps_per_epoch):
                record = _optimizer_step(s, [next(batches) for _ in range(k)])
                s.state.step += 1
                step = s.state.step
                record = {"step": step, "epoch": epoch, **record}
                results["losses"].append(record["loss"])
                if log_file is not None:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                if step % cfg.train.log_every == 0 or step == s.total_steps:
                    acc.log({f"train/{key}": v for key, v in record.items() if key not in ("step", "epoch")}, step=step)
                bar.update()
                bar.set_postfix(loss=f"{record['loss']:.4f}", epoch=epoch)
                if step >= s.total_steps:
                    break
                if cfg.eval.every and step % cfg.eval.every == 0:
                    values = _evaluate_all(s, ("val",))
                    results["val_history"].append({"step": step, **values.get("val", {})})
                    _log_eval(s, step, values)
                if cfg.train.save_every and step % cfg.train.save_every == 0:
                    save_checkpoint(acc, s.run.file("checkpoints"), step, cfg.train.keep_checkpoints)
            else:
                for _ in batches:  # the < accum_steps left-over batches: finish the pass so Accelerate closes it
                    pass
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    save_checkpoint(acc, s.run.file("checkpoints"), s.state.step, cfg.train.keep_checkpoints)
    results["after"] = _evaluate_all(s)
    _log_eval(s, s.state.step, results["after"])
    acc.wait_for_everyone()
    if main_process:
        s.core.save(s.run.file("model"), metadata={"step": str(s.state.step)})
    results["model_dir"] = str(s.run.file("model"))
    return results


def make_accelerator(cfg: PretrainConfig, run_path: Path) -> Accelerator:
    """The Accelerator of a run: mixed precision, CPU switch, tracker (TensorBoard if installed)."""
    project = ProjectConfiguration(project_dir=str(run_path), logging_dir=str(run_path / "tensorboard"))
    tracker = tracker_name(cfg.train.tracker)
    return Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=cfg.train.cpu, log_with=tracker,
                       project_config=project)  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """``python -m pretrain --config FILE [--resume latest] [key=value ...]``; returns the results dict."""
    parser = argparse.ArgumentParser(prog="pretrain", description=__doc__)
    parser.add_argument("--resume", help="'latest' or a checkpoint folder (same as resume=...)")
    cfg = load_config(PretrainConfig, argv, parser=parser)
    if cfg.train.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"train.mixed_precision must be no, fp16 or bf16, got {cfg.train.mixed_precision!r}")
    accelerator = make_accelerator(cfg, Path(cfg.out))
    run = RunDir.create(cfg.out, cfg, main_process=accelerator.is_main_process)
    accelerator.init_trackers("pretrain", config=flat_hparams(config_to_dict(cfg)))  # no-op without a tracker
    try:
        session = build_session(cfg, accelerator, run)
        results = train(session)
        results["tracker"] = [t.name for t in accelerator.trackers]
        if accelerator.is_main_process:
            run.write_metrics(results)
    finally:
        accelerator.end_training()
    return results
