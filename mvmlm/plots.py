"""ROC curves and confusion matrices as PNG files (matplotlib, no display needed).

Both take several named series so models can be compared in one figure::

    plot_roc("roc.png", {"mv-mlm": (y, scores), "random init": (y, scores_random)}, ["no mass", "mass"])
    plot_confusion("cm.png", {"mv-mlm": (y, y_pred)}, ["A", "B", "C", "D"])

Binary tasks (two class names, scores ``(n,)`` or ``(n, 2)``) get one ROC panel for the positive class;
multi-class tasks get one one-vs-rest panel per class. Figures are built with ``matplotlib.figure.Figure``,
not ``pyplot``, so no global state or GUI backend is touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

__all__ = ["plot_roc", "plot_confusion"]

Series = Mapping[str, tuple[np.ndarray, np.ndarray]]


def _figure(panels: int, size: float = 3.6):
    from matplotlib.figure import Figure

    cols = min(panels, 4)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(size * cols, size * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _class_scores(scores: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 1:
        if n_classes != 2:
            raise ValueError(f"1-D scores need 2 classes, got {n_classes} class names")
        return scores if k == 1 else 1 - scores
    if scores.shape[1] != n_classes:
        raise ValueError(f"scores have {scores.shape[1]} columns for {n_classes} class names")
    return scores[:, k]


def plot_roc(path: str | Path, series: Series, class_names: Sequence[str], title: str = "") -> Path:
    """ROC curves of each ``name -> (y_true, scores)``, AUC in the legend; one panel per class (binary: one).

    A class absent from a series' labels (or the only class present) is noted in its panel instead of a curve.
    """
    if not series:
        raise ValueError("plot_roc needs at least one series")
    n_classes = len(class_names)
    classes = [1] if n_classes == 2 else list(range(n_classes))
    fig, axes = _figure(len(classes))
    for ax, k in zip(axes, classes, strict=False):
        for name, (y_true, scores) in series.items():
            positive = np.asarray(y_true) == k
            if positive.all() or not positive.any():
                ax.plot([], [], label=f"{name}: n/a (one class)")
                continue
            score = _class_scores(scores, k, n_classes)
            fpr, tpr, _ = roc_curve(positive, score)
            ax.plot(fpr, tpr, label=f"{name}: AUC {roc_auc_score(positive, score):.3f}")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="false positive rate",
            ylabel="true positive rate",
            title=class_names[k] if n_classes > 2 else class_names[1],
        )
        ax.legend(loc="lower right", fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion(
    path: str | Path, series: Series, class_names: Sequence[str], title: str = "", normalize: bool = True
) -> Path:
    """One confusion matrix per ``name -> (y_true, y_pred)``; rows are true classes, cells show counts (and the
    share of the row when ``normalize``, which also sets the colour)."""
    if not series:
        raise ValueError("plot_confusion needs at least one series")
    labels = list(range(len(class_names)))
    fig, axes = _figure(len(series), size=3.2 + 0.3 * len(class_names))
    for ax, (name, (y_true, y_pred)) in zip(axes, series.items(), strict=False):
        counts = confusion_matrix(y_true, y_pred, labels=labels)
        totals = counts.sum(axis=1, keepdims=True)
        shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
        ax.imshow(shares if normalize else counts, cmap="Blues", vmin=0, vmax=1 if normalize else None)
        for (i, j), count in np.ndenumerate(counts):
            text = f"{count}\n{shares[i, j]:.0%}" if normalize else f"{count}"
            ax.text(
                j, i, text, ha="center", va="center", fontsize="small", color="white" if shares[i, j] > 0.5 else "black"
            )
        ax.set_xticks(labels, class_names, rotation=45, ha="right")
        ax.set_yticks(labels, class_names)
        ax.set(xlabel="predicted", ylabel="true", title=name)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
