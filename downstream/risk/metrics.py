"""Risk labels and metrics in Mirai's conventions, and the scikit-survival metrics, each with a bootstrap 95 % CI.

Follow-up comes from the canonical table in float years: ``years_to_cancer`` (0 = cancer found at this exam, NA = no
cancer seen) and ``years_to_last_followup`` (years known cancer-free; equal to ``years_to_cancer`` for cancers).
Mirai works in whole years; a float is mapped to the year index ``floor(years)`` (0.4 -> year 1, 1.0 -> year 2):

- an exam is *positive* if ``floor(years_to_cancer) < max_followup``; its ``time_at_event`` is that year index;
- otherwise ``time_at_event = min(floor(years_to_last_followup), max_followup) - 1`` (the last year known free);
- ``y_seq[t:] = 1`` for positives, ``y_mask[i] = i <= time_at_event``; exams with ``time_at_event < 0`` (censored
  within the first year) carry no label and are dropped.

Mirai's year-k AUC (index ``i = k - 1``) scores ``probs[:, i]`` with plain ROC AUC over the exams that are a
positive with ``time_at_event <= i`` (label 1) or have ``time_at_event >= i`` (label 0); censored negatives with
shorter follow-up are left out and there is no IPCW. The scikit-survival metrics use the float times directly:
``event`` = a cancer was seen, ``time`` = years to it or to the last follow-up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from mvmlm.metrics import bootstrap_ci, harrell_c, time_dependent_auc, uno_c

__all__ = [
    "MiraiLabels",
    "mirai_labels",
    "survival_arrays",
    "mirai_year_auc",
    "RiskScores",
    "risk_metrics",
    "paired_difference",
]

log = logging.getLogger(__name__)


@dataclass
class MiraiLabels:
    """Per exam: ``y_seq (n, T)`` cumulative targets, ``y_mask (n, T)`` which years are known, ``time_at_event (n,)``
    (year index of the cancer, or of the last year known free), ``positive (n,)`` and ``keep (n,)`` (has a label)."""

    y_seq: np.ndarray
    y_mask: np.ndarray
    time_at_event: np.ndarray
    positive: np.ndarray
    keep: np.ndarray


def _as_float(values: Sequence) -> np.ndarray:
    return np.asarray([np.nan if v is None or v != v else float(v) for v in values], dtype=float)


def mirai_labels(years_to_cancer: Sequence, years_to_last_followup: Sequence, max_followup: int = 5) -> MiraiLabels:
    """Mirai's ``get_label`` for float-year follow-up (see the module docstring).

    Raises:
        ValueError: a negative follow-up, or an exam with neither a cancer time nor a follow-up time.
    """
    ytc, ytlf = _as_float(years_to_cancer), _as_float(years_to_last_followup)
    if ytc.shape != ytlf.shape:
        raise ValueError(f"follow-up arrays differ in length: {ytc.shape} vs {ytlf.shape}")
    if (ytc < 0).any() or (ytlf < 0).any():
        rows = np.flatnonzero((ytc < 0) | (ytlf < 0))[:5].tolist()
        raise ValueError(f"negative years_to_cancer / years_to_last_followup at row(s) {rows}")
    unknown = np.isnan(ytc) & np.isnan(ytlf)
    if unknown.any():
        raise ValueError(f"row(s) {np.flatnonzero(unknown)[:5].tolist()} have no years_to_cancer nor follow-up")
    cancer_year = np.floor(np.nan_to_num(ytc, nan=np.inf))
    positive = cancer_year < max_followup
    free_years = np.floor(np.nan_to_num(ytlf, nan=0.0))
    time_at_event = np.where(positive, cancer_year, np.minimum(free_years, max_followup) - 1).astype(int)
    years = np.arange(max_followup)[None, :]
    y_seq = (positive[:, None] & (years >= time_at_event[:, None])).astype(np.float32)
    y_mask = (years <= time_at_event[:, None]).astype(np.float32)
    return MiraiLabels(y_seq, y_mask, time_at_event, positive, time_at_event >= 0)


def survival_arrays(years_to_cancer: Sequence, years_to_last_followup: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """``(event, time)`` for scikit-survival: a cancer was seen, and years to it or to the last follow-up."""
    ytc, ytlf = _as_float(years_to_cancer), _as_float(years_to_last_followup)
    event = ~np.isnan(ytc)
    return event, np.where(event, ytc, ytlf)


def mirai_year_auc(probs: np.ndarray, time_at_event: np.ndarray, positive: np.ndarray, year: int) -> float:
    """Mirai's year-``year`` AUC of cumulative risks ``probs (n, T)`` (NaN when one class is absent)."""
    i = year - 1
    cases = positive & (time_at_event <= i)
    included = cases | (time_at_event >= i)
    labels = cases[included]
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(probs)[included, i]))


@dataclass
class RiskScores:
    """A model's output on evaluated exams: cumulative risks ``probs (n, T)`` for years 1..T and one risk score
    per exam ``risk (n,)`` (higher = earlier cancer) for the concordance indices."""

    probs: np.ndarray
    risk: np.ndarray


def nan_on_degenerate(metric: Callable[[np.ndarray], float]) -> Callable[[np.ndarray], float]:
    """A resample without events / comparable pairs / times inside its follow-up gives NaN (skipped by the CI)."""

    def wrapped(index: np.ndarray) -> float:
        try:
            with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 comparable pairs -> NaN
                return metric(index)
        except (ValueError, ZeroDivisionError):
            return float("nan")

    return wrapped


def _metric_functions(
    scores: RiskScores,
    follow_up: tuple[Sequence, Sequence],
    train_follow_up: tuple[Sequence, Sequence],
    max_followup: int,
    auc_times: Sequence[float],
) -> dict[str, Callable[[np.ndarray], float]]:
    """Metric name -> ``metric(index)`` on the exams ``index`` (what the bootstrap resamples)."""
    event, time = survival_arrays(*follow_up)
    train = survival_arrays(*train_follow_up)
    labels = mirai_labels(*follow_up, max_followup=max_followup)
    probs, risk = np.asarray(scores.probs, float), np.asarray(scores.risk, float)
    if probs.shape != (event.size, max_followup) or risk.shape != (event.size,):
        raise ValueError(
            f"scores: expected probs ({event.size}, {max_followup}) and risk ({event.size},), "
            f"got {probs.shape} and {risk.shape}"
        )

    def td_auc(t: float) -> Callable[[np.ndarray], float]:
        column = min(int(np.ceil(t)), max_followup) - 1  # the cumulative risk of the year that holds t
        return lambda i: time_dependent_auc(train, (event[i], time[i]), probs[i, column], [t])[float(t)]

    return {
        "harrell_c": lambda i: harrell_c(event[i], time[i], risk[i]),
        "uno_c": lambda i: uno_c(train, (event[i], time[i]), risk[i], tau=float(max_followup)),
        **{f"td_auc_{t:g}y": td_auc(t) for t in auc_times},
        **{
            f"mirai_auc_{k}y": (lambda i, k=k: mirai_year_auc(probs[i], labels.time_at_event[i], labels.positive[i], k))
            for k in range(1, max_followup + 1)
        },
    }


def risk_metrics(
    scores: RiskScores,
    follow_up: tuple[Sequence, Sequence],
    train_follow_up: tuple[Sequence, Sequence],
    patients: Sequence[str],
    *,
    max_followup: int = 5,
    auc_times: Sequence[float] = (2.0, 5.0),
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Harrell's C, Uno's C (tau = ``max_followup``), time-dependent AUC at ``auc_times`` (IPCW) and Mirai's
    year-1..T AUC, each ``{"value", "low", "high"}`` with a patient-level bootstrap 95 % CI.

    Args:
        follow_up: ``(years_to_cancer, years_to_last_followup)`` of the evaluated exams.
        train_follow_up: the same for the training exams (censoring distribution of Uno's C and the AUC).
        patients: patient id per evaluated exam (the bootstrap resamples patients).
    Returns:
        metric name -> ``{"value", "low", "high"}``; NaN where a metric is undefined on these exams.
    """
    metrics = _metric_functions(scores, follow_up, train_follow_up, max_followup, auc_times)
    event = survival_arrays(*follow_up)[0]
    results = {}
    for name, metric in metrics.items():
        value, low, high = bootstrap_ci(nan_on_degenerate(metric), patients, n_resamples=n_resamples, seed=seed)
        if np.isnan(value):
            log.warning("risk metric %s is undefined on these %d exams (%d cancers)", name, event.size, event.sum())
        results[name] = {"value": value, "low": low, "high": high}
    return results


def paired_difference(
    scores: RiskScores,
    reference: RiskScores,
    follow_up: tuple[Sequence, Sequence],
    train_follow_up: tuple[Sequence, Sequence],
    patients: Sequence[str],
    *,
    max_followup: int = 5,
    auc_times: Sequence[float] = (2.0, 5.0),
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """``scores - reference`` of Harrell's C, Uno's C and the time-dependent AUCs on the same exams, with a paired
    patient-bootstrap 95 % CI (both models scored on each resample)."""
    ours = _metric_functions(scores, follow_up, train_follow_up, max_followup, auc_times)
    theirs = _metric_functions(reference, follow_up, train_follow_up, max_followup, auc_times)
    names = ["harrell_c", "uno_c", *(f"td_auc_{t:g}y" for t in auc_times)]
    results = {}
    for name in names:

        def difference(i: np.ndarray, name: str = name) -> float:
            return ours[name](i) - theirs[name](i)

        value, low, high = bootstrap_ci(nan_on_degenerate(difference), patients, n_resamples=n_resamples, seed=seed)
        results[name] = {"value": value, "low": low, "high": high}
    return results
