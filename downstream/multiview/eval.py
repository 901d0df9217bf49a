"""Predictions, metrics and attention reports of the four-view classifier.

Metrics per task (AUC: binary, or macro one-vs-rest; F1-macro; balanced accuracy) for each side and pooled over
both sides, on the breasts with a target; attention weights per exam and their means per view, overall and per
missing-view pattern (e.g. ``missing R_MLO``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from downstream.multiview.model import SIDES, VIEWS
from mvmlm.evaluation import METRICS, predict_classes, score_predictions
from mvmlm.plots import plot_confusion, plot_roc

__all__ = [
    "predict",
    "task_metrics",
    "headline",
    "monitor_score",
    "missing_pattern",
    "attention_summary",
    "predictions_frame",
    "plot_attention",
    "plot_tasks",
]

ID_COLUMNS = ["dataset", "patient_id", "exam_id"]


@torch.no_grad()
def predict(accelerator: Any, model: torch.nn.Module, loader: Any) -> dict[str, np.ndarray]:
    """Run ``model`` over ``loader`` on every process; gathered arrays in dataset order (duplicates dropped).

    Returns:
        ``index`` (n,), ``mask`` (n, 4), ``attention`` (n, 4), and per task ``probs_<task>`` (n, 2, K) and
        ``target_<task>`` (n, 2).
    """
    model.eval()
    parts: list[dict[str, torch.Tensor]] = []
    for batch in loader:
        out = model(batch["images"], batch["mask"])
        record = {"index": batch["index"], "mask": batch["mask"], "attention": out["attention"].float()}
        for task, logits in out["logits"].items():
            record[f"probs_{task}"] = logits.float().softmax(dim=-1)
            record[f"target_{task}"] = batch["targets"][task]
        parts.append(accelerator.gather_for_metrics(record))
    if not parts:
        raise ValueError("nothing to evaluate: the loader is empty")
    merged = {key: torch.cat([p[key] for p in parts]).cpu().numpy() for key in parts[0]}
    order = np.argsort(merged["index"], kind="stable")
    return {key: value[order] for key, value in merged.items()}


def _group_metrics(targets: np.ndarray, scores: np.ndarray, patients: np.ndarray, n_resamples: int) -> dict:
    valid = targets >= 0
    if not valid.any():
        return {"n": 0, **{name: float("nan") for name in METRICS}}
    return score_predictions(targets[valid], scores[valid], patients[valid], n_resamples=n_resamples)


def task_metrics(
    preds: dict[str, np.ndarray], tasks: list[str], patients: np.ndarray, n_resamples: int = 0
) -> dict[str, dict[str, dict[str, float]]]:
    """``{task: {"L": {...}, "R": {...}, "pooled": {...}}}``: n, AUC, F1-macro, balanced accuracy of the breasts
    with a target; the pooled entry gets patient-bootstrap CIs (``<metric>_low/_high``) when ``n_resamples``.

    Args:
        patients: patient id per exam (aligned with ``preds``).
    """
    results = {}
    for task in tasks:
        scores, targets = preds[f"probs_{task}"], preds[f"target_{task}"]
        per_side = {side: _group_metrics(targets[:, j], scores[:, j], patients, 0) for j, side in enumerate(SIDES)}
        pooled = _group_metrics(
            targets.reshape(-1), scores.reshape(-1, scores.shape[-1]), np.repeat(patients, len(SIDES)), n_resamples
        )
        results[task] = {**per_side, "pooled": pooled}
    return results


def headline(metrics: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """The paper's table cells: pooled AUC and F1-macro per task, ``{"label_auc": ..., "birads_f1_macro": ...}``."""
    return {f"{task}_{k}": values["pooled"][k] for task, values in metrics.items() for k in ("auc", "f1_macro")}


def monitor_score(metrics: dict[str, dict[str, dict[str, float]]]) -> float:
    """Model selection score: the sum of the pooled AUCs of the tasks (label AUC + BI-RADS AUC); NaN counts 0."""
    return float(np.nansum([values["pooled"]["auc"] for values in metrics.values()]))


def missing_pattern(mask: np.ndarray) -> str:
    """``"complete"`` or ``"missing L_CC+R_MLO"`` for a (4,) presence mask."""
    missing = [view for view, present in zip(VIEWS, mask, strict=True) if not present]
    return "complete" if not missing else "missing " + "+".join(missing)


def attention_summary(attention: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Mean attention per view over all exams and per missing-view pattern (with the exam count)."""
    patterns = np.array([missing_pattern(m) for m in mask])

    def means(rows: np.ndarray) -> dict[str, float]:
        return {view: float(attention[rows, i].mean()) for i, view in enumerate(VIEWS)}

    return {
        "overall": means(np.ones(len(attention), dtype=bool)),
        "patterns": {p: {"n": int((patterns == p).sum()), "mean": means(patterns == p)} for p in sorted(set(patterns))},
    }


def predictions_frame(exams: pd.DataFrame, preds: dict[str, np.ndarray], tasks: list[str]) -> pd.DataFrame:
    """One row per exam: ids, presence, attention per view, and per task and side the target and class scores."""
    rows = exams.iloc[preds["index"]].reset_index(drop=True)
    frame = rows[ID_COLUMNS].copy()
    frame["pattern"] = [missing_pattern(m) for m in preds["mask"]]
    for i, view in enumerate(VIEWS):
        frame[f"attention_{view}"] = preds["attention"][:, i]
    for task in tasks:
        for j, side in enumerate(SIDES):
            frame[f"{task}_{side}_target"] = preds[f"target_{task}"][:, j]
            for k in range(preds[f"probs_{task}"].shape[-1]):
                frame[f"{task}_{side}_p{k}"] = preds[f"probs_{task}"][:, j, k]
    return frame


def plot_attention(summary: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Bar chart of the mean attention per view: all exams, then each missing-view pattern."""
    from matplotlib.figure import Figure

    groups = {f"all exams (n={sum(p['n'] for p in summary['patterns'].values())})": summary["overall"]}
    groups.update({f"{name} (n={p['n']})": p["mean"] for name, p in summary["patterns"].items()})
    fig = Figure(figsize=(max(6.0, 1.6 * len(groups) + 2), 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(VIEWS)
    x = np.arange(len(groups))
    for i, view in enumerate(VIEWS):
        ax.bar(x + (i - (len(VIEWS) - 1) / 2) * width, [g[view] for g in groups.values()], width, label=view)
    ax.set_xticks(x, list(groups), rotation=15, ha="right", fontsize="small")
    ax.set(ylabel="mean attention weight", ylim=(0, 1), title=title or "gated attention per view")
    ax.legend(ncols=len(VIEWS), fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_tasks(
    preds: dict[str, np.ndarray], class_names: dict[str, list[str]], folder: str | Path, prefix: str
) -> list[Path]:
    """ROC curves and confusion matrices per task, one series per side and one pooled."""
    written = []
    for task, names in class_names.items():
        scores, targets = preds[f"probs_{task}"], preds[f"target_{task}"]
        groups = {side: (targets[:, j], scores[:, j]) for j, side in enumerate(SIDES)}
        groups["pooled"] = (targets.reshape(-1), scores.reshape(-1, scores.shape[-1]))
        series = {name: (y[y >= 0], p[y >= 0]) for name, (y, p) in groups.items() if (y >= 0).any()}
        if not series:
            continue
        title = f"{prefix} {task}"
        written.append(plot_roc(Path(folder) / f"roc_{prefix}_{task}.png", series, names, title))
        predicted = {name: (y, predict_classes(p)) for name, (y, p) in series.items()}
        written.append(plot_confusion(Path(folder) / f"confusion_{prefix}_{task}.png", predicted, names, title))
    return written
