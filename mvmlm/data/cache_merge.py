"""``mvmlm preprocess --merge``: a cache folder's ``table.parquet`` and ``failures.csv`` (and the ROI pair) assembled
from the part files of its finished shards (:mod:`mvmlm.data.shards`), equal to what one run over the whole table
writes: the same rows in the same order, next to the same cache files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mvmlm.data import schema
from mvmlm.data.preprocess import (
    CROPS_DIR,
    FAILURES_FILE,
    IMAGES_DIR,
    ROI_FAILURES_FILE,
    ROI_TABLE_FILE,
    TABLE_FILE,
    PreprocessParams,
    cache_folder,
    relative_cache_paths,
    shard_identity,
    table_hash,
)
from mvmlm.data.shards import SHARDS_DIR, ShardSetError, finished_shards

__all__ = ["merge_shards"]

log = logging.getLogger(__name__)


def _in_table_order(parts: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Rows gathered from shards in the order of their ``(image_id, path)`` in ``table``."""
    position = {key: i for i, key in enumerate(zip(table["image_id"], table["path"], strict=True))}
    order = [position[key] for key in zip(parts["image_id"], parts["path"], strict=True)]
    return parts.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)


def _merge_part(parts: list[Path], table: pd.DataFrame, name: str, kind: str, params: PreprocessParams) -> pd.DataFrame:
    """One merged cached-rows table (``name``: table.parquet or roi_table.parquet): the rows of ``table`` whose
    cache file (``kind``) one of the shards listed, in table order."""
    listed = set().union(*(schema.read_table(part / name)["cache_path"] for part in parts))
    merged = table.assign(cache_path=relative_cache_paths(table, kind, params.cache_format))
    return merged[merged["cache_path"].isin(listed)].reset_index(drop=True)


def merge_shards(
    table: pd.DataFrame, cache_dir: str | Path, params: PreprocessParams | None = None, num_shards: int | None = None
) -> pd.DataFrame:
    """Write a cache folder's ``table.parquet`` and ``failures.csv`` (and the ROI pair) from its finished shards:
    the same files, rows and order a single run over ``table`` writes.

    Raises:
        ShardSetError: the shards are not one complete set written with these parameters and this table, or a cache
            file they list is missing (naming the shards, or the file).

    Returns:
        The rows that are cached, with ``cache_path`` as an absolute path.
    """
    params = params or PreprocessParams()
    table = schema.check(schema.conform(table), "table to preprocess")
    folder = cache_folder(cache_dir, params, table).resolve()
    if not (folder / SHARDS_DIR).is_dir():
        others = sorted(p.parent.name for p in Path(cache_dir).glob(f"*-{table_hash(table)}/{SHARDS_DIR}"))
        hint = f"; shards of this table with other parameters: {', '.join(others)}" if others else ""
        raise ShardSetError(f"{folder}: no shards with these parameters to merge{hint}")
    parts = finished_shards(folder, shard_identity(folder), num_shards)
    outputs = [(TABLE_FILE, FAILURES_FILE, IMAGES_DIR)]
    if params.roi.enabled:
        outputs.append((ROI_TABLE_FILE, ROI_FAILURES_FILE, CROPS_DIR))
    merged = {}
    for table_file, failures_file, kind in outputs:
        merged[table_file] = _merge_part(parts, table, table_file, kind, params)
        absent = [p for p in merged[table_file]["cache_path"] if not (folder / p).is_file()]
        if absent:
            raise ShardSetError(
                f"{folder / absent[0]}: listed by a shard but missing ({len(absent)} such files); rerun the shards"
            )
        failures = [pd.read_csv(part / failures_file, dtype=str, keep_default_na=False) for part in parts]
        merged[failures_file] = _in_table_order(pd.concat(failures, ignore_index=True), table)
    for name, frame in merged.items():
        if name.endswith(".csv"):
            frame.to_csv(folder / name, index=False)
        else:
            schema.write_table(frame, folder / name)
    log.info("preprocess %s: merged %d shards", folder, len(parts))
    cached = merged[TABLE_FILE]
    return cached.assign(cache_path=[str(folder / rel) for rel in cached["cache_path"]])
