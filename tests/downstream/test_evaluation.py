"""Results tables, bootstrap-scored predictions, validation scores and plots (mvmlm.evaluation, mvmlm.plots)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from mvmlm.evaluation import Evaluation, pivot_markdown, report, score_predictions, validation_score, write_results
from mvmlm.plots import plot_confusion, plot_roc
from mvmlm.rundir import RunDir


def _binary(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    scores = np.clip(0.5 * y + rng.normal(0.25, 0.25, n), 0, 1)
    patients = np.repeat(np.arange(n // 2), 2).astype(str)
    return y, scores, patients


def test_scores_match_scikit_learn_and_intervals_hold_the_estimate():
    y, scores, patients = _binary()
    out = score_predictions(y, scores, patients, n_resamples=200)
    assert out["auc"] == pytest.approx(roc_auc_score(y, scores))
    assert out["f1_macro"] == pytest.approx(f1_score(y, scores >= 0.5, average="macro"))
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, scores >= 0.5))
    for name in ("auc", "f1_macro", "balanced_accuracy"):
        assert out[f"{name}_low"] <= out[name] <= out[f"{name}_high"]
    assert out["n"] == 120 and out["n_patients"] == 60


def test_multiclass_scores_use_macro_one_vs_rest_auc():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 80)
    scores = rng.dirichlet(np.ones(4), 80) + np.eye(4)[y] * 0.3
    out = score_predictions(y, scores, np.arange(80).astype(str), n_resamples=0)
    assert out["auc"] == pytest.approx(roc_auc_score(y, scores / scores.sum(1, keepdims=True), multi_class="ovr"))
    assert np.isnan(out["auc_low"])
    with pytest.raises(ValueError, match="lengths differ"):
        score_predictions(y, scores[:-1], np.arange(80).astype(str))


def test_validation_score_falls_back_to_log_loss_on_one_class():
    assert validation_score(np.array([0, 1, 1]), np.array([0.2, 0.7, 0.9]), "auc") == (1.0, "auc")
    value, used = validation_score(np.array([1, 1, 1]), np.array([0.2, 0.7, 0.9]), "auc")
    assert used == "neg_log_loss" and value == pytest.approx(np.mean(np.log([0.2, 0.7, 0.9])))
    with pytest.raises(ValueError, match="selection metric"):
        validation_score(np.array([0, 1]), np.array([0.2, 0.7]), "accuracy")


def test_results_tables_summarise_seeds(tmp_path):
    run = RunDir(tmp_path)
    records = [
        {
            "encoder": e,
            "task": "mass",
            "fraction": f,
            "seed": s,
            "auc": a,
            "auc_low": a - 0.1,
            "auc_high": a + 0.1,
            "f1_macro": 0.5,
            "balanced_accuracy": 0.5,
        }
        for e, f, s, a in [("mv", 0.1, 0, 0.8), ("mv", 0.1, 1, 0.9), ("random", 0.1, 0, 0.6), ("random", 0.1, 1, 0.6)]
    ]
    summary = write_results(run, records, ["encoder", "task", "fraction"])
    assert summary.auc_mean.tolist() == pytest.approx([0.85, 0.6])
    assert summary.auc_std.tolist() == pytest.approx([np.std([0.8, 0.9], ddof=1), 0.0])
    assert summary.runs.tolist() == [2, 2]
    assert len(pd.read_csv(tmp_path / "results.csv")) == 4
    markdown = (tmp_path / "results.md").read_text()
    assert "| mv | mass | 0.1 | 2 | 0.850 ± 0.071 |" in markdown
    assert "0.800 [0.700, 0.900]" in markdown
    with pytest.raises(KeyError, match="auc"):
        write_results(run, [{"encoder": "mv", "task": "mass", "fraction": 1.0}], ["encoder", "task", "fraction"])


def test_report_writes_tables_predictions_and_one_figure_per_setting(tmp_path):
    y, scores, patients = _binary()
    ids = [f"b{i}" for i in range(len(y))]
    evaluations = [
        Evaluation(
            {"encoder": e, "task": "mass", "fraction": 1.0, "seed": s},
            y,
            np.clip(scores + 0.05 * s, 0, 1),
            patients,
            ids,
            ("no mass", "mass"),
        )
        for e in ("mv", "random")
        for s in (0, 1)
    ]
    out = report(RunDir(tmp_path), evaluations, ["encoder", "task", "fraction"], n_resamples=50)
    assert len(out["results"]) == 4 and len(out["summary"]) == 2
    assert sorted(p.rsplit("/", 1)[1] for p in out["plots"]) == ["confusion_mass_1.0.png", "roc_mass_1.0.png"]
    predictions = pd.read_parquet(tmp_path / "predictions.parquet")
    assert len(predictions) == 4 * len(y) and set(predictions.encoder) == {"mv", "random"}


def test_plots_are_png_files(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    scores = rng.dirichlet(np.ones(3), 60)
    names = ["A", "B", "C"]
    roc = plot_roc(tmp_path / "roc.png", {"one": (y, scores), "two": (y, scores[:, ::-1])}, names, "density")
    cm = plot_confusion(tmp_path / "cm.png", {"one": (y, scores.argmax(1))}, names)
    for path in (roc, cm):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 200
    with pytest.raises(ValueError, match="3 columns for 2 class names"):
        plot_roc(tmp_path / "bad.png", {"one": (y, scores)}, ["A", "B"])


def test_pivot_shows_mean_and_spread_per_fraction():
    summary = [
        {"encoder": "mv", "task": "mass", "fraction": 0.1, "runs": 2, "auc_mean": 0.85, "auc_std": 0.0707},
        {"encoder": "mv", "task": "mass", "fraction": 1.0, "runs": 1, "auc_mean": 0.9, "auc_std": float("nan")},
    ]
    text = pivot_markdown(summary, ["task", "encoder"], "fraction")
    assert "| task | encoder | fraction 0.1 | fraction 1 |" in text
    assert "| mass | mv | 0.850 ± 0.071 | 0.900 |" in text
