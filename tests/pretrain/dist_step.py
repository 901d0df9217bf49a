"""The first optimizer step of a pretraining run on the engine; writes its loss and the synchronised gradients.

Run under ``accelerate launch --num_processes N tests/pretrain/dist_step.py RESULT_DIR [pretrain args]`` or call
:func:`first_step_gradients` in-process; the tests compare the two.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def first_step_gradients(argv: list[str]) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss of the first optimizer step of the run ``argv`` describes and the gradients its backward leaves, taken
    inside :meth:`Engine.fit` (before clipping and the update)."""
    from mvmlm.training import Engine
    from pretrain import COMMAND
    from pretrain.train import setup

    cfg = COMMAND.parse(
        [*argv, "train.max_steps=1", "train.trackers=[]", "train.progress=false", "eval.train_subset=0"]
    )
    engine = Engine(cfg.train, cfg.optim, cfg.out)
    job = setup(cfg, engine)
    seen: dict = {}

    def backward(engine: Engine, model, micro_batches: list[dict], step: int) -> dict[str, float]:
        record = job.step(engine, model, micro_batches, step)
        seen["loss"] = record["loss"]
        seen["grads"] = {
            name: p.grad.detach().clone() for name, p in job.model.named_parameters() if p.grad is not None
        }
        return record

    try:
        engine.fit(job.model, job.train_loader, backward=backward)
    finally:
        engine.end()
    return seen["loss"], seen["grads"]


if __name__ == "__main__":
    from accelerate import PartialState
    from safetensors.torch import save_file

    result = Path(sys.argv[1])
    loss, grads = first_step_gradients(sys.argv[2:])
    if PartialState().is_main_process:
        save_file(grads, str(result / "grads.safetensors"))
        (result / "loss.json").write_text(json.dumps({"loss": loss}))
