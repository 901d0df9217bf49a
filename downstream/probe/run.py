"""Linear probe of frozen image encoders at label fractions: ``python -m downstream.probe --config ...``
(also ``mvmlm probe``).

For every encoder (an MV-MLM checkpoint and its baselines: random init, timm ImageNet weights), task, label
fraction and seed (at fraction 1 only the first seed, since every seed would fit the same probe): breast
embeddings (views pooled) of a stratified, patient-level fraction of the training split are standardised,
logistic regression is fitted for every regularisation strength ``C`` of the sweep (one pass over the cached
features, warm-started), the ``C`` with the best validation score is kept, and only that model is scored on the
test split (AUC, F1-macro, balanced accuracy with patient-bootstrap 95 % CIs).

    python -m downstream.probe --config configs/probe/vindr.yaml \\
        data.table=cache/1520x912-xxxx/table.parquet encoders.mvmlm.checkpoint=runs/pretrain/model

The run directory holds ``config.yaml``, ``provenance.json``, ``log.txt``, ``metrics.json``, ``results.csv``,
``summary.csv``, ``results.md``, ``predictions.parquet`` and ``plots/`` (see :func:`mvmlm.evaluation.report`).
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from downstream.common.embed import breast_embeddings, image_embeddings
from downstream.common.tasks import Task, get_tasks, load_breasts, sample_fraction
from downstream.probe import COMMAND
from downstream.probe.config import ProbeConfig
from mvmlm.config import ConfigError
from mvmlm.data.preprocess import read_cached_table
from mvmlm.evaluation import Evaluation, pivot_markdown, report, validation_score
from mvmlm.rundir import RunDir

__all__ = ["ProbeConfig", "ProbeFit", "fit_probe", "run_probe", "main"]

log = logging.getLogger(__name__)


@dataclass
class ProbeFit:
    """The probe chosen on validation."""

    scaler: StandardScaler
    model: LogisticRegression
    c: float
    val_score: float
    selected_by: str
    sweep: dict[float, float]  # C -> validation score

    def scores(self, features: np.ndarray, num_classes: int) -> np.ndarray:
        """Positive-class probabilities ``(n,)`` (binary) or class probabilities ``(n, num_classes)``."""
        return _class_scores(self.model, self.scaler.transform(features), num_classes)


def _class_scores(model: LogisticRegression, features: np.ndarray, num_classes: int) -> np.ndarray:
    """Probabilities in the task's class order; classes the training subset lacked get 0."""
    probs = np.zeros((len(features), num_classes))
    probs[:, model.classes_] = model.predict_proba(features)
    return probs[:, 1] if num_classes == 2 else probs


def fit_probe(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, num_classes: int, cfg: ProbeConfig
) -> ProbeFit:
    """Fit logistic regression for every ``C`` of ``cfg.c_grid`` (ascending, warm-started); keep the best on
    validation (ties: the stronger regularisation).

    Raises:
        ValueError: the training labels hold a single class.
    """
    present = np.unique(y_train)
    if present.size < 2:
        raise ValueError(f"training subset holds only class {present.tolist()}; a probe needs two classes")
    scaler = StandardScaler().fit(x_train)
    train, val = scaler.transform(x_train), scaler.transform(x_val)
    model = LogisticRegression(
        class_weight=None if cfg.class_weight == "none" else cfg.class_weight, max_iter=cfg.max_iter, warm_start=True
    )
    best: ProbeFit | None = None
    sweep: dict[float, float] = {}
    for c in sorted(cfg.c_grid):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.set_params(C=c).fit(train, y_train)
        score, used = validation_score(y_val, _class_scores(model, val, num_classes), cfg.select_metric)
        sweep[c] = score
        if best is None or score > best.val_score:
            best = ProbeFit(scaler, copy.deepcopy(model), c, score, used, sweep)
    assert best is not None
    return best


def _probe_task(x: np.ndarray, task: Task, breasts, cfg: ProbeConfig, encoder: str) -> list[Evaluation]:
    labels = task.labels(breasts)
    split = breasts["split"].to_numpy()
    train = np.flatnonzero(split == cfg.data.train_split)
    val = np.flatnonzero((split == cfg.data.val_split) & (labels >= 0))
    test = np.flatnonzero((split == cfg.data.test_split) & (labels >= 0))
    patients = breasts["patient"].to_numpy()
    out = []
    for fraction in cfg.fractions:
        for seed in cfg.seeds if fraction < 1 else cfg.seeds[:1]:  # all patients: every seed fits the same probe
            chosen = train[sample_fraction(patients[train], labels[train], fraction, seed)]
            fit = fit_probe(x[chosen], labels[chosen], x[val], labels[val], task.num_classes, cfg)
            info = {
                "encoder": encoder,
                "task": task.name,
                "fraction": fraction,
                "seed": seed,
                "n_train": len(chosen),
                "n_train_patients": len(set(patients[chosen])),
                "C": fit.c,
                "val_score": fit.val_score,
                "selected_by": fit.selected_by,
            }
            scores = fit.scores(x[test], task.num_classes)
            out.append(
                Evaluation(
                    info, labels[test], scores, patients[test], breasts["breast_id"].to_numpy()[test], task.class_names
                )
            )
            log.info(
                "probe %s %s fraction %g seed %d: %d train breasts, C=%g, val %s %.3f",
                encoder,
                task.name,
                fraction,
                seed,
                len(chosen),
                fit.c,
                fit.selected_by,
                fit.val_score,
            )
    return out


def run_probe(cfg: ProbeConfig, run: RunDir) -> dict:
    """Embed, probe and report every encoder x task x fraction x seed; returns what ``metrics.json`` holds."""
    tasks = get_tasks(cfg.tasks, cfg.task_classes)
    breasts = load_breasts(cfg.data)
    table = read_cached_table(cfg.data.table)
    evaluations: list[Evaluation] = []
    for name, encoder in cfg.encoders.items():
        x = breast_embeddings(breasts, image_embeddings(table, encoder, cfg.embed), cfg.embed.pool)
        for task in tasks:
            evaluations.extend(_probe_task(x, task, breasts, cfg, name))
    return report(run, evaluations, ["encoder", "task", "fraction"], n_resamples=cfg.bootstrap, plots=cfg.plots)


def _validate(cfg: ProbeConfig) -> None:
    if not cfg.encoders:
        raise ConfigError("no encoders: set e.g. encoders.mvmlm.checkpoint=DIR (and baselines, see configs/probe)")
    if not cfg.seeds or not cfg.fractions or not cfg.c_grid:
        raise ConfigError("seeds, fractions and c_grid must each hold at least one value")
    if cfg.class_weight not in ("balanced", "none"):
        raise ConfigError(f"key 'class_weight': balanced or none, got {cfg.class_weight!r}")


def main(argv: list[str] | None = None) -> dict:
    """``python -m downstream.probe --config FILE [key=value ...]``; returns the metrics dict."""
    cfg = COMMAND.parse(argv)
    _validate(cfg)
    run = RunDir.create(cfg.out, cfg)
    metrics = run_probe(cfg, run)
    run.write_metrics(metrics)
    print(f"\nlinear probe, test split ({run.path}):\n")
    print(pivot_markdown(metrics["summary"], ["task", "encoder"], "fraction"))
    return metrics
