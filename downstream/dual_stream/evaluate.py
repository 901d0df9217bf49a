"""Predictions gathered across processes, binary metrics with patient-bootstrap CIs, and the gate plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mvmlm.metrics import bootstrap_ci

__all__ = ["predict", "binary_metrics", "plot_gates"]


@torch.no_grad()
def predict(engine: Any, model: nn.Module, loader: Any) -> dict:
    """Malignant probability, label, breast id and patient of every breast of ``loader`` (prepared by ``engine``:
    each process predicts its share, ``gather_for_metrics`` joins them without the padding repeats), and the gate
    values per breast (:meth:`~downstream.dual_stream.model.MammoMamba.breast_gates`)."""
    model = engine.unwrap(model)
    model.eval()
    parts: list[dict[str, torch.Tensor]] = []
    for batch in loader:
        out = model(batch["inputs"])
        gates = {f"gate/{name}": value for name, value in model.breast_gates(batch["inputs"], out).items()}
        values = {"prob": out["logits"].float().softmax(-1)[:, 1], "label": batch["label"], "index": batch["index"]}
        parts.append(engine.accelerator.gather_for_metrics({**values, **gates}))
    joined = {key: torch.cat([part[key] for part in parts]).cpu().numpy() for key in parts[0]}
    rows = loader.dataset.breasts.iloc[joined["index"]]
    return {
        "prob": joined["prob"],
        "label": joined["label"],
        "id": rows["breast_id"].tolist(),
        "patient": rows["patient"].tolist(),
        "gates": {key.removeprefix("gate/"): value for key, value in joined.items() if key.startswith("gate/")},
    }


def binary_metrics(y: np.ndarray, prob: np.ndarray, patients: list[str], n_resamples: int) -> dict[str, float]:
    """Accuracy, F1 (malignant), sensitivity, specificity at threshold 0.5, each with a patient-bootstrap CI."""
    pred = (prob >= 0.5).astype(int)

    def rate(rows: np.ndarray, cls: int) -> float:
        base = int((y[rows] == cls).sum())
        return float(((pred[rows] == cls) & (y[rows] == cls)).sum() / base) if base else float("nan")

    def f1(rows: np.ndarray) -> float:
        tp = int(((pred[rows] == 1) & (y[rows] == 1)).sum())
        return 2 * tp / max(1, int((pred[rows] == 1).sum() + (y[rows] == 1).sum()))

    fns = {
        "accuracy": lambda r: float((pred[r] == y[r]).mean()),
        "f1": f1,
        "sensitivity": lambda r: rate(r, 1),
        "specificity": lambda r: rate(r, 0),
    }
    out = {}
    for name, fn in fns.items():
        if n_resamples:
            value, low, high = bootstrap_ci(fn, patients, n_resamples=n_resamples)
        else:
            value, low, high = fn(np.arange(len(y))), float("nan"), float("nan")
        out.update({name: value, f"{name}_low": low, f"{name}_high": high})
    return out


def plot_gates(path: Path, gates: dict[str, np.ndarray]) -> Path:
    """Box plot of the per-breast mean gate of every SeqMoE block (and the stream fusion): saturation shows."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 0.45 * len(gates) + 1), 3.6), layout="constrained")
    ax = fig.subplots()
    ax.boxplot(list(gates.values()), showfliers=False)
    ax.set_xticks(range(1, len(gates) + 1), list(gates), rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("gate value")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
