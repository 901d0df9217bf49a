"""mvmlm.training pieces pretraining relies on: optimizer groups, the schedule, checkpoint rotation and resume lookup,
the layout check, trackers by name."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from mvmlm import training
from mvmlm.config import ConfigError, OptimConfig
from mvmlm.training import (
    TrainState,
    build_optimizer,
    checkpoint_dirs,
    latest_checkpoint,
    param_groups,
    resolve_resume,
    tracker_names,
    warmup_cosine_schedule,
)
from mvmlm.training.optim import WarmupCosine


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.table = nn.Parameter(torch.zeros(5, 4))
        self.table._no_weight_decay = True
        self.logit_scale = nn.Parameter(torch.tensor(1.0))
        self.frozen = nn.Parameter(torch.zeros(2, 2), requires_grad=False)


def test_no_decay_on_norms_biases_scalars_and_marked_parameters():
    model = _Toy()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p is model.linear.weight for p in decay["params"]] == [True]
    marked = {id(p) for p in (model.linear.bias, model.norm.weight, model.norm.bias, model.table, model.logit_scale)}
    assert {id(p) for p in no_decay["params"]} == marked


def test_the_optimizer_is_fused_and_steps_as_torchs_loop():
    torch.manual_seed(0)
    model, twin = _Toy(), _Toy()
    twin.load_state_dict(model.state_dict())
    initial = model.linear.weight.detach().clone()
    cfg = OptimConfig(lr=0.1, weight_decay=0.1)
    fused = build_optimizer(model, cfg)
    loop = torch.optim.AdamW(param_groups(twin, 0.1), lr=0.1, foreach=False)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    for _ in range(3):
        x = torch.randn(6, 3)
        for net, optimizer in ((model, fused), (twin, loop)):
            (net.norm(net.linear(x)) @ net.table.T * net.logit_scale).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for (name, ours), theirs in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.equal(model.linear.weight, initial)


def test_warmup_then_cosine_to_the_floor():
    f = WarmupCosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="bad schedule"):
        warmup_cosine_schedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), 2, 0)


def test_scheduler_steps_once_per_call_and_round_trips_its_state():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine_schedule(opt, 2, 10)
    for _ in range(3):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 1 / 8)))
    restored = warmup_cosine_schedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0), 2, 10)
    restored.load_state_dict(sched.state_dict())
    assert restored.last_epoch == 3 and restored.get_last_lr() == sched.get_last_lr()


def test_checkpoint_lookup_ignores_unfinished_saves(tmp_path):
    for name in ("step_00000002", "step_00000010", ".tmp-step_00000012", "other"):
        (tmp_path / name).mkdir()
    assert [s for s, _ in checkpoint_dirs(tmp_path)] == [2, 10]
    assert latest_checkpoint(tmp_path).name == "step_00000010"
    assert resolve_resume("latest", tmp_path).name == "step_00000010"
    assert resolve_resume("none", tmp_path / "none") is None and resolve_resume("latest", tmp_path / "none") is None
    with pytest.raises(ConfigError, match="checkpoint folder not found"):
        resolve_resume(str(tmp_path / "step_00000099"), tmp_path)


def test_a_new_run_over_existing_checkpoints_is_refused(tmp_path):
    (tmp_path / "checkpoints" / "step_00000004").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already holds a training run.*train.resume=latest"):
        resolve_resume("none", tmp_path / "checkpoints")


class _OneProcess:
    """The part of an Accelerator that save_checkpoint uses."""

    is_main_process = True

    def wait_for_everyone(self):
        pass

    def save_state(self, path, safe_serialization=True):
        torch.save(torch.zeros(1), f"{path}/state.pt")


def test_save_rotates_and_replaces_atomically(tmp_path):
    acc = _OneProcess()
    (tmp_path / ".tmp-step_00000001").mkdir(parents=True)  # left by a killed save
    for step in (1, 2, 3):
        training.save_checkpoint(acc, tmp_path, step, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002", "step_00000003"]
    assert (tmp_path / "step_00000003" / "state.pt").is_file()
    training.save_checkpoint(acc, tmp_path, 1, keep=2)  # a new run into the same folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001"]


def test_resume_with_another_layout_is_refused():
    saved = TrainState(step=7, layout={"num_processes": 2, "batch_size": 8}).state_dict()
    state = TrainState(layout={"num_processes": 4, "batch_size": 8})
    with pytest.raises(ValueError, match="num_processes: 2 -> 4"):
        state.load_state_dict(saved)
    same = TrainState(layout={"num_processes": 2, "batch_size": 8})
    same.load_state_dict(saved)
    assert same.step == 7


def test_unknown_tracker_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbored'; known: .*wandb"):
        tracker_names(["tensorbored"], tmp_path)


def test_a_known_tracker_not_installed_is_skipped_with_a_warning(monkeypatch, tmp_path, caplog):
    from accelerate.utils import imports

    monkeypatch.setattr(imports, "is_wandb_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="mvmlm.training"):
        assert tracker_names(["wandb", "none"], tmp_path) == []
    assert "pip install wandb" in caplog.text


def test_lr_scales_slow_or_freeze_a_module_and_name_a_prefix_that_matches_nothing():
    model = _Toy()
    cfg = OptimConfig(lr=0.1, weight_decay=0.1, lr_scales={"linear": 0.1, "norm": 0.0})
    optimizer = build_optimizer(model, cfg)
    lrs = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert lrs[id(model.linear.weight)] == pytest.approx(0.01) and lrs[id(model.linear.bias)] == pytest.approx(0.01)
    assert lrs[id(model.table)] == 0.1 and lrs[id(model.logit_scale)] == 0.1
    assert id(model.norm.weight) not in lrs and not model.norm.weight.requires_grad  # scale 0: frozen
    decays = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decays[id(model.linear.weight)] == 0.1 and decays[id(model.linear.bias)] == 0.0
    with pytest.raises(
        ConfigError, match="'head' names no parameter; modules: frozen, linear, logit_scale, norm, table"
    ):
        build_optimizer(_Toy(), OptimConfig(lr_scales={"head": 0.5}))
    with pytest.raises(ConfigError, match="a multiplier >= 0"):
        build_optimizer(_Toy(), OptimConfig(lr_scales={"linear": -1.0}))


def test_a_checkpoint_older_than_a_layout_key_counts_as_its_old_value_and_other_missing_keys_are_refused():
    older = TrainState(step=3, layout={"num_processes": 1}).state_dict()  # written before lr_scales was recorded
    plain = TrainState(layout={"num_processes": 1, "lr_scales": {}})
    plain.load_state_dict(older)
    assert plain.step == 3
    with pytest.raises(ValueError, match=r"lr_scales: \{\} -> \{'backbones': 0.1\}"):
        TrainState(layout={"num_processes": 1, "lr_scales": {"backbones": 0.1}}).load_state_dict(older)
    with pytest.raises(ValueError, match="batch_size: None -> 8"):
        TrainState(layout={"num_processes": 1, "batch_size": 8}).load_state_dict(older)
