"""Contact sheets: a PNG grid of exams, four views each (L-CC, L-MLO, R-CC, R-MLO), labels in the titles (exams are
numbered; no identifier is drawn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mvmlm.data.exams import EXAM_SLOTS, build_exams
from mvmlm.data.preprocess import load_cached

__all__ = ["contact_sheet"]


def _side_label(exam: pd.Series, side: str) -> str:
    """``BI-RADS 4, dens C, mass, calc`` for one side of an exam row (unknown values shown as ``-``)."""

    def value(name: str):
        v = exam.get(f"{side}_{name}")
        return None if v is None or pd.isna(v) else v

    parts = [f"BI-RADS {value('birads') if value('birads') is not None else '-'}", f"dens {value('density') or '-'}"]
    parts += [
        short
        for name, short in (("mass", "mass"), ("calcification", "calc"), ("malignant", "malignant"))
        if value(name) == 1
    ]
    return ", ".join(parts)


def contact_sheet(cached_table: pd.DataFrame, out: str | Path, *, exams: int = 4) -> Path:
    """Draw the first ``exams`` exams of a preprocessed table (with ``cache_path``) into ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = build_exams(cached_table).head(exams)
    if table.empty:
        raise ValueError("contact sheet: the table holds no exam with a CC or MLO view")
    fig = plt.figure(figsize=(8, 2.8 * len(table)), layout="constrained")
    rows = enumerate(table.iterrows(), start=1)
    for subfig, (number, (_, exam)) in zip(np.atleast_1d(fig.subfigures(len(table), 1)), rows, strict=True):
        # numbered, not named: patient and exam identifiers stay out of the picture (and the pages that embed it)
        subfig.suptitle(f"exam {number} of {len(table)}  ({exam['split']} split)", fontsize=9)
        for ax, slot in zip(subfig.subplots(1, 4), EXAM_SLOTS, strict=True):
            ax.set_axis_off()
            if exam[f"{slot}_present"]:
                ax.imshow(load_cached(exam[f"{slot}_cache_path"]), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(np.zeros((2, 1)), cmap="gray", vmin=0, vmax=1)
                ax.text(0.5, 0.5, "missing", color="white", ha="center", va="center", transform=ax.transAxes)
            side = slot.split("_")[0]
            label = f"\n{_side_label(exam, side)}" if slot.endswith("CC") else "\n"
            ax.set_title(slot.replace("_", "-") + label, fontsize=7)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
