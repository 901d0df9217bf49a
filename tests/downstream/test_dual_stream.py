"""Mammo-Mamba dual-stream model (tiny backbone) and a short end-to-end run on synthetic CBIS-DDSM."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from downstream.dual_stream import MammoMambaConfig, main
from downstream.dual_stream_model import MammoMamba, MammoMambaModelConfig
from mvmlm.config import load_config
from mvmlm.data.preprocess import PreprocessParams, cache_folder, preprocess_table
from mvmlm.data.sources import cbis_ddsm

CONFIG = "configs/downstream/mammo_mamba/tiny_cpu.yaml"
TINY = {"depths": [1, 1, 2, 2], "dim": 8, "in_dim": 4, "heads": [1, 1, 2, 2], "freeze_stages": 2,
        "drop_path_rate": 0.0}  # fmt: skip


def _model(streams: list[str], seqmoe: bool = True) -> MammoMamba:
    torch.manual_seed(0)
    cfg = MammoMambaModelConfig(backbone_kwargs={**TINY, "seqmoe": seqmoe}, streams=streams, hidden=16, dropout=0.0)
    return MammoMamba(cfg).eval()


def _inputs(mask: torch.Tensor) -> dict:
    gen = torch.Generator().manual_seed(1)
    return {s: (torch.rand(2, 2, 1, 64, 64, generator=gen), mask.clone()) for s in ("crop", "whole")}


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


def test_single_stream_ablations_have_no_fusion_and_bad_streams_fail():
    model = _model(["crop"], seqmoe=False)
    out = model({"crop": _inputs(torch.ones(2, 2, dtype=torch.bool))["crop"]})
    assert model.fusion is None and "fusion_gate" not in out and model.seqmoe_gates() == {}
    with pytest.raises(ValueError, match="streams"):
        _model(["roi"])
    with pytest.raises(ValueError, match="no input"):
        _model(["crop", "whole"])({"crop": out})


def test_short_training_run_on_synthetic_cbis_ddsm_writes_metrics(synthetic_dataset, tmp_path):
    root, _ = synthetic_dataset("cbis_ddsm", exams=8, seed=0)
    params = PreprocessParams(height=64, width=64)
    preprocess_table(cbis_ddsm.read(root), root, tmp_path / "cache", params, progress=False)
    table = cache_folder(tmp_path / "cache", params) / "table.parquet"
    out = tmp_path / "run"
    overrides = [f"data.table={table}", f"data.root={root}", f"out={out}", "optim.epochs=2", "eval_splits=[test]"]
    metrics = main(["--config", CONFIG, *overrides])
    assert metrics["breasts"]["train"] > 0 and metrics["breasts"]["test"] > 0
    assert {"accuracy", "f1", "sensitivity", "specificity"} <= set(metrics["binary"]["test"])
    assert metrics["results"][0]["split"] == "test" and "auc_low" in metrics["results"][0]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2
    assert all(0 < mean < 1 for mean, _ in log[-1]["gates_mean_std"].values())
    assert "fusion" in log[-1]["gates_mean_std"] and "crop.stage4.block1" in log[-1]["gates_mean_std"]
    for name in ("metrics.json", "gates_test.png", "best/model.safetensors", "results.csv"):
        assert (out / name).is_file(), name
    assert list((tmp_path / "cache").glob("roi64-*/images/cbis_ddsm/*/*.npy"))  # crops cached beside the images


@pytest.mark.parametrize("ablation", ["dual_stream", "crop_only", "whole_only", "no_seqmoe", "size_t"])
def test_ablation_configs_build_and_take_a_training_step(ablation):
    """Each experiment config (after dual_stream.yaml), shrunk to tiny widths, builds its model and trains one step."""
    folder = "configs/downstream/mammo_mamba"
    tiny = [f"model.backbone_kwargs.{k}={v}" for k, v in TINY.items() if k != "freeze_stages"]
    argv = ["--config", f"{folder}/dual_stream.yaml", "--config", f"{folder}/{ablation}.yaml", "data.table=t",
            "data.root=r", *tiny, "model.hidden=16"]  # fmt: skip
    cfg = load_config(MammoMambaConfig, argv)
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


def test_dual_stream_model_learns_planted_lesions_on_synthetic_cbis_ddsm(tmp_path):
    """500 seeded synthetic CBIS-DDSM exams (lesions large enough to see at 256x160): test AUC well above chance.

    Stages 1-2 are trained here (``freeze_stages=0``): the paper freezes ImageNet-pretrained stages, and frozen
    random-init stages would only measure how well random features separate the lesions.
    """
    from mvmlm.data.synthetic import write_synthetic

    root = tmp_path / "cbis"
    write_synthetic("cbis_ddsm", root, exams=500, seed=0, height=256, width=160)
    params = PreprocessParams(height=32, width=32)
    preprocess_table(cbis_ddsm.read(root), root, tmp_path / "cache", params, progress=False)
    table = cache_folder(tmp_path / "cache", params) / "table.parquet"
    overrides = [f"data.table={table}", f"data.root={root}", f"out={tmp_path / 'run'}", "data.image_size=[32,32]",
                 "data.roi.size=32", "model.backbone_kwargs.freeze_stages=0", "optim.epochs=12", "eval_splits=[test]",
                 "bootstrap=200"]  # fmt: skip
    metrics = main(["--config", CONFIG, *overrides])
    test = metrics["results"][0]
    assert metrics["breasts"]["test"] >= 60
    assert test["auc"] >= 0.75 and test["auc_low"] > 0.6, test
    assert metrics["binary"]["test"]["accuracy"] > 0.6


def test_an_interrupted_run_resumes_to_the_same_result(synthetic_dataset, tmp_path, monkeypatch):
    import downstream.dual_stream as dual_stream

    root, _ = synthetic_dataset("cbis_ddsm", exams=8, seed=0)
    params = PreprocessParams(height=64, width=64)
    preprocess_table(cbis_ddsm.read(root), root, tmp_path / "cache", params, progress=False)
    table = cache_folder(tmp_path / "cache", params) / "table.parquet"
    argv = ["--config", CONFIG, f"data.table={table}", f"data.root={root}", "optim.epochs=3", "eval_splits=[test]",
            "bootstrap=0"]  # fmt: skip
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
    resumed = main([*argv, f"out={tmp_path / 'resumed'}", "resume=latest"])
    assert [e["loss"] for e in resumed["epochs"]] == [e["loss"] for e in straight["epochs"]]
    scores = [
        pd.read_parquet(tmp_path / run / "predictions.parquet")["scores"].tolist() for run in ("straight", "resumed")
    ]
    assert scores[0] == scores[1]
    assert len((tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()) == 3
