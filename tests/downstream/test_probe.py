"""Linear probe: the command end to end, selection on validation only, and the pretrained-vs-random margin."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from downstream.common.tasks import get_task
from downstream.probe.config import ProbeConfig
from downstream.probe.run import _probe_task, fit_probe, main
from mvmlm.config import ConfigError, build_config

from .conftest import REPO

TINY = str(REPO / "configs/probe/tiny.yaml")


#: the planted task and the margin the pretrained tiny model must beat its random init by (mean test AUC over 3 seeds
#: at 10 % of the training patients). Measured with 40 pretraining steps: 0.944 vs 0.816 (32 steps: 0.998, 48: 0.983).
PLANTED_TASK, FRACTION, MARGIN = "density", 0.1, 0.05


def test_pretrained_model_beats_its_random_init_on_a_planted_task(downstream_data, pretrained_checkpoint, tmp_path):
    metrics = main(
        [
            "--config",
            TINY,
            f"data.table={downstream_data.table}",
            f"out={tmp_path}",
            f"encoders.mvmlm.checkpoint={pretrained_checkpoint}",
            f"embed.cache={tmp_path / 'emb'}",
            f"tasks=[{PLANTED_TASK}]",
            f"fractions=[{FRACTION}]",
            "seeds=[0,1,2]",
            "bootstrap=0",
            "plots=false",
        ]
    )
    auc = {row["encoder"]: row["auc_mean"] for row in metrics["summary"]}
    assert auc["mvmlm"] >= auc["random"] + MARGIN, auc


def test_probe_command_writes_the_run_directory(downstream_data, random_checkpoint, tmp_path):
    out = tmp_path / "run"
    metrics = main(
        [
            "--config",
            TINY,
            f"data.table={downstream_data.table}",
            f"out={out}",
            f"encoders.mvmlm.checkpoint={random_checkpoint}",
            f"embed.cache={tmp_path / 'emb'}",
            "tasks=[mass,density]",
            "fractions=[0.1,1.0]",
            "seeds=[0,1]",
            "bootstrap=20",
        ]
    )
    results = pd.DataFrame(metrics["results"])
    assert len(results) == 2 * 2 * (2 + 1)  # encoders x tasks x (2 seeds at 10 %, 1 at 100 %: the same probe)
    assert set(results.encoder) == {"mvmlm", "random"} and set(results.C) <= {1e-3, 1e-2, 1e-1, 1.0}
    small = results[results.fraction == 0.1]
    assert (small.n_train < results[results.fraction == 1.0].n_train.min()).all()
    assert results.auc.between(0, 1).all() and (results.auc_low <= results.auc_high).all()
    assert json.loads((out / "metrics.json").read_text())["summary"][0]["runs"] == 2
    for name in (
        "config.yaml",
        "results.csv",
        "summary.csv",
        "results.md",
        "predictions.parquet",
        "plots/roc_mass_0.1.png",
        "plots/confusion_density_1.0.png",
    ):
        assert (out / name).is_file(), name


def _breasts(n_patients: int = 60, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """Two breasts per patient, features carrying the mass label; splits by patient."""
    rng = np.random.default_rng(seed)
    patient = np.repeat([f"P{i:03d}" for i in range(n_patients)], 2)
    split = np.repeat(rng.choice(["train", "val", "test"], n_patients, p=[0.5, 0.2, 0.3]), 2)
    mass = (rng.random(2 * n_patients) < 0.4).astype(int)
    x = rng.normal(size=(2 * n_patients, 6)) + 0.8 * mass[:, None] * np.eye(6)[0]
    frame = pd.DataFrame(
        {
            "patient": patient,
            "split": split,
            "mass": pd.array(mass, dtype="Int64"),
            "breast_id": [f"b{i}" for i in range(2 * n_patients)],
        }
    )
    return x, frame


def test_regularisation_is_chosen_on_validation_never_on_test():
    x, breasts = _breasts()
    cfg = ProbeConfig(fractions=[0.5, 1.0], seeds=[0, 1], c_grid=[1e-4, 1e-2, 1.0], bootstrap=0)
    task = get_task("mass")
    first = _probe_task(x, task, breasts, cfg, "enc")
    test = (breasts.split == "test").to_numpy()
    flipped = breasts.assign(mass=np.where(test, 1 - breasts.mass, breasts.mass))
    x_changed = np.where(test[:, None], -x, x)
    second = _probe_task(x_changed, task, flipped, cfg, "enc")
    for a, b in zip(first, second, strict=True):
        assert a.info["C"] == b.info["C"] and a.info["val_score"] == b.info["val_score"]  # selection unchanged
        assert a.info["selected_by"] == "auc" and a.info["C"] in cfg.c_grid
        np.testing.assert_array_equal(a.y_true, 1 - b.y_true)  # while the test split did change
    assert {e.info["n_train"] for e in first if e.info["fraction"] == 1.0} == {int((breasts.split == "train").sum())}


def test_the_chosen_strength_is_the_best_on_validation():
    x, breasts = _breasts(seed=1)
    train, val = (breasts.split == "train").to_numpy(), (breasts.split == "val").to_numpy()
    y = breasts.mass.to_numpy(dtype=int)
    fit = fit_probe(x[train], y[train], x[val], y[val], 2, ProbeConfig(c_grid=[1.0, 1e-4, 1e-2]))
    assert set(fit.sweep) == {1e-4, 1e-2, 1.0}
    assert fit.c == max(fit.sweep, key=fit.sweep.get) and fit.val_score == max(fit.sweep.values())
    assert fit.scores(x, 2).shape == (len(x),)
    with pytest.raises(ValueError, match="only class"):
        fit_probe(x[:10], np.zeros(10, int), x[10:20], y[10:20], 2, ProbeConfig())


def test_missing_classes_of_a_small_fraction_get_zero_probability():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 4))
    y = np.repeat([0, 1, 3], 20)  # class 2 absent from training
    fit = fit_probe(x, y, x, y, 4, ProbeConfig(c_grid=[1.0]))
    scores = fit.scores(x, 4)
    assert scores.shape == (60, 4) and (scores[:, 2] == 0).all()
    np.testing.assert_allclose(scores.sum(1), 1.0)


def test_probe_without_encoders_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no encoders"):
        main(["data.table=missing.parquet", f"out={tmp_path}"])


@pytest.mark.parametrize("files", [["vindr"], ["rsna"], ["tiny"], ["vindr", "imagenet_baseline"]])
def test_shipped_configs_load(files):
    cfg = build_config(
        ProbeConfig,
        [REPO / f"configs/probe/{name}.yaml" for name in files],
        ["data.table=t.parquet", "encoders.mvmlm.checkpoint=ckpt"],
    )
    assert cfg.encoders["random"].checkpoint == "ckpt" and cfg.encoders["random"].init == "random"
    assert ("imagenet" in cfg.encoders) == ("imagenet_baseline" in files)
