"""End-to-end pretraining on CPU: learning, the run directory, the export, exact resume after a kill, NaN stop."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mvmlm.training import NonFiniteLossError, checkpoint_dirs
from pretrain.data import EpochSampler, PretrainDataset, load_breasts, read_reports
from pretrain.train import main

STEPS = 90  # tiny_cpu.yaml: 30 epochs x (24 training breasts / batch 8 = 3 steps per epoch)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(pretrain_inputs, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run") / "tiny"
    return out, main(pretrain_inputs.argv(out))


def _logged_losses(run: Path) -> dict[int, float]:
    lines = (run / "train_log.jsonl").read_text().splitlines()
    return {record["step"]: record["loss"] for record in map(json.loads, lines)}


def test_loss_decreases(trained):
    _, results = trained
    losses = results["losses"]
    assert len(losses) == results["steps"] == STEPS
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.3, (first, last)


def test_train_retrieval_beats_chance(trained):
    _, results = trained
    after, before = results["after"]["train"], results["before"]["train"]
    chance = after["chance_R@5"]
    assert after["i2t_R@5"] > chance + 0.1 and after["t2i_R@5"] > chance + 0.1, after
    assert after["i2t_R@5"] > before["i2t_R@5"]
    assert {"loss", "i2t_R@1", "t2i_R@10"} <= results["after"]["val"].keys()


def test_run_directory_holds_log_checkpoint_and_a_loadable_model(trained):
    from mvmlm.models.mvclip import MVCLIP, load_image_tower

    out, results = trained
    assert sorted(_logged_losses(out)) == list(range(1, STEPS + 1))
    assert json.loads((out / "metrics.json").read_text())["steps"] == STEPS
    assert (out / "config.yaml").is_file() and (out / "provenance.json").is_file()
    assert [step for step, _ in checkpoint_dirs(out / "checkpoints")] == [STEPS]
    assert list((out / "tensorboard").rglob("events.out.tfevents.*")) and results["tracker"] == ["tensorboard"]
    model = MVCLIP.load(out / "model")
    assert model.logit_scale.exp().item() <= 100.0 + 1e-4
    features = load_image_tower(out / "model")(torch.rand(2, 1, 64, 48))
    assert features.shape == (2, 32) and torch.isfinite(features).all()


def test_resume_after_kill_reproduces_the_uninterrupted_losses(trained, pretrain_inputs, tmp_path):
    reference, _ = trained
    out = tmp_path / "killed"
    argv = pretrain_inputs.argv(out, "train.save_every=2", "train.keep_checkpoints=2")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pretrain", *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 240
    while not checkpoint_dirs(out / "checkpoints") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    assert not (out / "model").exists()
    killed_at = checkpoint_dirs(out / "checkpoints")[-1][0]
    assert killed_at % 3 != 0, "the kill must land inside an epoch"

    results = main([*argv, "--resume", "latest"])
    assert results["resumed_from_step"] == killed_at
    expected = _logged_losses(reference)
    assert results["losses"] == pytest.approx(
        [expected[s] for s in range(killed_at + 1, STEPS + 1)], rel=1e-5, abs=1e-6
    )
    assert _logged_losses(out) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_nan_loss_stops_with_step_and_batch_ids(pretrain_inputs, tmp_path, monkeypatch):
    poisoned, epoch = 5, 1
    original = PretrainDataset.__getitem__

    def getitem(self, index):
        item = original(self, index)
        if self.train and self.epoch == epoch and index == poisoned:
            item["images"] = torch.full_like(item["images"], math.nan)
        return item

    monkeypatch.setattr(PretrainDataset, "__getitem__", getitem)
    sampler = EpochSampler(24, seed=0)
    sampler.set_epoch(epoch)
    step = 3 * epoch + list(sampler).index(poisoned) // 8 + 1
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=rf"at step {step};") as error:
        main(pretrain_inputs.argv(out, "train.epochs=2", "train.save_every=1", "train.keep_checkpoints=0"))
    ids = str(error.value).split("Batch ids: ")[1].split(", ")
    breasts = load_breasts(pretrain_inputs.table, "train", read_reports(pretrain_inputs.corpus))
    assert len(ids) == 8 and breasts["breast_id"][poisoned] in ids
    assert [s for s, _ in checkpoint_dirs(out / "checkpoints")] == list(range(1, step))
    assert not (out / "model").exists()
    from safetensors.torch import load_file

    weights = load_file(str(checkpoint_dirs(out / "checkpoints")[-1][1] / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
