"""SIGTERM (what cluster schedulers send before SIGKILL): the engine saves the training state at the next step boundary
and stops with exit code 143 and a message saying how to continue; the resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from mvmlm.training import CHECKPOINTS_DIR, TRAIN_LOG, VAL_LOG, Loss, checkpoint_dirs
from mvmlm.training.signals import TrainingStopped

from ..conftest import accelerate_launch
from .test_engine import Points, accuracy, cross_entropy, make

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _fit(out, *, term_at: int | None = None, resume: str = "none") -> dict[str, torch.Tensor]:
    """3 epochs of 4 steps, evaluated and saved every epoch; SIGTERM to this process during step ``term_at``."""
    engine, model, loader = make(out, epochs=3, resume=resume)
    steps = []

    def loss(m: nn.Module, batch: dict) -> Loss:
        steps.append(1)
        if len(steps) == term_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return cross_entropy(m, batch)

    engine.fit(model, loader, loss=loss, evaluate=accuracy(Points(16, 1)), select="val/acc")
    return engine.unwrap(model).state_dict()


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("term_at", [6, 4], ids=["mid-epoch", "last-step-of-an-epoch"])
def test_sigterm_saves_at_the_step_boundary_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path, caplog, term_at):
    reference = _fit(tmp_path / "whole")
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingStopped) as stopped:
        _fit(tmp_path / "cut", term_at=term_at)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert f"stopped by SIGTERM at step {term_at} of 12" in str(stopped.value) and "--resume latest" in str(
        stopped.value
    )
    assert "--resume latest" in caplog.text  # also in the log
    assert signal.getsignal(signal.SIGTERM) == handler  # the handler is the engine's only while it trains
    assert [step for step, _ in checkpoint_dirs(tmp_path / "cut" / CHECKPOINTS_DIR)] == [term_at]
    evaluated = [r["step"] for r in _records(tmp_path / "cut" / VAL_LOG)]
    assert evaluated == [step for step in (4, 8, 12) if step <= term_at]  # an epoch's evaluation is in its state
    resumed = _fit(tmp_path / "cut", resume="latest")
    for key, tensor in reference.items():
        torch.testing.assert_close(resumed[key], tensor)
    for name in (TRAIN_LOG, VAL_LOG):
        got, expected = _records(tmp_path / "cut" / name), _records(tmp_path / "whole" / name)
        assert len(got) == len(expected) and all(g == pytest.approx(e) for g, e in zip(got, expected, strict=True))


def test_processes_of_a_launch_stop_together_when_one_gets_sigterm(tmp_path):
    """Only the first of 2 processes gets SIGTERM: both stop after the same step and save its state together (a
    process stopping alone would leave the others waiting in the collective save)."""
    out = tmp_path / "run"
    command = [*accelerate_launch(2), str(HERE / "sigterm_run.py"), str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0 and "stopped by SIGTERM at step 3 of 6" in done.stderr, done.stderr[-3000:]
    assert [step for step, _ in checkpoint_dirs(out / CHECKPOINTS_DIR)] == [3]
    assert [r["step"] for r in _records(out / TRAIN_LOG)] == [1, 2, 3]
