"""Patient-level splits with a fixed seed, for sources that ship no split (or no validation split), and the
``mvmlm split`` command that re-splits a table once for every command that reads it."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mvmlm.config import MISSING, ConfigError
from mvmlm.data.ids import patient_keys

__all__ = ["DEFAULT_TEST_FRACTION", "patient_split", "source_less_split", "SplitConfig", "resplit", "main"]

log = logging.getLogger(__name__)

#: share of patients held out as test where the data ships no split (RSNA, CMMD, EMBED, the synthetic truth)
DEFAULT_TEST_FRACTION = 0.2


def patient_split(
    patient_ids: pd.Series,
    *,
    seed: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    fixed: pd.Series | None = None,
) -> pd.Series:
    """Assign ``train`` / ``val`` / ``test`` per patient, so no patient spans two splits.

    Args:
        patient_ids: one entry per row (image); the result is aligned with it.
        seed: the split is a pure function of the set of patient ids and the seed (row order does not matter).
        val_fraction, test_fraction: shares of the patients not already fixed. A share > 0 holds out at least one
            patient as long as another stays in training (3 patients at 10 % still give a validation patient).
        fixed: optional per-row split from the source (e.g. VinDr ``test``); rows with a value keep it and
            their patients are not drawn again. NA rows are assigned.

    Returns:
        A string Series of splits aligned with ``patient_ids``.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1), sum < 1")
    ids = patient_ids.astype("string")
    result = pd.Series(pd.NA, index=ids.index, dtype="string")
    if fixed is not None:
        result = fixed.astype("string").reindex(ids.index)
    open_patients = np.array(sorted(set(ids[result.isna()]) - set(ids[result.notna()])), dtype=object)
    order = np.random.default_rng(seed).permutation(len(open_patients))
    n_test = _held_out(test_fraction, len(open_patients), len(open_patients))
    n_val = _held_out(val_fraction, len(open_patients), len(open_patients) - n_test)
    assigned = {}
    for rank, index in enumerate(order):
        assigned[open_patients[index]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    todo = result.isna()
    result[todo] = ids[todo].map(assigned)
    return result


def _held_out(fraction: float, total: int, pool: int) -> int:
    """Patients a ``fraction`` of ``total`` holds out of the ``pool`` still in training.

    ``round(fraction * total)``, but at least one when ``fraction > 0`` and never the pool's last patient, so a small
    set still gets a validation (test) patient and keeps a training one.
    """
    count = int(round(fraction * total))
    if fraction > 0 and pool >= 2:
        count = max(count, 1)
    return min(count, max(pool - 1, 0))


def source_less_split(patient_ids: pd.Series, *, seed: int, val_fraction: float) -> pd.Series:
    """The split of data that ships none: patient-level train / val / test, :data:`DEFAULT_TEST_FRACTION` as test."""
    return patient_split(patient_ids, seed=seed, val_fraction=val_fraction, test_fraction=DEFAULT_TEST_FRACTION)


@dataclass
class SplitConfig:
    table: str = MISSING  # a canonical table or the table.parquet of a preprocess cache
    out: str = MISSING  # the re-split table (parquet); cache paths are rewritten relative to its folder
    keep: list[str] = field(default_factory=lambda: ["test"])  # splits kept as they are (their patients too)
    val_fraction: float = 0.2  # share of the other patients moved to val
    test_fraction: float = 0.0  # share of the other patients moved to test
    seed: int = 0


def resplit(table: pd.DataFrame, cfg: SplitConfig) -> pd.Series:
    """New splits of ``table``'s rows: rows in ``cfg.keep`` keep theirs, the other patients are drawn again."""
    fixed = table["split"].astype("string").where(table["split"].isin(cfg.keep))
    return patient_split(
        patient_keys(table), seed=cfg.seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, fixed=fixed
    )


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """``mvmlm split``: write a re-split copy of a table (every command then reads that split)."""
    from mvmlm.commands import SPLIT
    from mvmlm.data import schema

    cfg = SPLIT.parse(argv)
    source, out = Path(cfg.table), Path(cfg.out)
    if source.resolve() == out.resolve():
        raise ConfigError(f"out: {out} is the input table; write the re-split table to another file")
    table = schema.read_table(source)
    table["split"] = resplit(table, cfg)
    if "cache_path" in table.columns:  # relative to the table's folder: keep them pointing at the same files
        table["cache_path"] = [
            os.path.relpath(source.parent.resolve() / p, out.parent.resolve()) for p in table["cache_path"]
        ]
    schema.write_table(table, out)
    counts = table.drop_duplicates(["dataset", "patient_id"])["split"].value_counts().to_dict()
    log.info("%s: patients per split %s -> %s", source, counts, out)
    return table
