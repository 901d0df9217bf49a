"""One batch split between processes or machines: ``--shard-id I --num-shards N``, then one merge.

Items go to shards by a stable hash of their key (the same hash ``mvmlm reports`` uses for breasts), so every run
of shard ``I`` of ``N`` gets the same items, on any machine and Python version. Each shard writes its part into its
own folder ``<folder>/shards/<I>-of-<N>/`` (a run directory: config, log, metrics, part files) and, last, a
``shard.json`` naming the shard and what identifies its inputs; a shard folder without one is unfinished (running,
killed, or failed). :func:`finished_shards` hands a merge the folders of one complete set of finished shards whose
identity matches, and refuses anything else with one line naming the missing or mismatched shards.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from mvmlm.config import ConfigError
from mvmlm.errors import InputError

__all__ = [
    "SHARDS_DIR",
    "SHARD_FILE",
    "ShardSetError",
    "shard_of",
    "shard_rows",
    "check_shard",
    "shard_dir",
    "start_shard",
    "finish_shard",
    "finished_shards",
]

SHARDS_DIR = "shards"
SHARD_FILE = "shard.json"  # written last: its shard is finished
_NAME = re.compile(r"^(\d{5})-of-(\d{5})$")


class ShardSetError(ValueError, InputError):
    """The shard folders do not form one complete set of finished shards with the same inputs."""


def shard_of(key: str, num_shards: int) -> int:
    """The shard (in ``[0, num_shards)``) of the item ``key``: a stable hash, independent of the process."""
    digest = hashlib.sha256(f"shard\x1f{key}".encode()).digest()
    return (int.from_bytes(digest[:4], "big") & 0x7FFFFFFF) % num_shards


def shard_rows(table: pd.DataFrame, shard_id: int, num_shards: int) -> pd.DataFrame:
    """The rows of shard ``shard_id`` of ``num_shards`` of a canonical table (a stable hash of dataset and image
    id), index reset."""
    keys = (f"{dataset}/{image}" for dataset, image in zip(table["dataset"], table["image_id"], strict=True))
    mask = [shard_of(key, num_shards) == shard_id for key in keys]
    return table.loc[mask].reset_index(drop=True)


def check_shard(shard_id: int, num_shards: int) -> None:
    """Refuse a shard id outside ``[0, num_shards)`` or fewer than one shard."""
    if num_shards < 1:
        raise ConfigError(f"key 'num_shards': must be >= 1, got {num_shards}")
    if not 0 <= shard_id < num_shards:
        raise ConfigError(f"key 'shard_id': must be in [0, {num_shards}), got {shard_id}")


def shard_dir(folder: str | Path, shard_id: int, num_shards: int) -> Path:
    """The folder of shard ``shard_id`` of ``num_shards`` inside the batch's output ``folder``."""
    return Path(folder) / SHARDS_DIR / f"{shard_id:05d}-of-{num_shards:05d}"


def start_shard(folder: str | Path, shard_id: int, num_shards: int) -> Path:
    """Create (or reopen) a shard's folder and mark it unfinished until :func:`finish_shard`."""
    path = shard_dir(folder, shard_id, num_shards)
    path.mkdir(parents=True, exist_ok=True)
    (path / SHARD_FILE).unlink(missing_ok=True)
    return path


def finish_shard(path: str | Path, identity: dict[str, Any]) -> None:
    """Mark the shard folder ``path`` finished, recording ``identity`` (what the merge must find in every shard)."""
    match = _NAME.match(Path(path).name)
    if not match:
        raise ValueError(f"{path}: not a shard folder (expected <id>-of-<count>)")
    record = {"shard_id": int(match[1]), "num_shards": int(match[2]), "identity": identity}
    tmp = Path(path) / f".{SHARD_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(Path(path) / SHARD_FILE)


def finished_shards(folder: str | Path, identity: dict[str, Any], num_shards: int | None = None) -> list[Path]:
    """The shard folders of ``folder`` in shard order, when they form one complete set of finished shards.

    Args:
        identity: what every shard must have recorded (its parameters, the hash of its input).
        num_shards: pick the set of this many shards where several sets lie in ``folder``.

    Raises:
        ShardSetError: no shards; several sets and no ``num_shards``; a shard missing or unfinished; a shard
            recorded with another identity. The message names the shards and the folder.
    """
    root = Path(folder) / SHARDS_DIR
    found = sorted(p for p in root.glob("*-of-*") if p.is_dir() and _NAME.match(p.name)) if root.is_dir() else []
    counts = sorted({int(_NAME.match(p.name)[2]) for p in found})
    if num_shards is not None:
        counts = [n for n in counts if n == num_shards]
    if not counts:
        wanted = f" of {num_shards} shards" if num_shards is not None else ""
        raise ShardSetError(f"{root}: no shard folders{wanted}; run the shards (--shard-id I --num-shards N) first")
    if len(counts) > 1:
        raise ShardSetError(
            f"{root}: shard sets of {' and '.join(map(str, counts))} shards; name the one to merge with --num-shards"
        )
    count = counts[0]
    paths = [shard_dir(folder, i, count) for i in range(count)]
    missing = [p.name for p in paths if not p.is_dir()]
    unfinished = [p.name for p in paths if p.is_dir() and not (p / SHARD_FILE).is_file()]
    if missing or unfinished:
        what = [f"missing {_names(missing)}"] if missing else []
        what += [f"unfinished {_names(unfinished)}"] if unfinished else []
        raise ShardSetError(f"{root}: incomplete set of {count} shards ({'; '.join(what)}); run those shards first")
    expected = json.loads(json.dumps(identity, sort_keys=True, default=str))
    other = [p.name for p in paths if json.loads((p / SHARD_FILE).read_text())["identity"] != expected]
    if other:
        raise ShardSetError(
            f"{root}: shard(s) {_names(other)} were written with other parameters or another input; rerun them"
        )
    return paths


def _names(names: list[str], shown: int = 8) -> str:
    """``names`` joined, the first ``shown`` of a long list and how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
