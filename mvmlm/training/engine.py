"""THE training loop of mvmlm, on Accelerate. A trainer is a model, a loss (or backward) function and an evaluation
function handed to :meth:`Engine.fit`; everything else lives here once:

- Accelerate preparation (one CPU process to many GPUs), mixed precision, gradient accumulation over
  ``train.accum_steps`` micro-batches (DDP sync on the last one only), clipping, the AdamW groups and schedule;
- a non-finite loss guard naming the step and the ids of the samples, raised before any bad update;
- validation every epoch or every ``train.eval_every`` steps, the best weights by a named metric
  (``train.select``) kept in ``<workdir>/best/model.safetensors``, early stopping, ReduceLROnPlateau on that metric;
- the full training state saved every epoch or ``train.save_every`` steps into ``<workdir>/checkpoints/step_*``
  and restored with ``train.resume=latest|PATH`` at the same place inside the epoch (same following batches); a new
  run into a folder holding a run is refused;
- main-process-only writes: ``train_log.jsonl`` (one line per optimizer step), ``val_log.jsonl`` (one line per
  evaluation), a progress bar, and any experiment tracker Accelerate supports.

A minimal trainer::

    engine = Engine(cfg.train, cfg.optim, run.path, hparams=config_to_dict(cfg))
    model = Classifier(...)
    result = engine.fit(model, train_loader, loss=classification_loss, evaluate=lambda m: validate(engine, m, val),
                        select="val/auc")
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from mvmlm.checkpoint import WEIGHTS_NAME, load_weights
from mvmlm.config import ConfigError, OptimConfig, TrainConfig
from mvmlm.errors import InputError
from mvmlm.rundir import confirm_runs
from mvmlm.training.checkpoints import resolve_resume, saved_train_state
from mvmlm.training.loop import BEST_DIR, CHECKPOINTS_DIR, TRAIN_LOG, Loop, logged_losses, truncate_log
from mvmlm.training.optim import build_optimizer, build_scheduler
from mvmlm.training.state import Best, TrainState, check_layout
from mvmlm.training.trackers import flat_hparams, tracker_names

__all__ = ["Loss", "FitResult", "Engine", "check_train_config"]

log = logging.getLogger(__name__)

PRECISIONS, DEVICES, MODES = ("no", "fp16", "bf16"), ("auto", "cpu"), ("max", "min")


@dataclass
class Loss:
    """What a loss function returns for one micro-batch: the loss, named parts to log, and the ids of its samples
    (named by the non-finite guard)."""

    value: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)
    ids: Sequence[str] = ()


LossFn = Callable[[nn.Module, dict], Loss]
#: ``backward(engine, model, micro_batches, step) -> record``: accumulates ``.grad`` itself with the prepared (e.g.
#: DDP-wrapped) ``model`` (pretraining's contrastive step)
BackwardFn = Callable[["Engine", nn.Module, list[dict], int], dict[str, float]]
#: ``evaluate(model) -> {"val/auc": ..., ...}``: flat metrics of the current weights
EvaluateFn = Callable[[nn.Module], dict[str, float]]


@dataclass
class FitResult:
    """What :meth:`Engine.fit` did."""

    steps: int  # optimizer steps done in total
    epochs: int  # epochs completed
    steps_per_epoch: int
    resumed_from_step: int
    losses: list[float]  # per optimizer step of the whole run (earlier invocations' from train_log.jsonl)
    history: list[dict[str, Any]]  # one record per evaluation (all invocations)
    best: dict[str, Any]  # metric, score, epoch, step (None where nothing was selected)
    stopped_early: bool


def check_train_config(train: TrainConfig) -> None:
    """One-line errors for values the loop cannot use."""
    problems = {
        "mixed_precision": (train.mixed_precision not in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
        "device": (train.device not in DEVICES, f"one of {', '.join(DEVICES)}"),
        "select_mode": (train.select_mode not in MODES, "max or min"),
        "epochs": (train.epochs < 1 and train.max_steps < 1, ">= 1 (or max_steps >= 1)"),
        "accum_steps": (train.accum_steps < 1, ">= 1"),
    }
    for key, (bad, expected) in problems.items():
        if bad:
            raise ConfigError(f"key 'train.{key}': must be {expected}, got {getattr(train, key)!r}")


def _release_other_accelerator_settings(train: TrainConfig) -> None:
    """Let one process run trainers with other precision / device settings one after another (the demo, a test
    session, a notebook): Accelerate keeps one process-wide state and refuses a second Accelerator with other
    settings. Only that state is dropped; the distributed set-up (PartialState) stays."""
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and (
        shared.get("_mixed_precision") != train.mixed_precision or shared.get("_cpu") != (train.device == "cpu")
    ):
        AcceleratorState._reset_state()


class Engine:
    """The training loop for one model in ``workdir`` (a run directory, or a unit's folder inside a sweep).

    Args:
        train, optim: the core's shared configs.
        workdir: where the logs, ``best/`` and ``checkpoints/`` go (the main process writes).
        hparams: logged to the trackers (a flat or nested dict of the command's config).
        name: progress-bar and tracker project name.
    """

    def __init__(
        self,
        train: TrainConfig,
        optim: OptimConfig,
        workdir: str | Path,
        *,
        hparams: dict | None = None,
        name: str = "train",
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import (
            DataLoaderConfiguration,
            DistributedDataParallelKwargs,
            ProjectConfiguration,
            set_seed,
        )

        check_train_config(train)
        self.train, self.optim, self.workdir, self.name = train, optim, Path(workdir), name
        self.resume_from = resolve_resume(train.resume, self.file(CHECKPOINTS_DIR))  # refuses to overwrite a run
        self.model: nn.Module | None = None  # the prepared (e.g. DDP-wrapped) model, once fit has prepared it
        set_seed(train.seed)
        _release_other_accelerator_settings(train)
        trackers = tracker_names(list(train.trackers), self.workdir / "tracking")
        self.accelerator = Accelerator(
            mixed_precision=train.mixed_precision,
            cpu=train.device == "cpu",
            log_with=trackers or None,
            project_config=ProjectConfiguration(
                project_dir=str(self.workdir), logging_dir=str(self.workdir / "tracking")
            ),
            dataloader_config=DataLoaderConfiguration(
                use_seedable_sampler=True, data_seed=train.seed, non_blocking=True
            ),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=train.find_unused_parameters)],
        )
        # trackers of a continued run start once its checkpoint is accepted (fit), so a refused resume writes nothing
        self._trackers = (name, flat_hparams(hparams or {})) if trackers else None
        if self.resume_from is None:
            self._start_trackers()

    # ------------------------------------------------------------------------------------------------ helpers
    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def file(self, name: str) -> Path:
        return self.workdir / name

    def prepare(self, *objects: Any) -> Any:
        """``accelerator.prepare`` (e.g. evaluation loaders, so each process reads its share)."""
        return self.accelerator.prepare(*objects)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(model)

    def _start_trackers(self) -> None:
        if self._trackers is not None:
            self.accelerator.init_trackers(*self._trackers)
            self._trackers = None

    def end(self) -> None:
        """Close the trackers and release the prepared objects (call once the run is done)."""
        self.accelerator.end_training()
        self.accelerator.free_memory()

    # ------------------------------------------------------------------------------------------------ fit
    def fit(
        self,
        model: nn.Module,
        train_loader: Any,
        *,
        loss: LossFn | None = None,
        backward: BackwardFn | None = None,
        evaluate: EvaluateFn | None = None,
        select: str = "",
        mode: str = "max",
        after_step: Callable[[nn.Module, dict[str, Any]], None] | None = None,
        layout: dict[str, Any] | None = None,
        restore_best: bool = True,
        discard_checkpoints: bool = False,
        on_device: Callable[[dict], dict] | None = None,
    ) -> FitResult:
        """Train ``model`` on ``train_loader`` (both prepared here) up to ``train.epochs`` / ``train.max_steps``.

        Args:
            loss: per micro-batch loss; the engine runs the backward passes.
            backward: instead of ``loss``, a function that accumulates the gradients of a whole optimizer step.
            evaluate: metrics of the current weights; called every epoch (or ``train.eval_every`` steps).
            select: the metric of ``evaluate`` that picks the best weights (``train.select`` overrides it with
                ``train.select_mode``); '' keeps the final weights.
            after_step: called after each optimizer step with the unwrapped model and the step's record (which it
                may extend), e.g. to clamp a temperature.
            layout: settings that must not change across a resume (process count, batch size and accumulation are
                always checked).
            restore_best: load the best weights into ``model`` at the end (when a best exists).
            discard_checkpoints: delete the training states once finished (a sweep keeps only its results).
            on_device: applied to each training micro-batch once it is on the device, before ``loss`` / ``backward``
                (device augmentation: :meth:`mvmlm.data.device_augment.DeviceAugment.images`).
        """
        if (loss is None) == (backward is None):
            raise TypeError("give exactly one of loss= and backward=")
        t, acc = self.train, self.accelerator
        select, mode = (t.select, t.select_mode) if t.select else (select, mode)
        optimizer = build_optimizer(model, self.optim)
        model, optimizer, train_loader = acc.prepare(model, optimizer, train_loader)
        self.model = model
        k = t.accum_steps
        steps_per_epoch = len(train_loader) // k
        if steps_per_epoch == 0:
            raise InputError(
                f"{len(train_loader)} training batch(es) per process per epoch are fewer than "
                f"train.accum_steps={k}; use more data, a smaller batch or fewer accumulation steps"
            )
        total = t.max_steps or t.epochs * steps_per_epoch
        scheduler = build_scheduler(optimizer.optimizer, self.optim, total, mode)
        plateau = isinstance(scheduler, ReduceLROnPlateau)
        batch_size = getattr(train_loader, "total_batch_size", None) or getattr(train_loader, "batch_size", None)
        state = TrainState(
            layout={
                "num_processes": acc.num_processes,
                "batch_size": batch_size,
                "accum_steps": k,
                "batches_per_epoch": len(train_loader),
                "lr_scales": {k: float(v) for k, v in sorted(self.optim.lr_scales.items())},  # the optimizer groups
                **(layout or {}),
            }
        )
        best = Best()
        acc.register_for_checkpointing(scheduler, state, best)
        resume_from = self.resume_from
        if resume_from is not None:  # refuse another layout before the run directory, the trackers or the logs change
            check_layout((saved_train_state(resume_from) or {}).get("layout", state.layout), state.layout)
        self._start_trackers()
        confirm_runs(self.workdir)
        if resume_from is not None:
            acc.load_state(str(resume_from))
            log.info("%s: resumed from %s at step %d", self.name, resume_from, state.step)
        if self.is_main_process:
            self.workdir.mkdir(parents=True, exist_ok=True)
            truncate_log(self.file(TRAIN_LOG), state.step)
        acc.wait_for_everyone()
        loop = Loop(
            self, model, optimizer, scheduler, state, best, loss, backward, evaluate, select, mode, after_step, plateau
        )
        loop.on_device = on_device  # the hook of device augmentation
        resumed_from = state.step
        loop.losses = logged_losses(self.file(TRAIN_LOG)) if resumed_from else []  # the whole run's, not this call's
        loop.run(train_loader, steps_per_epoch, total)
        acc.wait_for_everyone()
        best_file = self.file(f"{BEST_DIR}/{WEIGHTS_NAME}")
        if select and best.step < 0:
            log.warning(
                "%s: no finite %s in %d evaluation(s); the final weights are kept", self.name, select, len(best.history)
            )
        elif select and restore_best:
            self.unwrap(model).load_state_dict(load_weights(best_file.parent))  # copied onto the parameters' device
        if discard_checkpoints and self.is_main_process:
            shutil.rmtree(self.file(CHECKPOINTS_DIR), ignore_errors=True)
        found = select and best.step >= 0
        return FitResult(
            steps=state.step,
            epochs=state.step // steps_per_epoch,
            steps_per_epoch=steps_per_epoch,
            resumed_from_step=resumed_from,
            losses=loop.losses,
            history=list(best.history),
            best={
                "metric": select or None,
                "mode": mode,
                "score": best.score if found else None,
                "epoch": best.epoch if found else None,
                "step": best.step if found else None,
            },
            stopped_early=loop.stopped_early,
        )
