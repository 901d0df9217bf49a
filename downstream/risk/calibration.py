"""Absolute k-year risk: post-hoc calibration per horizon and the metrics that tell whether "12 % five-year risk"
means 12 %.

A :class:`Calibrator` maps the model's cumulative ``k``-year risks (years ``1..T``) through one monotone map per
year, fitted on the validation split: isotonic regression (default) or Platt scaling (``sigmoid(a + b logit p)``).
It is plain arrays (saved in a risk bundle as safetensors, no pickle) and keeps the risks non-decreasing in ``k``;
isotonic risks are bounded to ``[1 / (n + 2), (n + 1) / (n + 2)]`` for ``n`` labelled validation exams (never 0 or 1).

The binary ``k``-year outcome of an exam follows Mirai's rule (:func:`downstream.risk.metrics.mirai_labels`): a case
if a cancer was seen before ``k`` years (``years_to_cancer < k``), a control if known cancer-free for at least ``k``
years, otherwise censored. Censored exams get weight 0 and the others inverse-probability-of-censoring weights from
the Kaplan-Meier estimate of the censoring distribution of the same exams, so fits and metrics are not biased
towards short follow-up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, logit

from downstream.risk.metrics import nan_on_degenerate
from downstream.risk.plots import groups_by_quantile, km_incidence
from mvmlm.metrics import bootstrap_ci

__all__ = [
    "CALIBRATORS",
    "Calibrator",
    "horizon_labels",
    "fit_calibrator",
    "recalibration",
    "decile_table",
    "calibration_metrics",
]

CALIBRATORS = ("isotonic", "platt", "none")
_EPS = 1e-6


def horizon_labels(event: np.ndarray, time: np.ndarray, year: float) -> tuple[np.ndarray, np.ndarray]:
    """``(label, weight)`` of the ``year``-year outcome: case (cancer before ``year``), control (cancer-free for at
    least ``year``) or censored (weight 0); cases and controls weighted by ``1 / G``, the Kaplan-Meier probability of
    remaining uncensored (at the case's time, at ``year`` for controls)."""
    from sksurv.nonparametric import kaplan_meier_estimator

    event, time = np.asarray(event, bool), np.asarray(time, float)
    case = event & (time < year)
    control = time >= year
    control &= ~case
    times, uncensored = kaplan_meier_estimator(event, time, reverse=True)

    def g(t: np.ndarray) -> np.ndarray:  # G(t-): the censoring survival just before t
        index = np.searchsorted(times, t, side="left") - 1
        return np.where(index >= 0, uncensored[np.clip(index, 0, None)], 1.0)

    at = np.where(case, time, year)
    weight = np.where(case | control, 1.0 / np.maximum(g(at), _EPS), 0.0)
    return case.astype(float), weight


def _logit(p: np.ndarray) -> np.ndarray:
    return logit(np.clip(np.asarray(p, float), _EPS, 1 - _EPS))


def recalibration(probs: np.ndarray, label: np.ndarray, weight: np.ndarray, slope: float | None = None) -> np.ndarray:
    """``[a, b]`` of the weighted logistic fit ``P(case) = sigmoid(a + b logit p)``; with ``slope`` the slope is fixed
    (``slope=1``: ``a`` is the calibration-in-the-large). NaN where there is no case or no control."""
    z = _logit(probs)
    keep = weight > 0
    if not (label[keep] > 0).any() or not (label[keep] == 0).any():
        return np.array([np.nan, np.nan])
    w = weight / weight.sum()

    def loss(theta: np.ndarray) -> float:
        eta = theta[0] + (theta[1] if slope is None else slope) * z
        return float(np.sum(w * (np.logaddexp(0.0, eta) - label * eta)))

    start = np.array([0.0, 1.0]) if slope is None else np.array([0.0])
    theta = minimize(loss, start, method="BFGS").x
    return np.array([theta[0], theta[1] if slope is None else slope])


@dataclass
class Calibrator:
    """One monotone map per year ``1..T``: ``tables[k]`` is ``(2, m)``, the isotonic knots (x row, y row,
    interpolated linearly and clipped at the ends) or Platt's ``[[a], [b]]``; ``none`` leaves risks unchanged."""

    method: str
    tables: list[np.ndarray]

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs, float)
        if self.method == "none":
            return probs
        out = np.empty_like(probs)
        for k, table in enumerate(self.tables):
            if self.method == "isotonic":
                out[:, k] = np.interp(probs[:, k], table[0], table[1])
            else:
                out[:, k] = expit(table[0, 0] + table[1, 0] * _logit(probs[:, k]))
        return np.maximum.accumulate(out, axis=1)  # a cumulative risk never decreases with the horizon

    def arrays(self) -> dict[str, np.ndarray]:
        """Named arrays for a safetensors file."""
        return {
            f"calibration.year{k + 1}": np.ascontiguousarray(t, dtype=np.float64) for k, t in enumerate(self.tables)
        }

    @classmethod
    def from_arrays(cls, method: str, arrays: dict[str, np.ndarray], years: int) -> Calibrator:
        tables = [] if method == "none" else [np.asarray(arrays[f"calibration.year{k}"]) for k in range(1, years + 1)]
        return cls(method, tables)


def fit_calibrator(probs: np.ndarray, event: np.ndarray, time: np.ndarray, method: str = "isotonic") -> Calibrator:
    """Fit one map per year on the validation exams' risks ``probs (n, T)`` and follow-up ``(event, time)``.

    Raises:
        ValueError: an unknown ``method``.
    """
    from sklearn.isotonic import IsotonicRegression

    if method not in CALIBRATORS:
        raise ValueError(f"unknown calibration {method!r}; known: {', '.join(CALIBRATORS)}")
    if method == "none":
        return Calibrator(method, [])
    tables = []
    for k in range(probs.shape[1]):
        label, weight = horizon_labels(event, time, k + 1)
        keep = weight > 0
        if method == "platt":
            a, b = recalibration(probs[keep, k], label[keep], weight[keep])
            tables.append(np.array([[0.0], [1.0]]) if np.isnan(a) else np.array([[a], [b]]))
            continue
        n = int(keep.sum())  # a risk of exactly 0 or 1 is never warranted: bound it by 1 / (n + 2) (Laplace)
        iso = IsotonicRegression(y_min=1 / (n + 2), y_max=(n + 1) / (n + 2), out_of_bounds="clip")
        iso.fit(probs[keep, k], label[keep], sample_weight=weight[keep])
        tables.append(np.stack([iso.X_thresholds_, iso.y_thresholds_]))
    return Calibrator(method, tables)


def decile_table(probs: np.ndarray, event: np.ndarray, time: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Per year and risk decile: exams, mean predicted risk and the Kaplan-Meier incidence observed in the decile."""
    rows = []
    for k in range(probs.shape[1]):
        group = groups_by_quantile(probs[:, k], bins)
        for g in np.unique(group):
            rows.append(
                {
                    "year": k + 1,
                    "decile": int(g) + 1,
                    "exams": int((group == g).sum()),
                    "expected": float(probs[group == g, k].mean()),
                    "observed": km_incidence(event[group == g], time[group == g], k + 1),
                }
            )
    return pd.DataFrame(rows)


def _ibs(train: tuple[np.ndarray, np.ndarray], event: np.ndarray, time: np.ndarray, probs: np.ndarray) -> float:
    """Integrated Brier score (scikit-survival) over the whole years inside the exams' follow-up."""
    from sksurv.metrics import integrated_brier_score
    from sksurv.util import Surv

    years = np.arange(1, probs.shape[1] + 1, dtype=float)
    inside = (years >= time.min()) & (years < time.max())
    if inside.sum() < 2:
        return float("nan")
    survival_train = Surv.from_arrays(event=train[0], time=train[1])
    survival_test = Surv.from_arrays(event=event, time=time)
    return float(integrated_brier_score(survival_train, survival_test, 1.0 - probs[:, inside], years[inside]))


def calibration_metrics(
    probs: np.ndarray,
    follow_up: tuple[np.ndarray, np.ndarray],
    train: tuple[np.ndarray, np.ndarray],
    patients: Sequence[str],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per year ``k``: calibration slope ``cal_slope_ky`` and intercept (in the large) ``cal_intercept_ky`` of the
    IPCW logistic recalibration, observed / expected ``oe_ky`` (Kaplan-Meier incidence over mean risk); and the
    integrated Brier score ``ibs`` - each ``{"value", "low", "high"}`` with a patient-bootstrap 95 % CI.

    Args:
        follow_up: ``(event, time)`` of the evaluated exams; ``train``: the same of the training exams (censoring of
            the Brier score).
    """
    event, time = np.asarray(follow_up[0], bool), np.asarray(follow_up[1], float)
    probs = np.asarray(probs, float)

    def per_year(k: int) -> dict[str, Callable[[np.ndarray], float]]:
        def fit(i: np.ndarray, slope: float | None) -> np.ndarray:
            label, weight = horizon_labels(event[i], time[i], k)
            keep = weight > 0
            return recalibration(probs[i, k - 1][keep], label[keep], weight[keep], slope)

        def oe(i: np.ndarray) -> float:
            expected = probs[i, k - 1].mean()
            return km_incidence(event[i], time[i], k) / expected if expected > 0 else float("nan")

        return {
            f"cal_slope_{k}y": lambda i: float(fit(i, None)[1]),
            f"cal_intercept_{k}y": lambda i: float(fit(i, 1.0)[0]),
            f"oe_{k}y": oe,
        }

    metrics: dict[str, Callable[[np.ndarray], float]] = {}
    for k in range(1, probs.shape[1] + 1):
        metrics.update(per_year(k))
    metrics["ibs"] = lambda i: _ibs(train, event[i], time[i], probs[i])
    results = {}
    for name, metric in metrics.items():
        value, low, high = bootstrap_ci(nan_on_degenerate(metric), patients, n_resamples=n_resamples, seed=seed)
        results[name] = {"value": value, "low": low, "high": high}
    return results
