"""The one training engine: selection, early stop, NaN guard, accumulation, resume, refusal to overwrite, trackers."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mvmlm.checkpoint import load_weights
from mvmlm.config import ConfigError, OptimConfig, TrainConfig, build_config
from mvmlm.training import (
    BEST_DIR,
    CHECKPOINTS_DIR,
    TRAIN_LOG,
    VAL_LOG,
    Engine,
    Loss,
    NonFiniteLossError,
    checkpoint_dirs,
)


class Points(Dataset):
    """Two Gaussian blobs in 4-d, labelled by blob; items are dicts as the trainers' are."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 2
        self.x = torch.randn(n, 4, generator=g) + 1.5 * (2 * self.y[:, None] - 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i], "id": f"p{i}"}


def cross_entropy(model: nn.Module, batch: dict) -> Loss:
    return Loss(nn.functional.cross_entropy(model(batch["x"]), batch["y"]), ids=batch["id"])


def accuracy(data: Dataset):
    def evaluate(model: nn.Module) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            hits = (model(data.x).argmax(-1) == data.y).float().mean()
        return {"val/acc": float(hits), "val/neg": -float(hits)}

    return evaluate


def make(tmp_path, *, loader_seed: int = 0, batch_size: int = 8, **train) -> tuple[Engine, nn.Module, DataLoader]:
    defaults = dict(epochs=3, device="cpu", progress=False, seed=0)
    engine = Engine(TrainConfig(**{**defaults, **train}), OptimConfig(lr=0.05, warmup_steps=0), tmp_path)
    model = nn.Linear(4, 2)
    loader = DataLoader(Points(32, loader_seed), batch_size=batch_size, shuffle=True)
    return engine, model, loader


def test_best_weights_by_the_selected_metric_are_restored(tmp_path):
    engine, model, loader = make(tmp_path, epochs=4)
    result = engine.fit(model, loader, loss=cross_entropy, evaluate=accuracy(Points(16, 1)), select="val/acc")
    scores = [r["val/acc"] for r in result.history]
    assert len(scores) == 4 and result.best["score"] == max(scores)
    assert result.best["epoch"] == scores.index(max(scores)) + 1
    best = load_weights(tmp_path / BEST_DIR)
    assert all(torch.equal(best[k], v) for k, v in engine.unwrap(model).state_dict().items())
    assert len((tmp_path / VAL_LOG).read_text().splitlines()) == 4
    assert len((tmp_path / TRAIN_LOG).read_text().splitlines()) == result.steps == 16


def test_min_mode_selects_the_lowest_value(tmp_path):
    engine, model, loader = make(tmp_path, epochs=3)
    result = engine.fit(
        model, loader, loss=cross_entropy, evaluate=accuracy(Points(16, 1)), select="val/neg", mode="min"
    )
    assert result.best["score"] == min(r["val/neg"] for r in result.history)


def test_early_stop_after_evaluations_without_improvement(tmp_path):
    engine, model, loader = make(tmp_path, epochs=10, early_stop=2)
    result = engine.fit(model, loader, loss=cross_entropy, evaluate=lambda m: {"val/acc": 0.5}, select="val/acc")
    assert result.stopped_early and result.epochs == 3 and result.best["epoch"] == 1


def test_unknown_selected_metric_names_the_known_ones(tmp_path):
    engine, model, loader = make(tmp_path)
    with pytest.raises(ConfigError, match="'val/auc'.*known: val/acc, val/neg"):
        engine.fit(model, loader, loss=cross_entropy, evaluate=accuracy(Points(16, 1)), select="val/auc")


def test_no_finite_validation_score_keeps_the_final_weights(tmp_path, caplog):
    engine, model, loader = make(tmp_path, epochs=2)
    with caplog.at_level(logging.WARNING):
        result = engine.fit(
            model, loader, loss=cross_entropy, evaluate=lambda m: {"val/auc": float("nan")}, select="val/auc"
        )
    assert result.best["epoch"] is None and "no finite val/auc" in caplog.text
    assert not (tmp_path / BEST_DIR).exists()
    assert result.steps == 8  # trained to the end with its final weights


def test_non_finite_loss_names_the_step_and_samples_and_changes_nothing(tmp_path):
    engine, model, loader = make(tmp_path, save_every=0)
    calls = []

    def poisoned(model: nn.Module, batch: dict) -> Loss:
        calls.append(1)
        loss = cross_entropy(model, batch)
        return Loss(loss.value * float("nan"), ids=batch["id"]) if len(calls) == 3 else loss

    before = {}

    def remember(m: nn.Module, record: dict) -> None:
        before.update({k: v.clone() for k, v in m.state_dict().items()})

    with pytest.raises(NonFiniteLossError, match=r"at step 3.*Batch ids: p\d+") as error:
        engine.fit(model, loader, loss=poisoned, after_step=remember)
    assert len(str(error.value).split("Batch ids: ")[1].split(", ")) == 8
    assert all(torch.equal(before[k], v) for k, v in engine.unwrap(model).state_dict().items())


def test_accumulated_micro_batches_equal_one_batch_of_their_size(tmp_path):
    states = []
    for accum, batch in ((1, 8), (2, 4)):
        engine, model, loader = make(tmp_path / f"a{accum}", accum_steps=accum, batch_size=batch, max_steps=1)
        loader = DataLoader(Points(8, 0), batch_size=batch, shuffle=False)
        engine.fit(model, loader, loss=cross_entropy)
        states.append(engine.unwrap(model).state_dict())
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key])


def test_interrupted_run_resumes_to_the_same_losses_and_weights(tmp_path):
    def run(out, interrupt_at: int | None, resume: str = "none"):
        engine, model, loader = make(out, epochs=3, save_every=3, resume=resume)
        steps = []

        def loss(m: nn.Module, batch: dict) -> Loss:
            steps.append(1)
            if interrupt_at is not None and len(steps) == interrupt_at:
                raise KeyboardInterrupt
            return cross_entropy(m, batch)

        engine.fit(model, loader, loss=loss, evaluate=accuracy(Points(16, 1)), select="val/acc")
        return engine.unwrap(model).state_dict()

    reference = run(tmp_path / "whole", None)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", 8)  # in epoch 2, after the checkpoint of step 6
    assert [s for s, _ in checkpoint_dirs(tmp_path / "cut" / CHECKPOINTS_DIR)] == [6]
    resumed = run(tmp_path / "cut", None, resume="latest")
    for key in reference:
        torch.testing.assert_close(reference[key], resumed[key])
    whole = [json.loads(line)["loss"] for line in (tmp_path / "whole" / TRAIN_LOG).read_text().splitlines()]
    cut = [json.loads(line)["loss"] for line in (tmp_path / "cut" / TRAIN_LOG).read_text().splitlines()]
    assert cut == pytest.approx(whole)


def test_a_new_run_into_a_folder_holding_a_run_is_refused(tmp_path):
    engine, model, loader = make(tmp_path, epochs=1)
    engine.fit(model, loader, loss=cross_entropy)
    saved = checkpoint_dirs(tmp_path / CHECKPOINTS_DIR)
    with pytest.raises(ConfigError, match="already holds a training run.*train.resume=latest"):
        make(tmp_path, epochs=1)  # refused when built, before anything is written
    assert checkpoint_dirs(tmp_path / CHECKPOINTS_DIR) == saved


def test_run_directory_of_a_trainer_is_not_reused_without_resume(tmp_path):
    from mvmlm.rundir import RunDir

    run = RunDir.create(tmp_path, TrainConfig(epochs=1), resume="none")
    run.write_text("train_log.jsonl", "{}\n")
    with pytest.raises(ConfigError, match="already holds a training run \\(train_log.jsonl\\)"):
        RunDir.create(tmp_path, TrainConfig(epochs=2), resume="none")
    assert "epochs: 1" in run.file("config.yaml").read_text()
    RunDir.create(tmp_path, TrainConfig(epochs=2), resume="latest")  # continuing is allowed


def test_plateau_schedule_cuts_the_learning_rate_when_the_metric_stalls(tmp_path):
    engine = Engine(
        TrainConfig(epochs=4, device="cpu", progress=False),
        OptimConfig(lr=0.1, schedule="plateau", plateau_patience=0, plateau_factor=0.5),
        tmp_path,
    )
    loader = DataLoader(Points(16, 0), batch_size=8, shuffle=True)
    engine.fit(nn.Linear(4, 2), loader, loss=cross_entropy, evaluate=lambda m: {"val/acc": 0.5}, select="val/acc")
    lrs = [json.loads(line)["lr"] for line in (tmp_path / TRAIN_LOG).read_text().splitlines()]
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.1 * 0.5**2)  # cut after evaluations 2 and 3


def test_trackers_by_accelerate_name(tmp_path, caplog):
    from accelerate.utils import is_wandb_available

    with pytest.raises(ConfigError, match="unknown tracker 'tensorbored'.*tensorboard"):
        make(tmp_path / "bad", trackers=["tensorbored"])
    with caplog.at_level(logging.WARNING):
        engine, model, loader = make(tmp_path / "tb", trackers=["tensorboard", "wandb"], epochs=1)
    engine.fit(model, loader, loss=cross_entropy)
    engine.end()
    assert list((tmp_path / "tb" / "tracking").rglob("events.out.tfevents.*"))
    if not is_wandb_available():
        assert "tracker wandb is not installed" in caplog.text


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("train.cpu=true", "train.device=cpu"),
        ("optim.warmup_epochs=1", "optim.warmup_steps"),
        ("train.tracker=none", "train.trackers"),
    ],
)
def test_old_keys_name_their_new_key(override, hint):

    @dataclass
    class Schema:
        optim: OptimConfig = field(default_factory=OptimConfig)
        train: TrainConfig = field(default_factory=TrainConfig)

    with pytest.raises(ConfigError, match=f"renamed: use {hint}"):
        build_config(Schema, overrides=[override])


def test_bad_train_values_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="train.mixed_precision': must be one of no, fp16, bf16, got 'fp8'"):
        make(tmp_path, mixed_precision="fp8")


def test_trainers_with_other_precision_run_one_after_another_in_one_process(tmp_path):
    for i, precision in enumerate(("no", "bf16", "no")):
        engine, model, loader = make(tmp_path / str(i), epochs=1, mixed_precision=precision)
        assert engine.accelerator.mixed_precision == precision
        engine.fit(model, loader, loss=cross_entropy)


def test_resumed_fit_reports_the_losses_of_the_whole_run(tmp_path):
    engine, model, loader = make(tmp_path, epochs=1)
    first = engine.fit(model, loader, loss=cross_entropy)
    engine, model, loader = make(tmp_path, epochs=2, resume="latest")  # a second epoch after the first call
    resumed = engine.fit(model, loader, loss=cross_entropy)
    assert resumed.resumed_from_step == 4 and len(resumed.losses) == 8
    assert resumed.losses[:4] == pytest.approx(first.losses)


@dataclass
class Run:
    train: TrainConfig = field(default_factory=TrainConfig)


def test_resuming_a_finished_run_with_its_settings_touches_nothing(tmp_path, capsys):
    from mvmlm.cli import run_command
    from mvmlm.errors import RunFinished
    from mvmlm.rundir import RunDir

    run = RunDir.create(tmp_path, Run(TrainConfig(epochs=1)), resume="none")
    run.write_metrics({"auc": 0.9})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(RunFinished, match="finished run"):
        RunDir.create(tmp_path, Run(TrainConfig(epochs=1, resume="latest")), resume="latest")
    again = Run(TrainConfig(epochs=1, resume="latest"))
    assert run_command(lambda argv: RunDir.create(tmp_path, again, resume="latest")) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_continuing_a_run_keeps_its_config_and_records_the_new_one_aside(tmp_path):
    from mvmlm.rundir import RunDir

    RunDir.create(tmp_path, TrainConfig(epochs=1), resume="none")
    original = (tmp_path / "config.yaml").read_text()
    run = RunDir.create(tmp_path, TrainConfig(epochs=3, resume="latest"), resume="latest")  # more epochs: continues
    assert not (tmp_path / "resumes").exists()  # held until the engine accepts the checkpoint
    run.confirm()
    assert (tmp_path / "config.yaml").read_text() == original
    (aside,) = (tmp_path / "resumes").iterdir()
    assert "epochs: 3" in (aside / "config.yaml").read_text() and (aside / "provenance.json").is_file()


def test_a_resumed_fit_writes_the_continuing_records_once_its_checkpoint_is_accepted(tmp_path):
    from mvmlm.rundir import RunDir

    RunDir.create(tmp_path, TrainConfig(epochs=1), resume="none")
    engine, model, loader = make(tmp_path, epochs=1)
    engine.fit(model, loader, loss=cross_entropy)
    RunDir.create(tmp_path, TrainConfig(epochs=2, resume="latest"), resume="latest")
    logging.getLogger("mvmlm.test").info("the second invocation starts")
    assert not (tmp_path / "resumes").exists()
    seen = []

    def loss(m: nn.Module, batch: dict) -> Loss:  # while training: the records are on disk
        seen.append(len(list(tmp_path.glob("resumes/*/config.yaml"))))
        return cross_entropy(m, batch)

    engine, model, loader = make(tmp_path, epochs=2, resume="latest")
    engine.fit(model, loader, loss=loss)
    assert seen and set(seen) == {1}
    assert "the second invocation starts" in (tmp_path / "log.txt").read_text()


def test_resuming_with_other_lr_scales_is_refused_naming_them(tmp_path):
    engine, model, loader = make(tmp_path, epochs=1)
    engine.fit(model, loader, loss=cross_entropy)
    optim = OptimConfig(lr=0.05, warmup_steps=0, lr_scales={"bias": 0.0})
    resumed = Engine(TrainConfig(epochs=2, device="cpu", progress=False, resume="latest"), optim, tmp_path)
    with pytest.raises(ConfigError, match=r"lr_scales: \{\} -> \{'bias': 0.0\}"):
        resumed.fit(nn.Linear(4, 2), loader, loss=cross_entropy)
