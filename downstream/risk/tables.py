"""The tables of ``mvmlm risk``: ``comparison.csv`` / ``comparison.md`` (the three-way table: image-only, clinical-only
and combined per model kind, with calibration before / after and the paired combined - clinical-only difference),
``results.csv`` (every metric of every model) and ``results.md`` (all of them, readable).

``comparison.csv`` has one row per fitted model (``kind``, ``inputs``, ``model``) and one per paired difference
(``inputs`` = ``combined - clinical``, discrimination columns only); each metric ``m`` has the columns ``m``,
``m_low`` and ``m_high`` (bootstrap 95 % CI; empty where undefined).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mvmlm.bundle import format_ci
from mvmlm.evaluation import markdown_table
from mvmlm.rundir import RunDir

__all__ = [
    "DIFFERENCE",
    "model_key",
    "difference_key",
    "ci_cell",
    "comparison_metrics",
    "comparison_table",
    "write_tables",
]

DIFFERENCE = "combined - clinical"
STAGES = ("raw", "calibrated")
_HEADER = "# Risk (test split)\n\nPoint estimate [bootstrap 95 % CI, patients resampled].\n\n"


def model_key(kind: str, inputs: str) -> str:
    """``coxnet`` (image input), ``coxnet_clinical``, ``coxnet_combined``, ..."""
    return kind if inputs == "image" else f"{kind}_{inputs}"


def difference_key(kind: str) -> str:
    """The key of a kind's paired difference in ``metrics.json`` (``differences``): ``coxnet: combined - clinical``."""
    return f"{kind}: {DIFFERENCE}"


def comparison_metrics(auc_times: Sequence[float], max_followup: int) -> list[str]:
    """The columns of the three-way table: Harrell's and Uno's C, the time-dependent AUCs, the calibration slope and
    intercept at ``max_followup`` years and the integrated Brier score, each before / after calibration."""
    k = max_followup
    calibration = [f"{m}_{stage}" for m in (f"cal_slope_{k}y", f"cal_intercept_{k}y", "ibs") for stage in STAGES]
    return ["harrell_c", "uno_c", *(f"td_auc_{t:g}y" for t in auc_times), *calibration]


def comparison_table(
    results: dict[str, dict],
    differences: dict[str, dict],
    kinds: Sequence[str],
    inputs: Sequence[str],
    metrics: Sequence[str],
) -> pd.DataFrame:
    """One row per model kind and input (then per kind's difference), numeric ``m``, ``m_low``, ``m_high``."""
    rows = []
    for kind in kinds:
        keyed = [(i, model_key(kind, i), results.get(model_key(kind, i))) for i in inputs]
        keyed.append((DIFFERENCE, difference_key(kind), differences.get(difference_key(kind))))
        for given, key, found in keyed:
            if found is None:
                continue
            row: dict[str, object] = {"kind": kind, "inputs": given, "model": key}
            for m in metrics:
                cell = found.get(m, {})
                row |= {m: cell.get("value", np.nan), f"{m}_low": cell.get("low"), f"{m}_high": cell.get("high")}
            rows.append(row)
    return pd.DataFrame(rows)


def ci_cell(m: dict[str, float] | None) -> str:
    """``value [low, high]`` of a metric (empty where undefined)."""
    if m is None or m.get("value") is None or np.isnan(m["value"]):
        return ""
    return format_ci(m["value"], m["low"], m["high"])


def _shown(table: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """``table`` with each metric as one ``value [low, high]`` cell."""
    cells = {
        m: [ci_cell({"value": r[m], "low": r[f"{m}_low"], "high": r[f"{m}_high"]}) for _, r in table.iterrows()]
        for m in metrics
    }
    return pd.DataFrame({"model": table["model"], "inputs": table["inputs"], **cells})


def write_tables(
    run: RunDir,
    results: dict[str, dict],
    differences: dict[str, dict],
    kinds: Sequence[str],
    inputs: Sequence[str],
    auc_times: Sequence[float],
    max_followup: int,
) -> str:
    """Write ``comparison.csv``, ``comparison.md``, ``results.csv`` and ``results.md`` into the run directory
    ``run``; returns the markdown of ``comparison.md`` (what the command prints)."""
    metrics = comparison_metrics(auc_times, max_followup)
    table = comparison_table(results, differences, kinds, inputs, metrics)
    table.to_csv(run.file("comparison.csv"), index=False)
    comparison = (
        "## Image-only vs clinical-only vs combined (test split)\n\n"
        f"Calibration at {max_followup} years and integrated Brier score: raw model -> calibrated on validation. "
        f"Rows `{DIFFERENCE}`: paired bootstrap difference.\n\n" + markdown_table(_shown(table, metrics))
    )
    run.write_text("comparison.md", _HEADER + comparison)
    every = list(next(iter(results.values())))
    rows = [{"model": m, **{k: ci_cell(found.get(k)) for k in every}} for m, found in results.items()]
    pd.DataFrame(rows).to_csv(run.file("results.csv"), index=False)
    discrimination = [m for m in every if not m.endswith(STAGES)]
    calibration = [m for m in every if m.endswith(STAGES)]
    parts = [
        comparison,
        "## Discrimination\n\n" + markdown_table(_frame(results, discrimination)),
        "## Calibration (raw -> calibrated on validation)\n\n" + markdown_table(_frame(results, calibration)),
    ]
    run.write_text("results.md", _HEADER + "\n\n".join(parts))
    return comparison


def _frame(results: dict[str, dict], names: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{"model": m, **{k: ci_cell(v.get(k)) for k in names}} for m, v in results.items()])
