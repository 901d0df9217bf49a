"""Mammo-Mamba dual-stream model (tiny backbone), runs on the training engine over synthetic CBIS-DDSM caches with
lesion crops made by preprocessing, two data-parallel processes, resume and a learning test."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from downstream.dual_stream.config import MammoMambaConfig
from downstream.dual_stream.model import MammoMamba, MammoMambaModelConfig
from downstream.dual_stream.run import main
from mvmlm.config import build_config
from mvmlm.data.preprocess import PreprocessParams, RoiParams, cache_folder, preprocess_table
from mvmlm.data.sources import cbis_ddsm

from ..conftest import accelerate_launch

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs/dual_stream/tiny_cpu.yaml")
TINY = {"depths": [1, 1, 2, 2], "dim": 8, "in_dim": 4, "heads": [1, 1, 2, 2], "freeze_stages": 2, "drop_path_rate": 0.0}


def _model(streams: list[str], seqmoe: bool = True) -> MammoMamba:
    torch.manual_seed(0)
    cfg = MammoMambaModelConfig(backbone_kwargs={**TINY, "seqmoe": seqmoe}, streams=streams, hidden=16, dropout=0.0)
    return MammoMamba(cfg).eval()


def _inputs(mask: torch.Tensor) -> dict:
    gen = torch.Generator().manual_seed(1)
    return {s: (torch.rand(2, 2, 1, 64, 64, generator=gen), mask.clone()) for s in ("crop", "whole")}


def _cache(root: Path, table: pd.DataFrame, out: Path, size: int) -> Path:
    """``mvmlm preprocess ... roi.enabled=true`` of ``table`` at ``size x size`` (crops too); its table.parquet."""
    params = PreprocessParams(height=size, width=size, roi=RoiParams(enabled=True, size=size, min_side=16))
    preprocess_table(table, root, out, params, progress=False)
    return cache_folder(out, params) / "table.parquet"


@pytest.fixture(scope="module")
def small_table(synthetic_dataset, tmp_path_factory) -> Path:
    """40 synthetic CBIS-DDSM exams cached at 32x32 with 32x32 crops; 30 % of the training patients validate."""
    root, _ = synthetic_dataset("cbis_ddsm", exams=40, seed=0)
    return _cache(root, cbis_ddsm.read(root, val_fraction=0.3), tmp_path_factory.mktemp("dual_stream"), 32)


def test_dual_stream_forward_backward_with_a_missing_view():
    model = _model(["crop", "whole"])
    mask = torch.tensor([[True, False], [True, True]])  # first breast: no MLO
    inputs = _inputs(mask)
    out = model(inputs)
    assert out["logits"].shape == (2, 2) and ((out["fusion_gate"] > 0) & (out["fusion_gate"] < 1)).all()
    out["logits"].sum().backward()
    assert model.head[1].weight.grad is not None and model.fusion.proj.weight.grad is not None
    crop_backbone = model.streams["crop"].backbone
    assert crop_backbone.stem[0].weight.grad is not None
    assert all(p.grad is None for p in crop_backbone.stages[:2].parameters())  # stages 1-2 frozen
    assert set(model.seqmoe_gates()) == {"crop.stage3", "crop.stage4", "whole.stage3", "whole.stage4"}
    changed = {s: (images.clone(), m) for s, (images, m) in inputs.items()}
    changed["whole"][0][0, 1] += 1.0  # the missing view's pixels must not matter
    with torch.no_grad():
        torch.testing.assert_close(model(changed)["logits"], model(inputs)["logits"])
        changed["whole"][0][1, 1] += 1.0  # a present view's pixels do
        assert not torch.allclose(model(changed)["logits"][1], model(inputs)["logits"][1])


def test_breast_gates_average_each_breasts_own_views():
    model = _model(["crop", "whole"])
    inputs = _inputs(torch.tensor([[True, False], [True, True]]))
    with torch.no_grad():
        out = model(inputs)
        gates = model.breast_gates(inputs, out)
    assert set(gates) >= {"fusion", "crop.stage3.block0", "whole.stage4.block1"}
    assert all(value.shape == (2,) for value in gates.values())
    block = model.seqmoe_gates()["whole.stage3"][0].float().mean(-1)  # rows: present views, breast by breast
    rows = block.view(3, -1).mean(1)
    torch.testing.assert_close(gates["whole.stage3.block0"], torch.stack([rows[0], rows[1:].mean()]))


def test_single_stream_ablations_have_no_fusion_and_bad_streams_fail():
    model = _model(["crop"], seqmoe=False)
    out = model({"crop": _inputs(torch.ones(2, 2, dtype=torch.bool))["crop"]})
    assert model.fusion is None and "fusion_gate" not in out and model.seqmoe_gates() == {}
    with pytest.raises(ValueError, match="streams"):
        _model(["roi"])
    with pytest.raises(ValueError, match="no input"):
        _model(["crop", "whole"])({"crop": out})


def test_short_training_run_on_synthetic_cbis_ddsm_writes_metrics(small_table, tmp_path):
    out = tmp_path / "run"
    metrics = main(["--config", CONFIG, f"data.table={small_table}", f"out={out}", "train.epochs=2"])
    assert metrics["breasts"]["train"] > 0 and metrics["breasts"]["test"] > 0
    assert {"accuracy", "f1", "sensitivity", "specificity"} <= set(metrics["binary"]["test"])
    assert [r["split"] for r in metrics["results"]] == ["val", "test"] and "auc_low" in metrics["results"][0]
    history = [json.loads(line) for line in (out / "val_log.jsonl").read_text().splitlines()]
    assert len(history) == 2 and history == metrics["history"]
    assert 0 < history[-1]["val/gate_mean/fusion"] < 1 and "val/gate_std/crop.stage4.block1" in history[-1]
    for name in ("metrics.json", "gates_test.png", "best/model.safetensors", "best/config.yaml", "results.csv"):
        assert (out / name).is_file(), name


@pytest.fixture(scope="module")
def table_without_crops(synthetic_dataset, tmp_path_factory) -> Path:
    """8 synthetic CBIS-DDSM exams cached at 32x32 by a plain ``mvmlm preprocess`` (no ``roi.enabled``)."""
    root, _ = synthetic_dataset("cbis_ddsm", exams=8, seed=0)
    params, out = PreprocessParams(height=32, width=32), tmp_path_factory.mktemp("no_crops")
    preprocess_table(cbis_ddsm.read(root, val_fraction=0.3), root, out, params, progress=False)
    return cache_folder(out, params) / "table.parquet"


def test_a_cache_without_crops_is_refused_naming_the_preprocess_option(table_without_crops, tmp_path):
    with pytest.raises(ValueError, match="roi.enabled=true"):
        main(["--config", CONFIG, f"data.table={table_without_crops}", f"out={tmp_path}"])


def test_the_whole_image_stream_alone_needs_no_crops(table_without_crops, tmp_path):
    argv = [f"data.table={table_without_crops}", f"out={tmp_path}", "model.streams=[whole]", "train.epochs=1"]
    metrics = main(["--config", CONFIG, *argv, "eval_splits=[val]", "bootstrap=0"])
    assert metrics["breasts"]["train"] > 0 and metrics["results"][0]["n"] == metrics["breasts"]["val"]


@pytest.mark.parametrize("ablation", ["dual_stream", "crop_only", "whole_only", "no_seqmoe", "size_t"])
def test_ablation_configs_build_and_take_a_training_step(ablation):
    """Each experiment config (after dual_stream.yaml), shrunk to tiny widths, builds its model and trains one step."""
    folder = REPO / "configs/dual_stream"
    tiny = [f"model.backbone_kwargs.{k}={v}" for k, v in TINY.items() if k != "freeze_stages"]
    cfg = build_config(
        MammoMambaConfig,
        [folder / "dual_stream.yaml", folder / f"{ablation}.yaml"],
        ["data.table=t", *tiny, "model.hidden=16"],
    )
    seqmoe = cfg.model.backbone_kwargs["seqmoe"]
    assert seqmoe is (ablation != "no_seqmoe") and cfg.model.backbone_kwargs["freeze_stages"] == 2
    torch.manual_seed(0)
    model = MammoMamba(cfg.model)
    inputs = {s: ib for s, ib in _inputs(torch.ones(2, 2, dtype=torch.bool)).items() if s in cfg.model.streams}
    loss = torch.nn.functional.cross_entropy(model(inputs)["logits"], torch.tensor([0, 1]))
    loss.backward()
    assert model.head[-1].weight.grad.abs().sum() > 0
    assert (model.fusion is None) == (len(cfg.model.streams) == 1)
    assert bool(model.seqmoe_gates()) == seqmoe


def test_old_keys_name_their_replacement():
    with pytest.raises(ValueError, match="train.device=cpu"):
        build_config(MammoMambaConfig, overrides=["data.table=t", "cpu=true"])
    with pytest.raises(ValueError, match="table's split column"):
        build_config(MammoMambaConfig, overrides=["data.table=t", "data.val_fraction=0.2"])


@pytest.mark.parametrize("augment", [[], ["data.augment.enabled=true", "data.augment_on=device"]], ids=["", "device"])
def test_an_interrupted_run_resumes_to_the_same_result(small_table, tmp_path, monkeypatch, augment):
    import downstream.dual_stream.run as dual_stream

    argv = ["--config", CONFIG, f"data.table={small_table}", "train.epochs=2", "eval_splits=[test]", "bootstrap=0"]
    argv += augment
    straight = main([*argv, f"out={tmp_path / 'straight'}"])
    original, calls = dual_stream.predict, []

    def interrupted_in_the_second_epoch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(dual_stream, "predict", interrupted_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        main([*argv, f"out={tmp_path / 'resumed'}"])
    monkeypatch.setattr(dual_stream, "predict", original)
    resumed = main([*argv, f"out={tmp_path / 'resumed'}", "train.resume=latest"])
    assert [h["val/auc"] for h in resumed["history"]] == [h["val/auc"] for h in straight["history"]]
    logs = [(tmp_path / run / "train_log.jsonl").read_text().splitlines() for run in ("straight", "resumed")]
    assert [json.loads(line)["loss"] for line in logs[0]] == [json.loads(line)["loss"] for line in logs[1]]
    scores = [pd.read_parquet(tmp_path / run / "predictions.parquet")["scores"] for run in ("straight", "resumed")]
    assert scores[0].tolist() == scores[1].tolist()


def test_device_augmentation_gives_the_loader_images_of_both_streams(small_table, tmp_path):
    from torch.utils.data import default_collate

    from downstream.dual_stream.data import device_hook, load_breasts, make_loader, resize_input
    from mvmlm.data.device_augment import TOLERANCE, DeviceAugment

    overrides = [f"data.table={small_table}", "data.image_size=[24,24]", "data.augment.hflip=0.5", f"out={tmp_path}"]
    cfg = build_config(MammoMambaConfig, [CONFIG], [*overrides, "data.augment.enabled=true"])
    breasts = load_breasts(cfg.data, cfg.model.streams)
    device = DeviceAugment(cfg.data.augment, cfg.data.image_size, resize_input)
    cpu = default_collate([make_loader(breasts, cfg, True).dataset[i] for i in range(4)])
    raw = default_collate([make_loader(breasts, cfg, True, device).dataset[i] for i in range(4)])
    moved = device_hook(device)(raw)
    for stream, (images, mask) in cpu["inputs"].items():
        assert raw["inputs"][stream][0].dtype == torch.uint16 and raw["affine"][stream].shape == (4, 2, 5)
        assert torch.equal(moved["inputs"][stream][1], mask) and images.shape == (4, 2, 1, 24, 24)
        assert (moved["inputs"][stream][0] - images).abs().max() <= TOLERANCE


def test_two_processes_split_the_batches_and_predict_as_one(small_table, tmp_path):
    """``accelerate launch --num_processes 2 -m downstream.dual_stream`` (batch 5 per process) against one process
    with batch 10: the same global batches, so the same test predictions.

    ``accelerate launch --cpu`` starts a single process, so the two CPU processes come from the torchrun-based
    ``--multi_gpu`` launcher with ``train.device=cpu`` (gloo). The backbone is BatchNorm-free (timm's test
    EfficientNet with GroupNorm): BatchNorm normalises over each process's own batch, by design of data parallelism.
    Tolerance:
    float32 gradient sums in another order over 8 AdamW steps, 1e-4 on the probabilities (a process training on
    all the data, or on the other half, is off by more than 1e-2).
    """
    argv = [
        f"data.table={small_table}",
        "data.image_size=[32,32]",
        "data.augment.enabled=false",
        "model.backbone=timm:test_efficientnet_gn",
        "model.hidden=16",
        "model.dropout=0",
        "optim.lr=3e-3",
        "optim.warmup_steps=0",
        "train.epochs=4",
        "train.device=cpu",
        "train.progress=false",
        "eval_splits=[test]",
        "bootstrap=0",
    ]
    one = main([*argv, f"out={tmp_path / 'one'}", "data.batch_size=10"])
    assert one["breasts"]["train"] // 5 == 4  # 23 training breasts: 4 batches of 5 (2 per process), or 2 of 10
    launch = [
        *accelerate_launch(2),
        "-m",
        "downstream.dual_stream",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launch, *argv, f"out={tmp_path / 'two'}", "data.batch_size=5"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["train"]["processes"] == 2 and two["train"]["steps_per_epoch"] == one["train"]["steps_per_epoch"] == 2
    assert len((tmp_path / "two" / "train_log.jsonl").read_text().splitlines()) == 8  # one writer: 4 epochs x 2
    predictions = [pd.read_parquet(tmp_path / run / "predictions.parquet").sort_values("id") for run in ("one", "two")]
    assert predictions[0]["id"].tolist() == predictions[1]["id"].tolist()  # every test breast once, none twice
    scores = [np.stack(p["scores"].to_numpy()) for p in predictions]
    np.testing.assert_allclose(scores[1], scores[0], rtol=0, atol=1e-4)


def test_dual_stream_model_learns_planted_lesions_on_synthetic_cbis_ddsm(tmp_path):
    """250 seeded synthetic CBIS-DDSM exams (lesions large enough to see at 192x120; 35 % of the patients test):
    test AUC well above chance, its CI too.

    The tiny backbone is wider and shallower than tiny_cpu.yaml's (stage width 16, one block per stage: it learns in
    fewer steps) and trains stages 1-2 (``freeze_stages=0``): the paper freezes ImageNet-pretrained stages, and frozen
    random-init stages would only measure how well random features separate the lesions. The training affine is on,
    as in the paper. Seeds 0-4 gave test AUCs 0.85-0.95.
    """
    from mvmlm.data.splits import patient_split
    from mvmlm.data.synthetic import write_synthetic

    root = tmp_path / "cbis"
    write_synthetic("cbis_ddsm", root, exams=250, seed=0, height=192, width=120)
    table = cbis_ddsm.read(root)
    table["split"] = patient_split(table["patient_id"], seed=0, val_fraction=0.12, test_fraction=0.35)
    cached = _cache(root, table, tmp_path / "cache", 32)
    overrides = [
        f"data.table={cached}",
        f"out={tmp_path / 'run'}",
        "data.batch_size=16",
        "data.eval_batch_size=64",
        "data.augment.enabled=true",
        "model.backbone_kwargs.dim=16",
        "model.backbone_kwargs.in_dim=8",
        "model.backbone_kwargs.depths=[1,1,1,1]",
        "model.backbone_kwargs.freeze_stages=0",
        "train.epochs=18",
        "train.save_every=1000",
        "eval_splits=[test]",
        "bootstrap=200",
    ]
    metrics = main(["--config", CONFIG, *overrides])
    test = metrics["results"][0]
    assert metrics["breasts"]["test"] >= 60
    assert test["auc"] >= 0.75 and test["auc_low"] > 0.6, test
    assert metrics["binary"]["test"]["accuracy"] > 0.6
