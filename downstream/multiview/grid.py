"""The experiment grid of the hybrid CNN-VSSM paper (Tables 2-4): backbones x task settings x multi / single task.

``mvmlm multiview-grid --config configs/multiview/grid_paper.yaml run.data.table=CACHE/table.parquet``

Every cell comes from one training run in ``<out>/<setting>/<row key>/<multi|label|birads>``: ``multi`` trains both
tasks, single-task mode trains ``label`` and ``birads`` separately. Each run records the key of its settings in
``settings.json`` (a hash of its config, the table by its content, and the process count; folders, workers, progress
and trackers left out) before it trains. A rerun reuses a finished run whose key still matches, resumes an
interrupted one with the same key from its last checkpoint, and trains a run whose settings changed again from
scratch (its old folder is replaced). A failing run is recorded and skipped, so the grid can be rerun until
complete. ``only`` selects runs by glob (``only='[binary/*, */hybrid_shared/*]'``). ``results.csv`` (one line per
run) and ``results.md`` (one table per setting, shaped like the paper's) are written to ``out``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from downstream.multiview import GRID
from downstream.multiview.config import MODES, SETTINGS, GridConfig, GridRow, MultiviewConfig
from downstream.multiview.train import train
from mvmlm.config import ConfigError, config_to_dict
from mvmlm.evaluation import markdown_table
from mvmlm.rundir import RunDir
from mvmlm.sweep import claim_unit, file_digest, launch_processes, shaping_settings

__all__ = ["main", "plan_runs", "run_settings", "results_table", "to_markdown", "run_grid"]

log = logging.getLogger(__name__)

METRICS = ("auc", "f1_macro")
TASK_TITLES = {"label": "{Normal, Malignant}"}
#: config keys that do not shape a run's result (left out of its settings key)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``mvmlm multiview-grid``: run the grid of a grid config; returns its summary (results table, failures)."""
    cfg = GRID.parse(argv)
    return run_grid(cfg)


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
                        model=dataclasses.replace(
                            base.model,
                            backbone=row.backbone,
                            shared=row.shared,
                            backbone_kwargs=dict(row.backbone_kwargs),
                        ),
                        optim=dataclasses.replace(base.optim, lr=row.lr or base.optim.lr),
                        train=dataclasses.replace(base.train, resume="latest"),
                        out=str(Path(cfg.out) / name),
                    )
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


def run_settings(run_cfg: MultiviewConfig, table_digest: str) -> dict[str, Any]:
    """What shapes a run's result: its config without :data:`mvmlm.sweep.UNSHAPING`, the table by its content
    (``table_digest``) and the number of processes (batch sizes are per process)."""
    settings = shaping_settings(config_to_dict(run_cfg))
    settings["data"]["table"] = table_digest
    return {**settings, "processes": launch_processes()}


def _finished(folder: Path, settings: dict[str, Any]) -> bool:
    """Whether the run in ``folder`` finished with these ``settings``; a run started with other settings (or before
    settings were recorded) is removed, so it trains again from scratch. Records the settings for the run to come."""
    return claim_unit(folder, settings) and (folder / "metrics.json").is_file()


def run_grid(cfg: GridConfig) -> dict[str, Any]:
    """Run (or pick up) the selected runs, then write ``results.csv`` / ``results.md``; returns the summary."""
    planned = plan_runs(cfg)
    selected = [(name, run_cfg) for name, run_cfg in planned if _selected(name, cfg.only)]
    if not selected:
        raise ConfigError(f"key 'only': {cfg.only} selects none of the {len(planned)} runs, e.g. {planned[0][0]}")
    grid_run = RunDir.create(cfg.out, cfg)
    table_digest = file_digest(cfg.run.data.table)
    headlines: dict[str, dict[str, float]] = {}
    failed: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for i, (name, run_cfg) in enumerate(selected, 1):
        folder = Path(run_cfg.out)
        if _finished(folder, run_settings(run_cfg, table_digest)):
            headlines[name] = json.loads((folder / "metrics.json").read_text())["headline"]
            log.info("grid %d/%d %s: finished before with the same settings", i, len(selected), name)
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
    summary = {
        "runs": len(selected),
        "done": len(headlines),
        "failed": failed,
        "seconds": seconds,
        "headlines": headlines,
        "table": str(grid_run.file("results.md")),
    }
    grid_run.write_metrics(summary)
    return summary
