"""The MV-MLM paper's Table 1 protocol as one command: ``mvmlm pretrain-grid --config configs/pretrain/grid_table1.yaml
table=CACHE/table.parquet corpus=runs/reports``.

For every encoder x variant (CLIP, MV-CLIP, MV-CLIP+Tr) a *row*: ``mvmlm pretrain`` (the encoder's config, the
variant's overlay, then ``pretrain``), then ``mvmlm probe`` and ``mvmlm finetune`` of its model on each of
``evaluations`` (a table and its tasks) at ``fractions`` over ``seeds``. Each is a *unit*:
``<out>/<encoder>/<variant>/pretrain`` and ``<out>/<encoder>/<variant>/<evaluation>/<probe|finetune>``. The stages
run through the command registry, as a user would run them. Each unit records the key of its settings (its
resolved config without folders, workers, progress and trackers; the table and corpus by their content; a probe's
or fine-tune's pretraining by its key) in ``settings.json`` before it runs. A rerun skips a finished unit whose key
still matches, continues an interrupted pretraining or fine-tuning from its checkpoints and runs a unit whose
settings changed again from scratch. A failing unit is recorded and its row's later units skipped; the grid goes on.
``only`` (globs on ``<encoder>/<variant>``) runs some rows; the table also holds the other rows that finished before
with the same settings.

``<out>/results.csv`` (one line per row x evaluation x protocol x task x fraction: test AUC mean and sd over seeds,
the seeds' mean patient-bootstrap 95 % bounds), ``seeds.csv`` (one line per evaluated seed) and ``results.md`` (per
protocol, tables shaped like the paper's: rows encoder x method, columns task x fraction) are written to ``out``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from mvmlm.cli import commands
from mvmlm.config import ConfigError, config_file, config_to_dict
from mvmlm.evaluation import markdown_table
from mvmlm.rundir import RunDir
from mvmlm.sweep import (
    claim_unit,
    file_digest,
    launch_processes,
    settings_key,
    shaping_settings,
    unit_matches,
)
from pretrain.grid_config import PROTOCOLS, GridEncoder, GridEvaluation, GridVariant, PretrainGridConfig

__all__ = [
    "main",
    "run_grid",
    "plan_rows",
    "pretrain_argv",
    "evaluation_argv",
    "unit_settings",
    "summarize_runs",
    "to_markdown",
]

log = logging.getLogger(__name__)

MODEL_DIR = "model"  # where `mvmlm pretrain` puts its model inside its run directory
PROBED = "mvmlm"  # the encoder name the grid gives each row's model in the probe / fine-tune config
#: keys that do not shape a unit's result besides :data:`mvmlm.sweep.UNSHAPING` (the text feature cache, embedding)
UNSHAPING = {"data": ("text_cache",), "embed": ("num_workers", "cache", "batch_size", "device")}
ROW_KEYS = ["encoder", "variant", "encoder_name", "method"]
SETTING_KEYS = [*ROW_KEYS, "evaluation", "protocol", "task", "fraction"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``mvmlm pretrain-grid``: run (or pick up) the grid; returns its summary (results, failures, timings)."""
    from pretrain import GRID

    return run_grid(GRID.parse(argv))


def _check(cfg: PretrainGridConfig) -> None:
    for name, entries in (("encoders", cfg.encoders), ("variants", cfg.variants)):
        keys = [entry.key for entry in entries]
        if not keys or len(set(keys)) != len(keys):
            raise ConfigError(f"key {name!r}: needs at least one entry, with distinct keys; got {keys}")
    unknown = [p for p in cfg.protocols if p not in PROTOCOLS]
    if unknown or not cfg.protocols:
        raise ConfigError(f"key 'protocols': {cfg.protocols} must be a non-empty list of {', '.join(PROTOCOLS)}")
    if not cfg.evaluations:
        raise ConfigError("key 'evaluations': none given; e.g. evaluations.vindr.tasks=[mass,calcification]")
    empty = [name for name, evaluation in cfg.evaluations.items() if not evaluation.tasks]
    if empty or not cfg.fractions or not cfg.seeds:
        raise ConfigError(f"keys 'fractions', 'seeds' and each evaluation's 'tasks' {empty} need at least one value")


def plan_rows(cfg: PretrainGridConfig) -> list[tuple[GridEncoder, GridVariant, bool]]:
    """Every row (encoders outermost) and whether ``only`` selects it to run (all when empty); ConfigError when it
    selects none."""
    _check(cfg)
    rows = [(e, v) for e in cfg.encoders for v in cfg.variants]
    planned = [
        (e, v, not cfg.only or any(fnmatch.fnmatchcase(f"{e.key}/{v.key}", p) for p in cfg.only)) for e, v in rows
    ]
    if not any(selected for *_, selected in planned):
        raise ConfigError(f"key 'only': {cfg.only} selects none of the rows, e.g. {rows[0][0].key}/{rows[0][1].key}")
    return planned


def pretrain_argv(cfg: PretrainGridConfig, encoder: GridEncoder, variant: GridVariant, out: Path) -> list[str]:
    """``mvmlm pretrain``'s arguments for one row (its checkpoints continue where a killed grid stopped)."""
    files = ["--config", config_file(encoder.config), "--config", config_file(variant.config)]
    fixed = [f"data.table={cfg.table}", f"data.corpus={cfg.corpus}", f"out={out}", "train.resume=latest"]
    return [*files, *cfg.pretrain, *fixed]


def evaluation_argv(
    cfg: PretrainGridConfig, evaluation: GridEvaluation, protocol: str, checkpoint: Path, out: Path
) -> list[str]:
    """``mvmlm probe`` / ``mvmlm finetune``'s arguments for one row's model: the evaluation's table and tasks and the
    grid's fractions and seeds win over the stage's own settings."""
    stage = getattr(cfg, protocol)
    files = [arg for name in stage.configs for arg in ("--config", config_file(name))]
    defaults = [f"embed.cache={Path(cfg.out) / 'embeddings'}"] if protocol == "probe" else []
    # groupings of tasks left out (e.g. by an override of `tasks`) are not passed on
    classes = {task: list(v) for task, v in evaluation.task_classes.items() if task in evaluation.tasks}
    fixed = [
        f"data.table={evaluation.table or cfg.table}",
        f"encoders.{PROBED}.source=mvclip",
        f"encoders.{PROBED}.checkpoint={checkpoint}",
        f"tasks={json.dumps(list(evaluation.tasks))}",
        f"task_classes={json.dumps(classes)}",
        f"fractions={json.dumps(list(cfg.fractions))}",
        f"seeds={json.dumps(list(cfg.seeds))}",
        f"out={out}",
        *(["train.resume=latest"] if protocol == "finetune" else []),
    ]
    return [*files, *defaults, *stage.overrides, *fixed]


def _folder_digest(folder: str | Path) -> str:
    """A report corpus by its content: its manifest and parts."""
    folder = Path(folder)
    files = [folder / "manifest.json", *sorted((folder / "parts").glob("*.parquet"))]
    digests = [f"{f.name}:{file_digest(f)}" for f in files if f.is_file()]
    if not digests:
        raise ConfigError(f"key 'corpus': {folder} holds no report corpus (manifest.json, parts/*.parquet)")
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def _by_content(node: Any, contents: dict[str, str]) -> Any:
    """``node`` with every string that is a key of ``contents`` (an input's path) replaced by its content key."""
    if isinstance(node, dict):
        return {key: _by_content(value, contents) for key, value in node.items()}
    if isinstance(node, list):
        return [_by_content(value, contents) for value in node]
    return contents.get(node, node) if isinstance(node, str) else node


def unit_settings(command: str, argv: list[str], contents: dict[str, str]) -> dict[str, Any]:
    """What shapes a unit's result: its resolved config without :data:`UNSHAPING`, its inputs by their content
    (``contents``: path -> content key, e.g. a table's digest, a model's pretraining key) and the number of processes
    (batch sizes are per process)."""
    settings = shaping_settings(config_to_dict(commands()[command].parse(argv)), UNSHAPING)
    return {**_by_content(settings, contents), "processes": launch_processes()}


class _Units:
    """Runs units of the grid, skipping finished ones; records timings and failures."""

    def __init__(self, grid_run: RunDir) -> None:
        self.grid_run = grid_run
        self.seconds: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self.reused: list[str] = []

    def run(
        self, name: str, command: str, argv: list[str], settings: dict[str, Any], folder: Path, selected: bool = True
    ) -> dict | None:
        """The unit's ``metrics.json`` (run now, or from a finished run with the same settings); None if it failed,
        or, for a unit ``only`` leaves out (not ``selected``: its folder is left as it is), if it has not finished."""
        if not selected:
            finished = unit_matches(folder, settings) and (folder / "metrics.json").is_file()
            return json.loads((folder / "metrics.json").read_text()) if finished else None
        if claim_unit(folder, settings) and (folder / "metrics.json").is_file():
            log.info("pretrain-grid %s: finished before with the same settings", name)
            self.reused.append(name)
            return json.loads((folder / "metrics.json").read_text())
        log.info("pretrain-grid %s: mvmlm %s", name, command)
        start = time.perf_counter()
        try:
            commands()[command].run(argv)
        except Exception as exc:  # noqa: BLE001 - one failing unit is recorded; the grid goes on
            log.exception("pretrain-grid unit %s failed", name)
            self.failed[name] = f"{type(exc).__name__}: {exc}"
            return None
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 1)
            self.grid_run.attach_log()  # the unit's RunDir took the log over
        return json.loads((folder / "metrics.json").read_text())


def _row_records(
    result: dict, encoder: GridEncoder, variant: GridVariant, evaluation: str, protocol: str
) -> list[dict]:
    """One record per evaluation (task, fraction, seed) of a probe / fine-tune run, named for the grid's row."""
    out = []
    for r in result["results"]:
        method = variant.name or variant.key
        out.append(
            {
                "encoder": encoder.key,
                "variant": variant.key,
                "encoder_name": encoder.name or encoder.key,
                "method": method if r["encoder"] == PROBED else f"{method} ({r['encoder']})",
                "evaluation": evaluation,
                "protocol": protocol,
                **{k: r[k] for k in ("task", "fraction", "seed", "n_train", "auc", "auc_low", "auc_high")},
            }
        )
    return out


def summarize_runs(seeds: pd.DataFrame) -> pd.DataFrame:
    """Per row x protocol x task x fraction: seeds run, AUC mean and sd over seeds, the seeds' mean 95 % bounds."""
    grouped = seeds.groupby(SETTING_KEYS, sort=False)
    return pd.DataFrame(
        {
            "runs": grouped.size(),
            "auc_mean": grouped["auc"].mean(),
            "auc_std": grouped["auc"].std(ddof=1),
            "auc_low": grouped["auc_low"].mean(),
            "auc_high": grouped["auc_high"].mean(),
        }
    ).reset_index()


def _pivot(block: pd.DataFrame, cells: list[str]) -> pd.DataFrame:
    """Rows encoder x method, columns ``<task> <fraction>`` (``<evaluation>/<task>`` where evaluations share a task)."""
    shared = block.groupby("task").evaluation.nunique().max() > 1
    tasks = block.evaluation + "/" + block.task if shared else block.task
    frame = block.assign(cell=cells, column=[f"{t} {f:.0%}" for t, f in zip(tasks, block.fraction, strict=True)])
    table = frame.pivot_table(
        index=["encoder_name", "method"], columns="column", values="cell", aggfunc="first", sort=False
    )
    return table.reset_index().rename(columns={"encoder_name": "Encoder", "method": "Method"})


def to_markdown(results: pd.DataFrame) -> str:
    """Per protocol two tables shaped like the paper's Table 1 (rows encoder x method, columns task x label
    fraction): test AUC ``mean ± sd`` over seeds, then the seeds' mean patient-bootstrap 95 % CI."""
    titles = {"probe": "Linear probe", "finetune": "Fine-tune"}
    parts = []
    for protocol, block in results.groupby("protocol", sort=False):
        spread = [
            f"{m:.3f}" if s != s else f"{m:.3f} ± {s:.3f}" for m, s in zip(block.auc_mean, block.auc_std, strict=True)
        ]
        bounds = [f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(block.auc_low, block.auc_high, strict=True)]
        title = titles.get(protocol, protocol)
        parts.append(f"### {title}: test AUC, mean ± sd over seeds\n\n{markdown_table(_pivot(block, spread))}")
        parts.append(
            f"### {title}: the seeds' mean patient-bootstrap 95 % CI\n\n{markdown_table(_pivot(block, bounds))}"
        )
    return "\n".join(parts)


def run_grid(cfg: PretrainGridConfig) -> dict[str, Any]:
    """Run (or pick up) the selected rows, then write ``results.csv``, ``seeds.csv``, ``results.md``."""
    rows = plan_rows(cfg)
    grid_run = RunDir.create(cfg.out, cfg)
    tables = {path: file_digest(path) for path in {cfg.table, *(e.table for e in cfg.evaluations.values() if e.table)}}
    inputs = {**tables, cfg.corpus: _folder_digest(cfg.corpus)}
    units, records = _Units(grid_run), []
    for i, (encoder, variant, selected) in enumerate(rows, 1):
        row = f"{encoder.key}/{variant.key}"
        if selected:
            log.info("pretrain-grid row %d/%d: %s", i, len(rows), row)
        folder = Path(cfg.out) / row
        argv = pretrain_argv(cfg, encoder, variant, folder / "pretrain")
        settings = unit_settings("pretrain", argv, inputs)
        if units.run(f"{row}/pretrain", "pretrain", argv, settings, folder / "pretrain", selected) is None:
            continue
        model = folder / "pretrain" / MODEL_DIR
        for (name, evaluation), protocol in itertools.product(cfg.evaluations.items(), cfg.protocols):
            out = folder / name / protocol
            argv = evaluation_argv(cfg, evaluation, protocol, model, out)
            upstream = {**tables, str(model): settings_key(settings)}
            unit = unit_settings(protocol, argv, upstream)
            result = units.run(f"{row}/{name}/{protocol}", PROTOCOLS[protocol], argv, unit, out, selected)
            if result is not None:
                records.extend(_row_records(result, encoder, variant, name, protocol))
    summary: dict[str, Any] = {
        "rows": sum(selected for *_, selected in rows),
        "failed": units.failed,
        "reused": units.reused,
        "seconds": units.seconds,
        "results": [],
    }
    if records:
        seeds = pd.DataFrame(records)
        results = summarize_runs(seeds)
        seeds.to_csv(grid_run.file("seeds.csv"), index=False)
        results.to_csv(grid_run.file("results.csv"), index=False)
        text = to_markdown(results)
        grid_run.write_text("results.md", f"# MV-MLM Table 1 protocol ({grid_run.path})\n\n{text}")
        summary |= {"results": results.to_dict("records"), "table": str(grid_run.file("results.md"))}
        print(f"\npretrain-grid ({grid_run.path}):\n\n{text}")
    for name, reason in units.failed.items():
        print(f"pretrain-grid: unit {name} failed: {reason}")
    grid_run.write_metrics(summary)
    return summary
