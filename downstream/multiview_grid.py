"""The experiment grid of the hybrid CNN-VSSM paper (Tables 2-4): backbones x task settings x multi / single task.

``python -m downstream.multiview grid --config configs/downstream/multiview/grid_paper.yaml run.data.table=...``

Every cell comes from one training run in ``<out>/<setting>/<row key>/<multi|label|birads>``: ``multi`` trains both
tasks, single-task mode trains ``label`` and ``birads`` separately. A finished run (its ``metrics.json`` exists) is
not run again, an interrupted one resumes from its last epoch, and a failing one is recorded and skipped, so the
grid can be rerun until complete. ``only`` selects runs by glob (``only='[binary/*, */hybrid_shared/*]'``).
``results.csv`` (one line per run) and ``results.md`` (one table per setting, shaped like the paper's) are written
to ``out``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from downstream.multiview_data import SETTINGS, TASKS
from downstream.multiview_train import MultiviewConfig, train
from mvmlm.config import MISSING, ConfigError
from mvmlm.evaluation import markdown_table
from mvmlm.rundir import RunDir

__all__ = ["MODES", "GridRow", "GridConfig", "plan_runs", "results_table", "to_markdown", "run_grid"]

log = logging.getLogger(__name__)

#: mode -> the task lists of its runs (single-task mode: one run per task)
MODES: dict[str, list[list[str]]] = {"multi": [list(TASKS)], "single": [[task] for task in TASKS]}
METRICS = ("auc", "f1_macro")
TASK_TITLES = {"label": "{Normal, Malignant}"}


@dataclass
class GridRow:
    key: str = MISSING  # folder name of the row's runs, e.g. hybrid_shared
    name: str = MISSING  # row label in the table, e.g. "Hybrid ResNet-VSSM (Shared)"
    backbone: str = MISSING  # registered image encoder
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # replaces run.model.backbone_kwargs
    shared: bool = True
    lr: float = 0.0  # 0 = run.optim.lr


@dataclass
class GridConfig:
    run: MultiviewConfig = field(default_factory=MultiviewConfig)  # every run's config before the row's changes
    rows: list[GridRow] = field(default_factory=list)
    settings: list[str] = field(default_factory=lambda: list(SETTINGS))
    modes: list[str] = field(default_factory=lambda: list(MODES))
    only: list[str] = field(default_factory=list)  # glob patterns of run names to run; [] = all
    out: str = "runs/multiview_grid"


def _check(cfg: GridConfig) -> None:
    if not cfg.rows:
        raise ConfigError("key 'rows': the grid has no rows (backbones)")
    keys = [row.key for row in cfg.rows]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"key 'rows': row keys must be distinct, got {keys}")
    for name, given, known in (("settings", cfg.settings, SETTINGS), ("modes", cfg.modes, MODES)):
        unknown = [value for value in given if value not in known]
        if unknown or not given:
            raise ConfigError(f"key {name!r}: {given} must be a non-empty list of {', '.join(known)}")


def run_name(setting: str, row: GridRow, tasks: list[str]) -> str:
    """``<setting>/<row key>/<multi|task>``."""
    return f"{setting}/{row.key}/{'multi' if len(tasks) > 1 else tasks[0]}"


def plan_runs(cfg: GridConfig) -> list[tuple[str, MultiviewConfig]]:
    """Every run of the grid (before ``only``): its name and full config."""
    _check(cfg)
    base = cfg.run
    runs = []
    for setting in cfg.settings:
        for row in cfg.rows:
            for mode in cfg.modes:
                for tasks in MODES[mode]:
                    name = run_name(setting, row, tasks)
                    run_cfg = dataclasses.replace(
                        base,
                        task=dataclasses.replace(base.task, setting=setting, tasks=list(tasks)),
                        model=dataclasses.replace(base.model, backbone=row.backbone, shared=row.shared,
                                                  backbone_kwargs=dict(row.backbone_kwargs)),
                        optim=dataclasses.replace(base.optim, lr=row.lr or base.optim.lr),
                        out=str(Path(cfg.out) / name), resume="latest",
                    )  # fmt: skip
                    runs.append((name, run_cfg))
    return runs


def _selected(name: str, only: list[str]) -> bool:
    return not only or any(fnmatch.fnmatchcase(name, pattern) for pattern in only)


def results_table(cfg: GridConfig, headlines: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One line per (setting, row): multi- and single-task AUC / F1-macro per task (NaN where not run)."""
    lines = []
    for setting in cfg.settings:
        for row in cfg.rows:
            line: dict[str, Any] = {"setting": setting, "key": row.key, "model": row.name}
            for mode in cfg.modes:
                for tasks in MODES[mode]:
                    values = headlines.get(run_name(setting, row, tasks), {})
                    for task in tasks:
                        for metric in METRICS:
                            line[f"{mode}_{task}_{metric}"] = values.get(f"{task}_{metric}", math.nan)
            lines.append(line)
    return pd.DataFrame(lines)


def to_markdown(table: pd.DataFrame) -> str:
    """One table per task setting, columns as in the paper: multi-task then single-task AUC / F1-macro per task."""
    value_columns = [c for c in table.columns if c not in ("setting", "key", "model")]
    parts = []
    for setting, block in table.groupby("setting", sort=False):
        birads = "BI-RADS {" + ", ".join(map(str, SETTINGS[setting])) + "}"
        titles = {}
        for column in value_columns:
            mode, task, metric = column.split("_", 2)
            classes = TASK_TITLES[task] if task == "label" else birads
            titles[column] = f"{mode}-task {'AUC' if metric == 'auc' else 'F1-macro'} {classes}"
        shown = block[["model", *value_columns]].rename(columns={"model": "Model backbone", **titles})
        parts.append(f"### {setting}: {{Normal, Malignant}} and {birads}\n\n{markdown_table(shown)}")
    return "\n".join(parts)


def run_grid(cfg: GridConfig) -> dict[str, Any]:
    """Run (or pick up) the selected runs, then write ``results.csv`` / ``results.md``; returns the summary."""
    planned = plan_runs(cfg)
    selected = [(name, run_cfg) for name, run_cfg in planned if _selected(name, cfg.only)]
    if not selected:
        raise ConfigError(f"key 'only': {cfg.only} selects none of the {len(planned)} runs, e.g. {planned[0][0]}")
    grid_run = RunDir.create(cfg.out, cfg)
    headlines: dict[str, dict[str, float]] = {}
    failed: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for i, (name, run_cfg) in enumerate(selected, 1):
        metrics_file = Path(run_cfg.out) / "metrics.json"
        if metrics_file.is_file():
            headlines[name] = json.loads(metrics_file.read_text())["headline"]
            log.info("grid %d/%d %s: done before", i, len(selected), name)
            continue
        log.info("grid %d/%d %s", i, len(selected), name)
        start = time.perf_counter()
        try:
            headlines[name] = train(run_cfg)["headline"]
        except Exception as exc:  # noqa: BLE001 - one failing run is recorded; the grid goes on
            log.exception("grid run %s failed", name)
            failed[name] = f"{type(exc).__name__}: {exc}"
        seconds[name] = round(time.perf_counter() - start, 2)
        grid_run.attach_log()  # each run's RunDir took the log over
    table = results_table(cfg, headlines)
    table.to_csv(grid_run.file("results.csv"), index=False)
    grid_run.write_text("results.md", to_markdown(table))
    summary = {"runs": len(selected), "done": len(headlines), "failed": failed, "seconds": seconds,
               "headlines": headlines, "table": str(grid_run.file("results.md"))}  # fmt: skip
    grid_run.write_metrics(summary)
    return summary
