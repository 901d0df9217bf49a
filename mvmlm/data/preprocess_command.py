"""``mvmlm preprocess``: its config and entry point; the cache itself is :mod:`mvmlm.data.preprocess`.

``mvmlm preprocess --table vindr.parquet --root /data/vindr --out cache --workers 8 height=1520 width=912``
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from mvmlm.batch import DEFAULT_MAX_FAILURES, check_max_failures, failure_summary
from mvmlm.config import MISSING, ConfigError
from mvmlm.data import schema
from mvmlm.data.preprocess import (
    DEFAULT_TIMEOUT,
    FAILURES_FILE,
    ROI_TABLE_FILE,
    TABLE_FILE,
    PreprocessParams,
    cache_folder,
    preprocess_table,
)
from mvmlm.data.shards import check_shard, shard_dir, shard_rows
from mvmlm.rundir import RunDir

__all__ = ["PreprocessConfig", "main"]

log = logging.getLogger(__name__)


@dataclass
class PreprocessConfig(PreprocessParams):
    table: str = MISSING  # canonical table (parquet) from `mvmlm tables`
    root: str = ""  # dataset root; the table's paths are relative to it (not read by merge=true)
    out: str = MISSING  # cache root; one sub-folder per parameter set and table
    workers: int = 1  # worker processes decoding images (a crashing decoder kills only its worker)
    timeout: float = DEFAULT_TIMEOUT  # seconds per image before its worker is killed and the image failed
    max_failures: float = DEFAULT_MAX_FAILURES  # exit code 2 when more than this fraction of the images failed
    shard_id: int = 0  # with num_shards > 1: cache only this shard's images (e.g. $SLURM_ARRAY_TASK_ID)
    num_shards: int = 1  # split the images between this many runs (machines); then one run with merge=true
    merge: bool = False  # assemble table.parquet / failures.csv from a complete set of finished shards
    progress: bool = True  # progress bar

    def __post_init__(self) -> None:
        super().__post_init__()
        check_max_failures(self.max_failures)
        check_shard(self.shard_id, self.num_shards)
        if self.timeout <= 0 or self.workers < 1:
            raise ConfigError(f"keys 'timeout', 'workers': must be positive, got {self.timeout}, {self.workers}")


def main(argv: list[str] | None = None) -> dict:
    """``mvmlm preprocess``: crop, resize and cache every image of a canonical table (or one shard's images; or
    merge the shards).

    Raises:
        TooManyFailuresError: every image, or more than ``max_failures`` of them, failed (the cache, its table and
            failures.csv are written first).
        ShardSetError: ``merge`` without one complete set of finished shards of these parameters and table.
    """
    from mvmlm.commands import PREPROCESS

    cfg = PREPROCESS.parse(argv)
    params = PreprocessParams(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(PreprocessParams)})
    table = schema.check(schema.conform(schema.read_table(cfg.table)), cfg.table)
    if not cfg.merge and not cfg.root:
        raise ConfigError("key 'root': the dataset root the table's paths are relative to (only merge=true needs none)")
    if not cfg.merge and not Path(cfg.root).is_dir():
        raise FileNotFoundError(f"key 'root': dataset root not found: {cfg.root}")
    folder = cache_folder(cfg.out, params, table)
    sharded = cfg.num_shards > 1 and not cfg.merge
    images = len(shard_rows(table, cfg.shard_id, cfg.num_shards)) if sharded else len(table)
    if cfg.merge:
        from mvmlm.data.cache_merge import merge_shards  # builds on this module

        cached = merge_shards(table, cfg.out, params, cfg.num_shards if cfg.num_shards > 1 else None)
        run = RunDir.create(folder, cfg)  # once the shards are known good
    else:  # the run directory is created only once the input is known good
        run = RunDir.create(shard_dir(folder, cfg.shard_id, cfg.num_shards) if sharded else folder, cfg)
        shard = {"shard_id": cfg.shard_id, "num_shards": cfg.num_shards}
        cached = preprocess_table(
            table, cfg.root, cfg.out, params, workers=cfg.workers, timeout=cfg.timeout, progress=cfg.progress, **shard
        )
    metrics = {
        "images": images,
        "cached": len(cached),
        "failures": images - len(cached),
        "folder": str(folder.resolve()),
        "table": str(run.file(TABLE_FILE)),
    }
    if sharded:
        metrics["shard"] = f"{cfg.shard_id}/{cfg.num_shards}"
    if params.roi.enabled:
        metrics["crops"] = len(schema.read_table(run.file(ROI_TABLE_FILE)))
        metrics["crop_table"] = str(run.file(ROI_TABLE_FILE))
    run.write_metrics(metrics)
    done = failure_summary(
        len(cached), images - len(cached), cfg.max_failures, what="images", where=str(run.file(FAILURES_FILE))
    )
    log.info("preprocess %s: %s", run.path, done)
    return metrics
