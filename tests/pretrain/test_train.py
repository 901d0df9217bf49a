"""End-to-end pretraining on the engine (CPU): learning, the run directory, the export, exact resume after a kill, a
second run refused, NaN stop."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mvmlm import cli
from mvmlm.training import NonFiniteLossError, checkpoint_dirs
from pretrain.data import EpochSampler, PretrainDataset, load_breasts, read_reports
from pretrain.train import clamp_logit_scale, main

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


def test_run_directory_holds_logs_checkpoints_and_a_loadable_model(trained):
    from mvmlm.models.mvclip import MVCLIP, load_image_tower

    out, results = trained
    assert sorted(_logged_losses(out)) == list(range(1, STEPS + 1))
    assert json.loads((out / "metrics.json").read_text())["steps"] == STEPS
    assert (out / "config.yaml").is_file() and (out / "provenance.json").is_file()
    assert [step for step, _ in checkpoint_dirs(out / "checkpoints")] == [60, STEPS]  # save_every 30, keep 2
    assert MVCLIP.load(out / "model").config.tokens.num_tokens == 16
    features = load_image_tower(out / "model")(torch.rand(2, 1, 64, 48))
    assert features.shape == (2, 32) and torch.isfinite(features).all()


def test_validation_runs_every_eval_every_steps_with_retrieval_names(trained):
    out, results = trained
    records = [json.loads(line) for line in (out / "val_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [30, 60, STEPS] == [r["step"] for r in results["val_history"]]
    assert {"val/loss", "val/i2t_R@1", "val/t2i_R@10", "val/chance_R@5"} <= records[-1].keys()
    assert records[-1]["val/i2t_R@1"] == pytest.approx(results["after"]["val"]["i2t_R@1"])


def test_tensorboard_writes_event_files_offline(trained):
    out, results = trained
    assert results["trackers"] == ["tensorboard"]
    assert list((out / "tracking").rglob("events.out.tfevents.*"))


def test_resume_after_kill_reproduces_the_uninterrupted_losses(trained, pretrain_inputs, tmp_path):
    reference, _ = trained
    out = tmp_path / "killed"
    argv = pretrain_inputs.argv(out, "train.save_every=2", "train.keep_checkpoints=2")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pretrain", *argv], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
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
    assert results["losses"] == pytest.approx([expected[s] for s in range(1, STEPS + 1)], rel=1e-5, abs=1e-6)
    assert _logged_losses(out) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    uninterrupted = json.loads((reference / "metrics.json").read_text())
    for split, values in uninterrupted["before"].items():
        assert results["before"][split] == pytest.approx(values)

    assert cli.main(["pretrain", *argv, "--resume", "latest"]) == 0  # finished: nothing to do, nothing touched
    assert json.loads((out / "metrics.json").read_text())["losses"] == pytest.approx(results["losses"])


def test_a_second_run_into_the_same_out_is_refused_and_the_first_kept(trained, pretrain_inputs, capsys):
    out, _ = trained
    before = {p: p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()}
    config = (out / "config.yaml").read_text()
    assert cli.main(["pretrain", *pretrain_inputs.argv(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and "train.resume=latest" in error, error
    assert {p: p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()} == before
    assert (out / "config.yaml").read_text() == config


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


def test_resume_with_another_batch_size_is_refused(trained, pretrain_inputs, tmp_path):
    out, _ = trained
    checkpoint = checkpoint_dirs(out / "checkpoints")[-1][1]
    argv = pretrain_inputs.argv(tmp_path / "other", "data.batch_size=4", f"train.resume={checkpoint}")
    with pytest.raises(ValueError, match="another layout .*batch_size: 8 -> 4"):
        main(argv)
    assert not (tmp_path / "other" / "model").exists()


def test_logit_scale_is_clamped_after_a_step_and_logged():
    model = torch.nn.Module()
    model.logit_scale = torch.nn.Parameter(torch.tensor(math.log(500.0)))
    model.config = SimpleNamespace(logit_scale_max=100.0)
    record = {"loss": 1.0}
    clamp_logit_scale(model, record)
    assert model.logit_scale.exp().item() == pytest.approx(100.0) and record["logit_scale"] == pytest.approx(100.0)


def test_device_augmentation_trains_as_loader_augmentation(pretrain_inputs, tmp_path, monkeypatch):
    import pretrain.train as pretrain_train

    hooked, hook = [], pretrain_train.device_hook
    monkeypatch.setattr(pretrain_train, "device_hook", lambda device: hooked.append(device) or hook(device))
    losses = {}
    for where in ("loader", "device"):
        argv = pretrain_inputs.argv(tmp_path / where, "train.epochs=2", f"data.augment_on={where}")
        losses[where] = main([*argv, "data.augment.enabled=true"])["losses"]
    assert len(hooked) == 1 and len(losses["device"]) == 6
    assert losses["device"] == pytest.approx(losses["loader"], rel=1e-4)
