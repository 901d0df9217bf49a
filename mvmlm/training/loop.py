"""The step loop of one :meth:`mvmlm.training.Engine.fit` call: epochs and micro-batches, the optimizer step with
accumulation, clipping and the non-finite guard, evaluation and the best weights, early stop, checkpoints, SIGTERM,
and the run's ``train_log.jsonl`` / ``val_log.jsonl``. :class:`~mvmlm.training.Engine` builds it; trainers never do."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mvmlm.checkpoint import WEIGHTS_NAME, atomic_path
from mvmlm.config import ConfigError
from mvmlm.training.checkpoints import save_checkpoint
from mvmlm.training.guards import check_finite
from mvmlm.training.signals import StopSignals, TrainingStopped

__all__ = ["TRAIN_LOG", "VAL_LOG", "BEST_DIR", "CHECKPOINTS_DIR", "Loop", "logged_losses", "truncate_log"]

log = logging.getLogger("mvmlm.training.engine")  # one logger name for the engine's messages, as users filter them

TRAIN_LOG, VAL_LOG, BEST_DIR, CHECKPOINTS_DIR = "train_log.jsonl", "val_log.jsonl", "best", "checkpoints"


def _set_epoch(loader: Any, epoch: int) -> None:
    """Seed the loader's shuffling (and a dataset's per-epoch randomness) for ``epoch``."""
    for obj in (loader, getattr(loader, "dataset", None), getattr(loader, "sampler", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


class Loop:
    """The state of one :meth:`Engine.fit` call while it runs."""

    def __init__(
        self,
        engine,
        model,
        optimizer,
        scheduler,
        state,
        best,
        loss,
        backward,
        evaluate,
        select,
        mode,
        after_step,
        plateau,
    ) -> None:
        self.engine, self.acc, self.t = engine, engine.accelerator, engine.train
        self.model, self.optimizer, self.scheduler, self.state, self.best = model, optimizer, scheduler, state, best
        self.loss_fn, self.backward_fn, self.evaluate_fn = loss, backward, evaluate
        self.select, self.sign, self.after_step, self.plateau = (
            select,
            1.0 if mode == "max" else -1.0,
            after_step,
            plateau,
        )
        self.losses: list[float] = []
        self.on_device: Callable[[dict], dict] | None = None
        self.stopped_early = False
        self.saved = state.step  # the step of the newest training state on disk (or the resumed one)

    def run(self, loader: Any, steps_per_epoch: int, total: int) -> None:
        engine, acc, t, state = self.engine, self.acc, self.t, self.state
        main = engine.is_main_process
        bar = tqdm(
            total=total,
            initial=state.step,
            desc=engine.name,
            leave=False,
            disable=not (acc.is_local_main_process and t.progress),
        )
        log_file = engine.file(TRAIN_LOG).open("a") if main else None
        stop = StopSignals().install()  # SIGTERM: save at the next step boundary and stop (before the loaders fork)
        if self.select and t.early_stop and self.best.stale >= t.early_stop:
            self.stopped_early = True  # resumed from the state saved when it stopped early: stays stopped
        try:  # close the bar and the log also when a step raises (the NaN guard), so nothing prints after the run
            while state.step < total and not self.stopped_early:
                epoch, done = divmod(state.step, steps_per_epoch)
                _set_epoch(loader, epoch)
                batches = iter(acc.skip_first_batches(loader, done * t.accum_steps) if done else loader)
                self.model.train()
                for _ in range(done, steps_per_epoch):
                    record = {
                        "step": state.step + 1,
                        "epoch": epoch,
                        **self._optimizer_step([next(batches) for _ in range(t.accum_steps)]),
                    }
                    state.step += 1
                    self.losses.append(record["loss"])
                    if log_file is not None:
                        log_file.write(json.dumps(record) + "\n")
                        log_file.flush()
                    if state.step % t.log_every == 0 or state.step == total:
                        acc.log(
                            {f"train/{k}": v for k, v in record.items() if k not in ("step", "epoch")}, step=state.step
                        )
                    bar.update()
                    bar.set_postfix(loss=f"{record['loss']:.4f}", epoch=epoch)
                    epoch_done = state.step - epoch * steps_per_epoch == steps_per_epoch
                    if t.eval_every and state.step % t.eval_every == 0:
                        self._evaluate(state.step / steps_per_epoch)
                    # a state saved at the end of an epoch must hold that epoch's evaluation: saved below
                    if t.save_every and state.step % t.save_every == 0 and not (epoch_done and not t.eval_every):
                        self._save()
                    if not (epoch_done and not t.eval_every):  # else after the epoch's evaluation, below
                        self._stop_if_asked(stop, total)
                    if state.step >= total or self.stopped_early:
                        break
                if state.step - epoch * steps_per_epoch == steps_per_epoch:  # a whole epoch is done
                    for _ in batches:  # left-over micro-batches (< accum_steps): finish the pass for Accelerate
                        pass
                    if not t.eval_every:
                        self._evaluate(epoch + 1)
                    if not t.save_every or (state.step % t.save_every == 0 and not t.eval_every):
                        self._save()
                    self._stop_if_asked(stop, total)
            if not self.stopped_early and (not self.best.history or self.best.history[-1]["step"] != state.step):
                self._evaluate(state.step / steps_per_epoch)  # the final weights are always evaluated
            if self.saved != state.step:
                self._save()  # and saved
        finally:
            stop.restore()
            bar.close()
            if log_file is not None:
                log_file.close()

    def _stop_if_asked(self, stop: StopSignals, total: int) -> None:
        """At a step boundary: when a stop signal came (to any process), save the training state here and stop."""
        acc, step = self.acc, self.state.step
        asked = stop.received is not None
        if acc.num_processes > 1:  # every process must stop at the same step (the save is collective)
            asked = bool(acc.reduce(torch.tensor([float(asked)], device=acc.device), "sum").item())
        if not asked:
            return
        if self.saved != step:
            self._save()
        signum = stop.received or signal.SIGTERM
        message = (
            f"{self.engine.name}: stopped by {signal.Signals(signum).name} at step {step} of {total}; the training "
            f"state is saved in {self.engine.file(CHECKPOINTS_DIR)}/step_{step:08d}; continue with the same command "
            "and --resume latest (train.resume=latest)"
        )
        log.warning(message)
        raise TrainingStopped(signum, message)

    def _save(self) -> None:
        engine = self.engine
        save_checkpoint(
            self.acc, engine.file(CHECKPOINTS_DIR), self.state.step, self.t.keep_checkpoints, self.state.state_dict()
        )
        self.saved = self.state.step

    def _optimizer_step(self, micro_batches: list[dict]) -> dict[str, float]:
        acc, step = self.acc, self.state.step + 1
        if self.on_device is not None:
            micro_batches = [self.on_device(batch) for batch in micro_batches]
        if self.backward_fn is not None:
            record = dict(self.backward_fn(self.engine, self.model, micro_batches, step))
        else:
            record = self._backward(micro_batches, step)
        if self.engine.optim.grad_clip > 0:
            record["grad_norm"] = float(acc.clip_grad_norm_(self.model.parameters(), self.engine.optim.grad_clip))
        self.optimizer.step()
        if not self.plateau:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.after_step is not None:
            self.after_step(self.engine.unwrap(self.model), record)
        return record

    def _backward(self, micro_batches: list[dict], step: int) -> dict[str, float]:
        """Loss / k backward per micro-batch, DDP gradient sync on the last one; mean losses over processes."""
        acc, k = self.acc, len(micro_batches)
        sums: dict[str, Tensor] = {}
        for j, batch in enumerate(micro_batches):
            sync = contextlib.nullcontext() if j == k - 1 else acc.no_sync(self.model)
            with sync:
                out = self.loss_fn(self.model, batch)
                check_finite(acc, out.value, step, [str(i) for i in out.ids])
                acc.backward(out.value / k)
            for name, value in {"loss": out.value, **out.parts}.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float() / k
        names = list(sums)
        values = torch.stack([torch.as_tensor(sums[n], device=acc.device) for n in names])
        if acc.num_processes > 1:
            values = acc.reduce(values, "mean")
        return dict(zip(names, values.tolist(), strict=True))

    def _evaluate(self, epoch: float) -> None:
        if self.evaluate_fn is None:
            return
        engine, best, step = self.engine, self.best, self.state.step
        metrics = dict(self.evaluate_fn(self.model))
        self.model.train()
        record = {"step": step, "epoch": epoch, **metrics}
        if self.select:
            if self.select not in metrics:
                raise ConfigError(
                    f"key 'train.select': {self.select!r} is not a validation metric of this command; "
                    f"known: {', '.join(sorted(metrics))}"
                )
            score = float(metrics[self.select])
            if self.plateau and math.isfinite(score):
                self.scheduler.step(score)
            if math.isfinite(score) and (best.step < 0 or self.sign * score > self.sign * best.score):
                best.score, best.epoch, best.step, best.stale = score, math.ceil(epoch), step, 0
                self._save_best()
            else:
                best.stale += 1
            record["best"] = best.step == step
        best.history.append(record)
        self.acc.log(metrics, step=step)
        if engine.is_main_process:
            engine.file(VAL_LOG).write_text("".join(json.dumps(r) + "\n" for r in best.history))
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
        log.info("%s step %d (epoch %.2f): %s", engine.name, step, epoch, shown)
        if self.select and self.t.early_stop and best.stale >= self.t.early_stop:
            log.info("%s: early stop, no better %s for %d evaluations", engine.name, self.select, best.stale)
            self.stopped_early = True

    def _save_best(self) -> None:
        engine = self.engine
        state_dict = self.acc.get_state_dict(self.model)
        if engine.is_main_process:
            from safetensors.torch import save_file

            tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
            meta = {
                "format": "pt",
                "step": str(self.best.step),
                "epoch": str(self.best.epoch),
                "metric": self.select,
                "score": repr(self.best.score),
            }
            with atomic_path(engine.file(f"{BEST_DIR}/{WEIGHTS_NAME}")) as tmp:
                save_file(tensors, str(tmp), metadata=meta)
        self.acc.wait_for_everyone()


def logged_losses(path: Path) -> list[float]:
    """The per-step losses recorded in ``train_log.jsonl`` (empty where this process cannot see it)."""
    if not path.is_file():
        return []
    return [json.loads(line)["loss"] for line in path.read_text().splitlines() if line]


def truncate_log(path: Path, step: int) -> None:
    """Drop the per-step records after ``step`` (written by a run killed after its last checkpoint)."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(f"{line}\n" for line in lines))
