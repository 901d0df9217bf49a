"""Four-view multi-task BI-RADS and malignancy classifier (hybrid CNN-VSSM paper): ``python -m downstream.multiview``.

Train and evaluate one configuration (also ``mvmlm multiview``)::

    python -m downstream.multiview --config configs/downstream/multiview/paper.yaml data.table=CACHE/table.parquet
    accelerate launch -m downstream.multiview --config ... task.setting=ternary model.backbone=resnet18 --resume latest

Run the paper's grid (Tables 2-4: 6 backbones x multi / single task x 3 task settings), or a subset of it::

    python -m downstream.multiview grid --config configs/downstream/multiview/grid_paper.yaml \\
        run.data.table=CACHE/table.parquet 'only=[binary/*]'

A run directory (``out``) holds ``config.yaml``, ``provenance.json``, ``log.txt``, ``best/`` (weights + config of
the best validation epoch), ``metrics.json`` (AUC / F1-macro per task, per side and pooled, with bootstrap CIs; mean
attention per view and per missing-view pattern), ``predictions_<split>.csv`` and ``plots/``; the grid folder holds
one run directory per configuration plus ``results.md`` / ``results.csv``.

The model, data, training and grid live in ``downstream.multiview_{model,data,train,eval,grid}``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from downstream.multiview_grid import GridConfig, run_grid
from downstream.multiview_model import VIEWS
from downstream.multiview_train import MultiviewConfig, train
from mvmlm.cli import run_command
from mvmlm.config import load_config

__all__ = ["main", "train_main", "grid_main", "summary_lines"]


def train_main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train one configuration; returns the metrics written to ``<out>/metrics.json``."""
    parser = argparse.ArgumentParser(prog="python -m downstream.multiview", description=__doc__)
    parser.add_argument("--resume", help="'latest' or a checkpoint folder (same as resume=...)")
    return train(load_config(MultiviewConfig, argv, parser=parser))


def grid_main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the grid of a grid config; returns its summary (results table path, failures)."""
    parser = argparse.ArgumentParser(prog="python -m downstream.multiview grid", description=__doc__)
    return run_grid(load_config(GridConfig, argv, parser=parser))


#: first argument -> sub-command (anything else: train one configuration)
SUBCOMMANDS: dict[str, Callable[[list[str] | None], dict[str, Any]]] = {"grid": grid_main}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m downstream.multiview [grid] --config FILE [key=value ...]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        return SUBCOMMANDS[args[0]](args[1:])
    return train_main(args)


def summary_lines(results: dict[str, Any], split: str = "val") -> list[str]:
    """Readable lines of a run's results: AUC / F1-macro per task (pooled over sides) and mean attention per view."""
    metrics = results["eval"][split]
    lines = [f"four-view classifier, best epoch {results['best_epoch']} ({split} split):"]
    for task, values in metrics["tasks"].items():
        pooled = values["pooled"]
        lines.append(f"  {task:<7} AUC {pooled['auc']:.3f}  F1-macro {pooled['f1_macro']:.3f}  ({pooled['n']} breasts)")
    attention = metrics["attention"]["overall"]
    lines.append("  mean view attention: " + "  ".join(f"{view} {attention[view]:.2f}" for view in VIEWS))
    return lines


if __name__ == "__main__":
    sys.exit(run_command(main))
