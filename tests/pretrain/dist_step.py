"""One MV-CLIP forward/backward on the first global batch; writes the loss and the synchronised gradients.

Run under ``accelerate launch --cpu --num_processes N tests/pretrain/dist_step.py RESULT_DIR [pretrain args]`` or
call :func:`first_step_gradients` in-process; the tests compare the two.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def first_step_gradients(argv: list[str]) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss of the first optimizer step of the run ``argv`` describes and the gradients it leaves in the model."""
    from mvmlm.config import load_config
    from mvmlm.rundir import RunDir
    from pretrain.config import PretrainConfig
    from pretrain.step import contrastive_backward
    from pretrain.train import build_session, make_accelerator

    cfg = load_config(PretrainConfig, argv)
    accelerator = make_accelerator(cfg, Path(cfg.out))
    session = build_session(cfg, accelerator, RunDir.create(cfg.out, cfg, main_process=accelerator.is_main_process))
    batches = iter(session.train_loader)
    micro = [next(batches) for _ in range(cfg.train.accum_steps)]
    record = contrastive_backward(accelerator, session.model, session.loss_fn, micro, 1, session.text_encoder)
    grads = {name: p.grad.detach().clone() for name, p in session.core.named_parameters() if p.grad is not None}
    return record["loss"], grads


if __name__ == "__main__":
    from accelerate import PartialState
    from safetensors.torch import save_file

    result = Path(sys.argv[1])
    loss, grads = first_step_gradients(sys.argv[2:])
    if PartialState().is_main_process:
        save_file(grads, str(result / "grads.safetensors"))
        (result / "loss.json").write_text(json.dumps({"loss": loss}))
