"""``mvmlm multiview`` (``python -m downstream.multiview``): train and evaluate one configuration of the four-view
multi-task BI-RADS and malignancy classifier (hybrid CNN-VSSM paper)::

    mvmlm multiview --config configs/multiview/paper.yaml data.table=CACHE/table.parquet
    accelerate launch -m downstream.multiview --config ... task.setting=ternary model.backbone=resnet18 --resume latest

Splits are the table's own (``data.train_split`` / ``val_split``); the paper's grid is ``mvmlm multiview-grid``
(:mod:`downstream.multiview.grid`). The model, data, training and evaluation live in the sibling modules.
"""

from __future__ import annotations

from typing import Any

from downstream.multiview import COMMAND
from downstream.multiview.train import train

__all__ = ["main"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train one configuration; returns the results written to ``<out>/metrics.json``."""
    cfg = COMMAND.parse(argv)
    return train(cfg)
