"""The global batch decides the gradient: 2 processes (with accumulation) and 2 micro-batches equal 1 big batch, with
the contrastive step plugged into the engine (gradients taken inside ``Engine.fit``).

Tolerance: float32 sums in another order, so losses agree to rel 1e-5 and gradients to rel 1e-4 / abs 1e-6
(a wrong setting of the gathers is off by tens of percent, see tests/test_losses.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ..conftest import accelerate_launch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _dist_step():
    spec = importlib.util.spec_from_file_location("dist_step", HERE / "dist_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_big_batch(pretrain_inputs, tmp_path_factory) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of the first step with 8 breasts in one batch on one process."""
    out = tmp_path_factory.mktemp("big")
    return _dist_step().first_step_gradients(pretrain_inputs.argv(out, "data.batch_size=8", "train.accum_steps=1"))


def _assert_same(loss, grads, reference):
    ref_loss, ref_grads = reference
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_two_micro_batches_equal_one_batch_of_twice_the_size(pretrain_inputs, tmp_path, one_big_batch):
    argv = pretrain_inputs.argv(tmp_path, "data.batch_size=4", "train.accum_steps=2")
    loss, grads = _dist_step().first_step_gradients(argv)
    _assert_same(loss, grads, one_big_batch)
    assert grads["logit_scale"].abs() > 0  # counted once, not once per micro-batch


def test_two_processes_with_accumulation_equal_one_process(pretrain_inputs, tmp_path, one_big_batch):
    """2 processes x 2 micro-batches x 2 breasts = the same 8 breasts as one batch of 8.

    ``accelerate launch --cpu`` starts a single process (its simple launcher needs mpirun for more), so the two
    CPU processes come from the torchrun-based ``--multi_gpu`` launcher with ``train.device=cpu`` (gloo backend).
    """
    argv = pretrain_inputs.argv(tmp_path / "run", "data.batch_size=2", "train.accum_steps=2", "train.device=cpu")
    command = [
        *accelerate_launch(2),
        str(HERE / "dist_step.py"),
        str(tmp_path),
        *argv,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    loss = json.loads((tmp_path / "loss.json").read_text())["loss"]
    _assert_same(loss, load_file(str(tmp_path / "grads.safetensors")), one_big_batch)


def test_live_text_encoder_matches_the_cached_features(pretrain_inputs, tmp_path, one_big_batch):
    """``data.cached_text=false`` runs the frozen encoder every step; the cache stores float16, hence rel 1e-3."""
    argv = pretrain_inputs.argv(tmp_path, "data.batch_size=8", "data.cached_text=false")
    loss, grads = _dist_step().first_step_gradients(argv)
    assert loss == pytest.approx(one_big_batch[0], rel=1e-3)
    torch.testing.assert_close(grads["logit_scale"], one_big_batch[1]["logit_scale"], rtol=1e-2, atol=1e-4)
