"""Fine-tuning: selection on validation only (the test split is read once, after training), class weights, views,
the saved model, resuming a sweep (finished units reused, an interrupted unit continued) and the config."""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import downstream.finetune.run as finetune
from downstream.common.config import DataConfig, EncoderConfig
from downstream.common.embed import build_backbone
from downstream.common.tasks import load_breasts
from downstream.finetune.config import FinetuneConfig
from downstream.finetune.model import BreastClassifier, class_weights, load_finetuned
from mvmlm.config import ConfigError, build_config
from mvmlm.data.exams import BreastDataset

from .conftest import REPO

TINY = str(REPO / "configs/finetune/tiny.yaml")


def _argv(downstream_data, checkpoint, out, *extra: str) -> list[str]:
    """The tiny config on half the training patients (a unit of 4 batches per epoch)."""
    return [
        "--config",
        TINY,
        f"data.table={downstream_data.table}",
        f"out={out}",
        "fractions=[0.5]",
        f"encoders.mvmlm.checkpoint={checkpoint}",
        *extra,
    ]


def test_test_split_is_read_once_after_model_selection_on_validation(
    downstream_data, random_checkpoint, tmp_path, monkeypatch
):
    reads: list[str] = []
    original = finetune.predict

    def recording(acc, model, loader):
        reads.append(loader.dataset.split)
        return original(acc, model, loader)

    monkeypatch.setattr(finetune, "predict", recording)
    metrics = finetune.main(
        _argv(
            downstream_data, random_checkpoint, tmp_path / "run", "train.epochs=3", "train.early_stop=3", "bootstrap=20"
        )
    )
    (result,) = metrics["results"]
    assert result["epochs_run"] == 3 and reads == ["val"] * 3 + ["test"]
    (history,) = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    scores = [record["val/auc"] for record in history["history"]]
    assert result["best_epoch"] == int(np.argmax(scores)) + 1 and result["val_score"] == max(scores)
    assert result["selected_by"] == "val/auc" and (tmp_path / "run" / "plots" / "roc_mass_0.5.png").is_file()
    unit = tmp_path / "run" / "units" / "mvmlm_mass_0.5_0"
    assert len((unit / "val_log.jsonl").read_text().splitlines()) == 3
    assert not (unit / "checkpoints").exists() and not (unit / "best").exists()  # a finished unit keeps its logs


def test_without_a_finite_validation_score_the_final_weights_are_kept(
    downstream_data, random_checkpoint, tmp_path, monkeypatch, caplog
):
    reads: list[str] = []
    original = finetune.predict

    def recording(acc, model, loader):
        reads.append(loader.dataset.split)
        return original(acc, model, loader)

    monkeypatch.setattr(finetune, "predict", recording)
    monkeypatch.setattr(finetune, "validation_metrics", lambda y, scores: {"val/auc": math.nan})
    with caplog.at_level(logging.WARNING):
        metrics = finetune.main(
            _argv(downstream_data, random_checkpoint, tmp_path / "run", "train.epochs=2", "bootstrap=0", "plots=false")
        )
    (result,) = metrics["results"]
    assert result["epochs_run"] == 2 and result["best_epoch"] is None and result["val_score"] is None
    assert reads == ["val", "val", "test"] and "no finite val/auc" in caplog.text


def test_class_weights_balance_the_training_labels():
    weights = class_weights(np.array([0, 0, 0, 1]), 3)
    assert weights.tolist() == pytest.approx([4 / 6, 2.0, 0.0])  # n / (present classes * count); absent: 0


def test_a_missing_view_does_not_change_the_prediction(random_checkpoint):
    torch.manual_seed(0)
    model = BreastClassifier(build_backbone(EncoderConfig(checkpoint=str(random_checkpoint))), 2).eval()
    images = torch.rand(2, 2, 1, 64, 48)
    present = torch.tensor([[True, False], [True, True]])
    noisy = images.clone()
    noisy[0, 1] = torch.rand(1, 64, 48)  # the absent view's pixels
    with torch.no_grad():
        logits, again = model(images, present), model(noisy, present)
        single = model.head(model.backbone(images[0, :1]))
    torch.testing.assert_close(logits, again)
    torch.testing.assert_close(logits[0], single[0])
    assert logits.shape == (2, 2)


def test_saved_fine_tuned_model_is_self_contained_and_reproduces_the_test_predictions(
    downstream_data, random_checkpoint, tmp_path
):
    run = tmp_path / "run"
    finetune.main(
        _argv(
            downstream_data, random_checkpoint, run, "save_models=true", "train.epochs=2", "bootstrap=0", "plots=false"
        )
    )
    (saved,) = (run / "models").iterdir()
    assert saved.name == "mvmlm_mass_0.5_0"
    moved = shutil.move(saved, tmp_path / "elsewhere")  # needs nothing from the run or the pretraining folder
    model, config = load_finetuned(moved)
    assert config.task == "mass" and config.class_names == ["no mass", "mass"] and config.encoder.init == "random"
    expected = pd.read_parquet(run / "predictions.parquet")
    breasts = load_breasts(DataConfig(table=str(downstream_data.table))).set_index("breast_id")
    test = breasts.loc[expected["id"]].reset_index()
    views = BreastDataset(test, labels=())
    with torch.no_grad():
        scores = [model(item["images"][None], item["mask"][None]).softmax(-1)[0, 1].item() for item in views]
    np.testing.assert_allclose(scores, [s[0] for s in expected["scores"]], rtol=1e-4, atol=1e-5)


def test_an_interrupted_sweep_resumes_from_its_finished_runs(downstream_data, random_checkpoint, tmp_path, monkeypatch):
    run = tmp_path / "run"
    argv = _argv(downstream_data, random_checkpoint, run, "seeds=[0,1]", "train.epochs=1", "bootstrap=0", "plots=false")
    original, calls = finetune.finetune_one, []

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first sweep is interrupted while training its second run
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(finetune, "finetune_one", counted)
    with pytest.raises(KeyboardInterrupt):
        finetune.main(argv)
    (finished,) = (run / "finished").iterdir()
    first = json.loads(finished.read_text())["result"]
    metrics = finetune.main([*argv, "--resume", "latest"])
    assert len(calls) == 3 and len(metrics["results"]) == 2  # only the unfinished seed trains again
    seed0 = pd.read_parquet(run / "predictions.parquet").query("seed == 0")
    np.testing.assert_allclose([s[0] for s in seed0["scores"]], first["scores"])
    assert finished.name == "mvmlm_mass_0.5_0.json" and len(list((run / "finished").iterdir())) == 2
    finetune.main([*argv, "train.resume=latest", "optim.lr=0.01"])  # other settings: nothing is reused
    assert len(calls) == 5


def test_an_interrupted_unit_continues_from_its_checkpoint(downstream_data, random_checkpoint, tmp_path, monkeypatch):
    run = tmp_path / "run"
    argv = _argv(downstream_data, random_checkpoint, run, "train.epochs=2", "bootstrap=0", "plots=false")
    original, evaluations = finetune.validation_metrics, []

    def interrupted(y, scores):
        evaluations.append(1)
        if len(evaluations) == 2:  # killed at the end of epoch 2, after the checkpoint of epoch 1
            raise KeyboardInterrupt
        return original(y, scores)

    monkeypatch.setattr(finetune, "validation_metrics", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune.main(argv)
    first = json.loads((run / "units" / "mvmlm_mass_0.5_0" / "val_log.jsonl").read_text())
    with pytest.raises(ConfigError, match="resume=latest"):  # a new run would overwrite the unfinished one
        finetune.main(argv)
    (result,) = finetune.main([*argv, "--resume", "latest"])["results"]
    assert len(evaluations) == 3  # only epoch 2 trained (and was evaluated) again
    (history,) = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert result["epochs_run"] == 2 and history["history"][0] == first
    assert [r["epoch"] for r in history["history"]] == [1, 2]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("train.patience=5", "train.early_stop"),
        ("train.select_metric=auc", "train.select"),
        ("train.cpu=true", "train.device=cpu"),
        ("train.augment_params.degrees=3", "data.augment"),
        ("train.batch_size=4", "data.batch_size"),
        ("resume=true", "train.resume"),
    ],
)
def test_old_keys_name_their_replacement(old, new):
    with pytest.raises(ConfigError, match=f"renamed: use {new}"):
        finetune.main(["data.table=x", old])


@pytest.mark.parametrize(
    ("value", "refused"),
    [
        ("train.resume=true", "none or latest"),
        ("train.resume=/some/checkpoint", "none or latest"),
        ("train.select=auc", "val/auc"),
        ("train.seed=3", "seeds="),
    ],
)
def test_settings_fine_tuning_cannot_use_are_refused(value, refused):
    with pytest.raises(ConfigError, match=refused):
        finetune.main(["data.table=x", "encoders.a.source=timm", value])


@pytest.mark.parametrize("name", ["vindr", "rsna", "tiny"])
def test_shipped_configs_load(name):
    cfg = build_config(
        FinetuneConfig,
        [REPO / f"configs/finetune/{name}.yaml"],
        ["data.table=t.parquet", "encoders.mvmlm.checkpoint=ckpt"],
    )
    finetune.check_config(cfg)
    assert cfg.train.select == "val/auc" and cfg.encoders["mvmlm"].checkpoint == "ckpt"


def test_device_augmentation_trains_as_loader_augmentation(downstream_data, random_checkpoint, tmp_path, monkeypatch):
    from mvmlm.data.device_augment import DeviceAugment

    hooked, images = [], DeviceAugment.images
    monkeypatch.setattr(DeviceAugment, "images", lambda self, batch: hooked.append(1) or images(self, batch))
    losses = {}
    for where in ("loader", "device"):
        out = tmp_path / where
        extra = [
            "train.epochs=1",
            "bootstrap=0",
            "plots=false",
            "data.augment.enabled=true",
            f"data.augment_on={where}",
        ]
        finetune.main(_argv(downstream_data, random_checkpoint, out, *extra))
        log = (out / "units" / "mvmlm_mass_0.5_0" / "train_log.jsonl").read_text().splitlines()
        losses[where] = [json.loads(line)["loss"] for line in log]
    assert len(hooked) == len(losses["device"])  # one batch per step, augmented on the device
    assert len(losses["device"]) == 4 and losses["device"] == pytest.approx(losses["loader"], rel=1e-4)
