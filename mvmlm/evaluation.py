"""Evaluation results: metrics with patient-bootstrap confidence intervals, and tables across runs.

Every evaluation command (linear probe, fine-tune, zero-shot, the four-view classifier) collects its test
predictions as :class:`Evaluation` objects and hands them to :func:`report`::

    evaluations.append(Evaluation({"encoder": "mvmlm", "task": "mass", "fraction": 0.1, "seed": 0},
                                  y_test, scores, patients, breast_ids, task.class_names))
    metrics = report(run, evaluations, keys=["encoder", "task", "fraction"], n_resamples=1000)

It writes into the run directory: ``results.csv`` (one row per evaluation: its info, AUC, F1-macro, balanced
accuracy, each with a patient-bootstrap CI), ``summary.csv`` (mean, standard deviation and count over the seeds of
each setting), ``results.md`` (both as markdown), ``predictions.parquet`` (every score) and ``plots/`` (ROC curves
and confusion matrices per setting, one series per encoder). Model selection on validation predictions uses
:func:`validation_score`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mvmlm.metrics import auc, balanced_accuracy, bootstrap_ci, f1_macro
from mvmlm.rundir import RunDir

__all__ = [
    "METRICS",
    "predict_classes",
    "score_predictions",
    "summarize",
    "markdown_table",
    "write_results",
    "validation_score",
    "Evaluation",
    "report",
    "pivot_markdown",
    "slug",
]

#: metric name -> (function of (y_true, scores, y_pred), display name)
METRICS: dict[str, tuple[Callable[[np.ndarray, np.ndarray, np.ndarray], float], str]] = {
    "auc": (lambda y, scores, pred: auc(y, scores), "AUC"),
    "f1_macro": (lambda y, scores, pred: f1_macro(y, pred), "F1-macro"),
    "balanced_accuracy": (lambda y, scores, pred: balanced_accuracy(y, pred), "balanced acc."),
}


def predict_classes(scores: np.ndarray) -> np.ndarray:
    """Binary scores ``(n,)``: threshold 0.5; class scores ``(n, k)``: argmax."""
    scores = np.asarray(scores, dtype=float)
    return (scores >= 0.5).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)


def score_predictions(
    y_true: np.ndarray,
    scores: np.ndarray,
    patients: Sequence,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """AUC, F1-macro and balanced accuracy with percentile CIs from resampling ``patients``.

    Args:
        y_true: class index per row.
        scores: ``(n,)`` positive-class probabilities or ``(n, k)`` class scores.
        patients: patient id per row; a patient's rows are resampled together.
        n_resamples: bootstrap resamples (0 = no interval, bounds NaN).

    Returns:
        ``{metric, metric_low, metric_high}`` for each of :data:`METRICS`, plus ``n`` and ``n_patients``.
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=float)
    if len(y_true) != len(scores) or len(y_true) != len(patients):
        raise ValueError(f"lengths differ: {len(y_true)} labels, {len(scores)} scores, {len(patients)} patients")
    y_pred = predict_classes(scores)
    out: dict[str, float] = {"n": len(y_true), "n_patients": len(set(patients))}
    for name, (fn, _) in METRICS.items():

        def metric(rows: np.ndarray, fn: Callable = fn) -> float:
            return fn(y_true[rows], scores[rows], y_pred[rows])

        if n_resamples > 0:
            with warnings.catch_warnings():  # resamples that miss a predicted class are expected
                warnings.filterwarnings("ignore", "y_pred contains classes not in y_true", UserWarning)
                value, low, high = bootstrap_ci(metric, patients, n_resamples=n_resamples, level=level, seed=seed)
        else:
            value, low, high = metric(np.arange(len(y_true))), float("nan"), float("nan")
        out.update({name: value, f"{name}_low": low, f"{name}_high": high})
    return out


def summarize(records: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str] = tuple(METRICS)) -> pd.DataFrame:
    """Mean, standard deviation and count of each metric over the records sharing ``keys`` (e.g. the seeds).

    Groups keep the order in which they first appear.
    """
    grouped = records.groupby(list(keys), sort=False, dropna=False)
    parts = {"runs": grouped.size()}
    for name in metrics:
        parts[f"{name}_mean"] = grouped[name].mean()
        parts[f"{name}_std"] = grouped[name].std(ddof=1)
    return pd.DataFrame(parts).reset_index()


def _cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table of ``frame`` (floats to 4 significant digits)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def _display_name(name: str) -> str:
    return METRICS[name][1] if name in METRICS else name


def _display(records: pd.DataFrame, summary: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str]) -> tuple:
    """Readable tables: summary cells ``mean ± sd``; per-run cells ``value [low, high]``."""
    shown = summary[list(keys) + ["runs"]].copy()
    for name in metrics:
        pairs = zip(summary[f"{name}_mean"], summary[f"{name}_std"], strict=True)
        shown[_display_name(name)] = [f"{m:.3f}" if np.isnan(s) else f"{m:.3f} ± {s:.3f}" for m, s in pairs]
    bounds = {f"{name}_{side}" for name in metrics for side in ("low", "high")}
    runs = records[[c for c in records.columns if c not in metrics and c not in bounds]].copy()
    for name in metrics:
        low = records.get(f"{name}_low", pd.Series(np.nan, index=records.index))
        high = records.get(f"{name}_high", pd.Series(np.nan, index=records.index))
        runs[_display_name(name)] = [
            f"{v:.3f}" if np.isnan(lo) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
            for v, lo, hi in zip(records[name], low, high, strict=True)
        ]
    return shown, runs


def write_results(
    run: RunDir, records: Sequence[dict], keys: Sequence[str], metrics: Sequence[str] = tuple(METRICS)
) -> pd.DataFrame:
    """Write ``results.csv``, ``summary.csv`` and ``results.md`` into ``run``; returns the summary.

    Args:
        records: one dict per evaluated run (keys, seed, counts, metrics and their ``_low``/``_high`` bounds).
        keys: the columns that identify a setting; records differing only elsewhere (seeds) are summarised.
    """
    if not records:
        raise ValueError("no results to write")
    frame = pd.DataFrame(list(records))
    missing = [c for c in [*keys, *metrics] if c not in frame.columns]
    if missing:
        raise KeyError(f"results lack column(s) {missing}")
    summary = summarize(frame, keys, metrics)
    frame.to_csv(run.file("results.csv"), index=False)
    summary.to_csv(run.file("summary.csv"), index=False)
    shown, runs = _display(frame, summary, keys, metrics)
    text = (
        f"# Results\n\nMean ± standard deviation over seeds (evaluation split).\n\n{markdown_table(shown)}\n"
        "## Runs\n\nPoint estimates [bootstrap confidence interval, patients resampled] on the evaluation split.\n\n"
        f"{markdown_table(runs)}"
    )
    run.write_text("results.md", text)
    return summary


def validation_score(y_true: np.ndarray, scores: np.ndarray, metric: str) -> tuple[float, str]:
    """The model-selection score on validation predictions (higher is better) and the metric actually used.

    ``metric`` is one of :data:`METRICS` or ``neg_log_loss``; where it is undefined (e.g. AUC on a validation set
    holding one class) the negative log-loss is used instead, and the returned name says so.
    """
    from sklearn.metrics import log_loss

    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=float)
    if metric not in (*METRICS, "neg_log_loss"):
        raise ValueError(f"selection metric must be one of {[*METRICS, 'neg_log_loss']}, got {metric!r}")
    if metric in METRICS:
        value = METRICS[metric][0](y_true, scores, predict_classes(scores))
        if not np.isnan(value):
            return float(value), metric
    probs = np.stack([1 - scores, scores], axis=1) if scores.ndim == 1 else scores
    probs = np.clip(probs, 1e-7, 1.0)
    probs = probs / probs.sum(axis=1, keepdims=True)
    return -float(log_loss(y_true, probs, labels=list(range(probs.shape[1])))), "neg_log_loss"


@dataclass
class Evaluation:
    """Predictions of one evaluated setting on the evaluation split.

    Attributes:
        info: the setting's keys (e.g. encoder, task, fraction, seed) and facts to report (e.g. n_train, C).
        y_true: class index per row; scores: ``(n,)`` positive-class probabilities or ``(n, k)`` class scores.
        patients: patient id per row (bootstrap groups); ids: row ids (e.g. breast ids).
    """

    info: dict[str, Any]
    y_true: np.ndarray
    scores: np.ndarray
    patients: Sequence[str]
    ids: Sequence[str]
    class_names: Sequence[str]


def slug(values: Sequence[Any]) -> str:
    """``values`` joined by ``_`` as one file-name-safe string (other characters become ``-``)."""
    return "_".join(re.sub(r"[^A-Za-z0-9.-]+", "-", str(v)) for v in values)


def _write_predictions(run: RunDir, evaluations: Sequence[Evaluation]) -> Path:
    rows = [
        {**e.info, "id": i, "patient": p, "label": int(y), "scores": np.atleast_1d(s).tolist()}
        for e in evaluations
        for i, p, y, s in zip(e.ids, e.patients, e.y_true, np.asarray(e.scores), strict=True)
    ]
    path = run.file("predictions.parquet")
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def _plot_groups(run: RunDir, evaluations: Sequence[Evaluation], keys: Sequence[str], series_key: str) -> list[str]:
    """A ROC figure and a confusion figure per setting (keys without ``series_key``), one series per
    ``series_key`` value, each from its first evaluation (the first seed)."""
    from mvmlm.plots import plot_confusion, plot_roc

    groups: dict[tuple, dict[str, Evaluation]] = {}
    for e in evaluations:
        group = tuple(e.info[k] for k in keys if k != series_key)
        groups.setdefault(group, {}).setdefault(str(e.info.get(series_key, "")), e)
    written = []
    for group, series in groups.items():
        names = next(iter(series.values())).class_names
        title = ", ".join(f"{k} {v}" for k, v in zip([k for k in keys if k != series_key], group, strict=True))
        stem = slug(group)
        roc = {name: (e.y_true, e.scores) for name, e in series.items()}
        cm = {name: (e.y_true, predict_classes(e.scores)) for name, e in series.items()}
        written.append(str(plot_roc(run.file(f"plots/roc_{stem}.png"), roc, names, title)))
        written.append(str(plot_confusion(run.file(f"plots/confusion_{stem}.png"), cm, names, title)))
    return written


def report(
    run: RunDir,
    evaluations: Sequence[Evaluation],
    keys: Sequence[str],
    *,
    series_key: str = "encoder",
    n_resamples: int = 1000,
    plots: bool = True,
) -> dict[str, Any]:
    """Score every evaluation (with patient-bootstrap CIs), write the tables, ``predictions.parquet`` and plots.

    Args:
        keys: the ``info`` keys that identify a setting; evaluations differing elsewhere (seeds) are summarised.
        series_key: the key whose values share one figure (e.g. the encoders compared).

    Returns:
        ``{"results": [records], "summary": [rows], "plots": [paths]}`` (what ``metrics.json`` holds).
    """
    records = [
        {**e.info, **score_predictions(e.y_true, e.scores, e.patients, n_resamples=n_resamples)} for e in evaluations
    ]
    summary = write_results(run, records, keys)
    _write_predictions(run, evaluations)
    written = _plot_groups(run, evaluations, keys, series_key) if plots else []
    return {"results": records, "summary": summary.to_dict("records"), "plots": written}


def pivot_markdown(summary: Sequence[dict], rows: Sequence[str], column: str, metric: str = "auc") -> str:
    """A compact markdown table of ``metric`` (``mean ± sd`` over seeds; the value for a single run), one column per
    ``column`` value, e.g. rows task x encoder and columns the label fractions; from :func:`report`'s ``summary``."""
    frame = pd.DataFrame(list(summary))
    pairs = zip(frame[f"{metric}_mean"], frame[f"{metric}_std"], strict=True)
    frame["cell"] = [f"{m:.3f}" if np.isnan(s) else f"{m:.3f} ± {s:.3f}" for m, s in pairs]
    table = frame.pivot_table(index=list(rows), columns=column, values="cell", aggfunc="first", sort=False)
    table.columns = [f"{column} {c:g}" if isinstance(c, float) else f"{column} {c}" for c in table.columns]
    return f"{_display_name(metric)} (mean ± sd over seeds)\n\n" + markdown_table(table.reset_index())
