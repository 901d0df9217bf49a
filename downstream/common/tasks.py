"""Evaluation tasks on breasts: label extraction, patient-level splits, label fractions sampled by patient.

A task maps a breast-level column of the canonical table to class indices::

    task = get_task("birads", ["1", "2,3", "4,5"])     # 3 classes; values 0 and 6 are left out
    y = task.labels(breasts)                            # (n,) class index, -1 where missing / outside the classes

Label fractions (1 / 10 / 100 %) are drawn from the training split by patient and stratified: each patient's
stratum is the highest class among its labelled breasts, and every stratum gives ``max(1, round(f * n))`` patients,
so a 1 % subset still holds each class. The draw depends only on the set of patients and the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mvmlm.config import ConfigError, DataConfig
from mvmlm.data.exams import build_breasts
from mvmlm.data.leakage import SplitError, check_patient_splits
from mvmlm.data.preprocess import read_cached_table

__all__ = [
    "Task",
    "TASKS",
    "get_task",
    "get_tasks",
    "DataConfig",
    "load_breasts",
    "check_patient_splits",
    "sample_fraction",
    "SplitError",
]


@dataclass(frozen=True)
class Task:
    """A classification task: ``column`` values grouped into classes.

    Attributes:
        name: the task name used in configs and tables.
        column: the breast-level column of the canonical table.
        classes: per class, the column values (as text) that belong to it.
        class_names: one display name per class.
    """

    name: str
    column: str
    classes: tuple[tuple[str, ...], ...]
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    def labels(self, frame: pd.DataFrame) -> np.ndarray:
        """Class index per row (int64), -1 where the value is missing or in no class."""
        if self.column not in frame.columns:
            raise KeyError(f"task {self.name!r}: the table has no column {self.column!r}")
        index = {value: k for k, values in enumerate(self.classes) for value in values}
        values = frame[self.column]
        return np.array([-1 if pd.isna(v) else index.get(str(v), -1) for v in values], dtype=np.int64)


def _binary(name: str, column: str) -> Task:
    return Task(name, column, (("0",), ("1",)), (f"no {name}", name))


#: built-in tasks; ``get_task(name, classes)`` regroups the class set
TASKS: dict[str, Task] = {
    "malignancy": _binary("malignancy", "malignant"),
    "mass": _binary("mass", "mass"),
    "calcification": _binary("calcification", "calcification"),
    "density": Task("density", "density", (("A",), ("B",), ("C",), ("D",)), ("A", "B", "C", "D")),
    "birads": Task(
        "birads", "birads", tuple((str(k),) for k in range(1, 6)), tuple(f"BI-RADS {k}" for k in range(1, 6))
    ),
}


def get_task(name: str, classes: Sequence[str] | None = None) -> Task:
    """The task ``name``, optionally with its classes regrouped: ``classes`` lists per class the comma-separated
    column values, e.g. ``["1", "2,3", "4,5"]`` for BI-RADS.

    Raises:
        ConfigError: unknown task, fewer than two classes, or a value in two classes.
    """
    try:
        task = TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}") from None
    if not classes:
        return task
    groups = tuple(tuple(v.strip() for v in str(spec).split(",") if v.strip()) for spec in classes)
    flat = [v for group in groups for v in group]
    if len(groups) < 2 or any(not g for g in groups) or len(flat) != len(set(flat)):
        raise ConfigError(f"task {name!r}: classes {list(classes)} must be >= 2 non-empty, disjoint value groups")
    names = tuple(f"{task.column} {'/'.join(g)}" for g in groups)
    return Task(task.name, task.column, groups, names)


def get_tasks(names: Sequence[str], classes: dict[str, list[str]] | None = None) -> list[Task]:
    """The tasks ``names`` with class groupings from ``classes`` (task -> class specs); unused keys raise."""
    classes = dict(classes or {})
    unused = sorted(set(classes) - set(names))
    if unused:
        raise ConfigError(f"task_classes given for task(s) {unused} that are not in tasks {list(names)}")
    if not names:
        raise ConfigError("no tasks given")
    return [get_task(name, classes.get(name)) for name in names]


def load_breasts(cfg: DataConfig) -> pd.DataFrame:
    """Breasts (CC + MLO slots, labels) of a preprocessed table, with ``breast_id`` and ``patient`` columns.

    Raises:
        SplitError: a patient in two splits, or one of the configured splits empty.
        NotCachedError: the table is not the ``table.parquet`` of a ``mvmlm preprocess`` run.
    """
    images = read_cached_table(cfg.table)
    check_patient_splits(images, cfg.table)
    breasts = build_breasts(images)
    for split in (cfg.train_split, cfg.val_split, cfg.test_split):
        if not (breasts["split"] == split).any():
            raise SplitError(f"{cfg.table}: no breasts in split {split!r} (splits: {sorted(breasts.split.unique())})")
    return breasts


def sample_fraction(patients: Sequence[str], labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Row indices of a ``fraction`` of the patients, stratified by each patient's highest class.

    Rows with label -1 are never drawn. Every stratum gives ``max(1, round(fraction * n_patients))`` patients, and
    all labelled rows of a drawn patient come along.

    Raises:
        ValueError: ``fraction`` outside (0, 1] or no labelled row.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    patients = np.asarray(patients, dtype=object)
    labels = np.asarray(labels)
    labelled = np.flatnonzero(labels >= 0)
    if labelled.size == 0:
        raise ValueError("no labelled rows to sample from")
    strata = pd.Series(labels[labelled]).groupby(patients[labelled]).max()  # patient -> stratum, sorted by patient
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for _, members in strata.groupby(strata, sort=True):
        ids = np.asarray(members.index, dtype=object)
        take = max(1, round(fraction * ids.size))
        chosen.extend(ids[rng.permutation(ids.size)[:take]])
    return labelled[np.isin(patients[labelled], np.asarray(chosen, dtype=object))]
