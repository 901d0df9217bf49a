"""Risk figures: calibration of the k-year risk against Kaplan-Meier incidence per risk decile (before and after
calibration, a panel per horizon), and Kaplan-Meier curves of the exams
grouped by quartile of predicted risk."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["km_incidence", "groups_by_quantile", "plot_calibration", "plot_km_by_quartile"]


def km_incidence(event: np.ndarray, time: np.ndarray, at: float) -> float:
    """Kaplan-Meier cumulative incidence ``1 - S(at)`` (NaN for an empty group)."""
    from sksurv.nonparametric import kaplan_meier_estimator

    if len(time) == 0:
        return float("nan")
    times, survival = kaplan_meier_estimator(np.asarray(event, bool), np.asarray(time, float))
    before = times <= at
    return float(1.0 - (survival[before][-1] if before.any() else 1.0))


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def groups_by_quantile(score: np.ndarray, n_groups: int) -> np.ndarray:
    """Group index 0..n_groups-1 per row by quantile of ``score`` (ties share a group)."""
    ranks = np.argsort(np.argsort(score, kind="stable"), kind="stable")
    return (ranks * n_groups // max(len(score), 1)).astype(int)


def plot_calibration(path: str | Path, deciles: Mapping[str, pd.DataFrame], title: str = "") -> Path:
    """Mean predicted k-year risk against the observed Kaplan-Meier k-year incidence per risk decile, one panel per
    year; ``deciles``: curve label (``raw``, ``calibrated``) -> :func:`downstream.risk.calibration.decile_table`."""
    from matplotlib.figure import Figure

    years = sorted(set().union(*(set(t["year"]) for t in deciles.values())))
    fig = Figure(figsize=(3.2 * len(years), 3.4), layout="constrained")
    for ax, year in zip(np.atleast_1d(fig.subplots(1, len(years))), years, strict=True):
        top = 1e-3
        for label, table in deciles.items():
            rows = table[table["year"] == year]
            ax.plot(rows["expected"], rows["observed"], marker="o", ms=3, label=label)
            top = max(top, rows["expected"].max(), rows["observed"].max())
        ax.plot([0, top * 1.05], [0, top * 1.05], color="grey", lw=0.8, ls="--")
        ax.set(xlabel=f"predicted {year}-year risk", ylabel=f"observed {year}-year incidence (KM)", title=title)
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_km_by_quartile(
    path: str | Path, risk: np.ndarray, event: np.ndarray, time: np.ndarray, title: str = ""
) -> Path:
    """Kaplan-Meier cancer-free curves of the exams in each quartile of predicted risk (Q4 = highest)."""
    from matplotlib.figure import Figure
    from sksurv.nonparametric import kaplan_meier_estimator

    fig = Figure(figsize=(4.5, 3.6), layout="constrained")
    ax = fig.subplots()
    group = groups_by_quantile(risk, 4)
    for g in range(4):
        rows = group == g
        if rows.any():
            times, survival = kaplan_meier_estimator(event[rows].astype(bool), time[rows].astype(float))
            ax.step(np.r_[0.0, times], np.r_[1.0, survival], where="post", label=f"Q{g + 1} (n={rows.sum()})")
    ax.set(xlabel="years", ylabel="cancer-free (KM)", title=title)
    ax.legend(fontsize="small")
    return _save(fig, path)
