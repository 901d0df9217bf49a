"""Evaluation metrics: classification (AUC, F1-macro, balanced accuracy) with patient-level bootstrap CIs,
retrieval recall@k, and survival (Harrell's / Uno's C, time-dependent AUC).

Classification metrics wrap scikit-learn and survival metrics wrap scikit-survival; this module adds the
conventions (macro one-vs-rest AUC, classes absent from a resample, bootstrap by patient).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

__all__ = [
    "auc",
    "f1_macro",
    "balanced_accuracy",
    "classification_metrics",
    "bootstrap_ci",
    "retrieval_recall",
    "harrell_c",
    "uno_c",
    "time_dependent_auc",
]


def auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Binary AUC (``scores`` of shape (n,) or (n, 2)) or macro one-vs-rest AUC (``scores`` (n, k)).

    Classes of the score matrix that are absent from ``y_true`` are left out of the macro average.
    Returns NaN when fewer than two classes are present.
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=float)
    present = np.unique(y_true)
    if present.size < 2:
        return float("nan")
    if scores.ndim == 1 or scores.shape[1] == 1:
        return float(roc_auc_score(y_true, scores.reshape(-1)))
    if scores.shape[1] == 2:
        return float(roc_auc_score(y_true, scores[:, 1]))
    per_class = [roc_auc_score(y_true == k, scores[:, k]) for k in present if 0 <= k < scores.shape[1]]
    return float(np.mean(per_class))


def f1_macro(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro F1 over the classes present in ``y_true`` or ``y_pred``."""
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall."""
    return float(balanced_accuracy_score(y_true, y_pred))


def classification_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUC, F1-macro and balanced accuracy of class scores (n, k) or binary scores (n,) (threshold 0.5)."""
    scores = np.asarray(scores, dtype=float)
    y_pred = (scores >= 0.5).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
    return {
        "auc": auc(y_true, scores),
        "f1_macro": f1_macro(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
    }


def bootstrap_ci(
    metric: Callable[[np.ndarray], float],
    groups: Sequence,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Point estimate and percentile CI of ``metric(indices)``, resampling whole ``groups`` (patients).

    Args:
        metric: takes an index array into the evaluated rows and returns a number (NaN resamples are skipped).
        groups: the patient id of each row; all rows of a drawn patient enter the resample together.

    Returns:
        (estimate on all rows, lower bound, upper bound).
    """
    groups = np.asarray(groups)
    unique, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # rows of each patient, in one pass (not patients x rows)
    members = np.split(order, np.cumsum(np.bincount(inverse, minlength=unique.size))[:-1])
    rng = np.random.default_rng(seed)
    estimate = metric(np.arange(groups.size))
    values = []
    for _ in range(n_resamples):
        drawn = rng.integers(0, unique.size, unique.size)
        value = metric(np.concatenate([members[g] for g in drawn]))
        if not np.isnan(value):
            values.append(value)
    if not values:
        return float(estimate), float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(estimate), float(low), float(high)


def retrieval_recall(
    query: torch.Tensor, keys: torch.Tensor, ks: Sequence[int] = (1, 5, 10), positives: torch.Tensor | None = None
) -> dict[str, float]:
    """Recall@k of retrieving ``keys[i]`` for ``query[i]`` by cosine similarity.

    Args:
        positives: optional bool (n, n) matrix of all correct keys per query (e.g. identical reports);
            default: only the diagonal.
    """
    sim = torch.nn.functional.normalize(query.float(), dim=1) @ torch.nn.functional.normalize(keys.float(), dim=1).T
    n = sim.shape[0]
    positives = torch.eye(n, dtype=torch.bool) if positives is None else positives.bool()
    order = sim.argsort(dim=1, descending=True)
    hits = torch.gather(positives.to(order.device), 1, order)
    first = torch.where(hits.any(1), hits.float().argmax(1), torch.full((n,), n, device=hits.device))
    return {f"R@{k}": float((first < k).float().mean()) for k in ks}


def _surv(event: np.ndarray, time: np.ndarray):
    from sksurv.util import Surv

    return Surv.from_arrays(event=np.asarray(event, dtype=bool), time=np.asarray(time, dtype=float))


def harrell_c(event: np.ndarray, time: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's concordance index of ``risk`` (higher = earlier event)."""
    from sksurv.metrics import concordance_index_censored

    return float(concordance_index_censored(np.asarray(event, bool), np.asarray(time, float), np.asarray(risk))[0])


def uno_c(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    risk: np.ndarray,
    tau: float | None = None,
) -> float:
    """Uno's IPCW concordance; ``train``/``test`` are (event, time) pairs; censoring estimated on ``train``."""
    from sksurv.metrics import concordance_index_ipcw

    return float(concordance_index_ipcw(_surv(*train), _surv(*test), np.asarray(risk), tau=tau)[0])


def time_dependent_auc(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], risk: np.ndarray, times: Sequence[float]
) -> dict[float, float]:
    """Cumulative/dynamic AUC at ``times`` (IPCW, scikit-survival); ``risk`` (n,) or (n, len(times))."""
    from sksurv.metrics import cumulative_dynamic_auc

    values, _ = cumulative_dynamic_auc(_surv(*train), _surv(*test), np.asarray(risk), np.asarray(times, float))
    return {float(t): float(v) for t, v in zip(times, values, strict=True)}
