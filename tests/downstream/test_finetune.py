"""Fine-tuning: selection on validation only (the test split is read once, after training), class weights, views."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import downstream.finetune as finetune
from downstream.embed import EncoderConfig, build_backbone
from downstream.finetune import BreastClassifier, class_weights, load_finetuned
from downstream.tasks import DataConfig, load_breasts
from mvmlm.data.exams import BreastDataset

from .conftest import REPO

TINY = str(REPO / "configs/downstream/tiny_finetune.yaml")


def test_test_split_is_read_once_after_model_selection_on_validation(downstream_data, random_checkpoint, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    reads: list[str] = []
    original = finetune.predict

    def recording(acc, model, loader):
        reads.append(loader.dataset.split)
        return original(acc, model, loader)

    monkeypatch.setattr(finetune, "predict", recording)
    metrics = finetune.main(["--config", TINY, f"data.table={downstream_data.table}", f"out={tmp_path / 'run'}",
                             f"encoders.mvmlm.checkpoint={random_checkpoint}", "train.epochs=3", "train.patience=3",
                             "bootstrap=20"])  # fmt: skip
    (result,) = metrics["results"]
    runs = result["epochs_run"]
    assert reads == ["val"] * runs + ["test"]
    (history,) = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    scores = [epoch["val_score"] for epoch in history["history"]]
    assert result["best_epoch"] == int(np.argmax(scores)) and result["val_score"] == max(scores)
    assert (tmp_path / "run" / "plots" / "roc_mass_1.0.png").is_file()


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
    finetune.main(["--config", TINY, f"data.table={downstream_data.table}", f"out={run}", "save_models=true",
                   f"encoders.mvmlm.checkpoint={random_checkpoint}", "train.epochs=2", "bootstrap=0"])  # fmt: skip
    (saved,) = (run / "models").iterdir()
    assert saved.name == "mvmlm_mass_1.0_0"
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


def test_an_interrupted_sweep_resumes_from_its_finished_runs(downstream_data, random_checkpoint, tmp_path,
                                                             monkeypatch):  # fmt: skip
    run = tmp_path / "run"
    argv = ["--config", TINY, f"data.table={downstream_data.table}", f"out={run}", "seeds=[0,1]", "train.epochs=1",
            f"encoders.mvmlm.checkpoint={random_checkpoint}", "bootstrap=0", "plots=false"]  # fmt: skip
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
    metrics = finetune.main([*argv, "resume=true"])
    assert len(calls) == 3 and len(metrics["results"]) == 2  # only the unfinished seed trains again
    seed0 = pd.read_parquet(run / "predictions.parquet").query("seed == 0")
    np.testing.assert_allclose([s[0] for s in seed0["scores"]], first["scores"])
    assert finished.name == "mvmlm_mass_1.0_0.json" and len(list((run / "finished").iterdir())) == 2
    finetune.main([*argv, "resume=true", "optim.lr=0.01"])  # other settings: nothing is reused
    assert len(calls) == 5
