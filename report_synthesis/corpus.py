"""The report corpus on disk: ``<out>/parts/part-<shard>-<seq>.parquet`` + ``<out>/manifest.json``.

A part is written to a hidden temporary file and renamed into place, so a reader (or a resumed run)
only ever sees complete parts. The manifest (the settings that identify the reports: backend, model, sampling,
prompt hash, fields, seed) is written before the first part and checked by every later run, so a corpus never
mixes two settings, even after a kill. The ids in the published parts are the run's checkpoint: a run killed
at any moment and restarted writes every ``(breast id, variant)`` exactly once. Load the corpus with
:func:`read_corpus` or ``datasets.load_dataset("parquet", data_files=corpus_glob(out))``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mvmlm.config import ConfigError

__all__ = [
    "SCHEMA",
    "MANIFEST_KEYS",
    "part_files",
    "corpus_glob",
    "written_ids",
    "write_part",
    "remove_stale",
    "read_corpus",
    "corpus_counts",
    "check_manifest",
    "write_manifest",
]

PARTS = "parts"
MANIFEST = "manifest.json"
FORMAT = "mvmlm-report-corpus/1"
_PART = re.compile(r"^part-(\d{5})-(\d{6})\.parquet$")

#: One row per (breast, variant). ``source`` is the backend whose text was kept ("template" on fallback).
SCHEMA = pa.schema(
    [
        ("id", pa.string()),  # f"{breast_id}#{variant}"
        ("breast_id", pa.string()),  # f"{dataset}/{patient_id}/{exam_id}/{laterality}"
        ("variant", pa.int32()),
        ("dataset", pa.string()),
        ("patient_id", pa.string()),
        ("exam_id", pa.string()),
        ("laterality", pa.string()),
        ("split", pa.string()),
        ("report", pa.string()),
        ("source", pa.string()),
        ("attempts", pa.int32()),  # generations tried (0 when the primary backend is the template itself)
        ("fallback_reason", pa.string()),  # last rejection reason when the template replaced the model's text
        ("prompt_hash", pa.string()),
        ("facts", pa.string()),  # JSON of the facts the report was written from
    ]
)

#: Manifest entries that must not change between runs writing into the same corpus.
MANIFEST_KEYS = ("backend", "model", "revision", "sampling", "prompt_hash", "fields", "seed", "max_attempts")


def part_files(out: str | Path) -> list[Path]:
    """Published parts of the corpus at ``out``, in name order."""
    folder = Path(out) / PARTS
    return sorted(p for p in folder.glob("part-*.parquet") if _PART.match(p.name)) if folder.is_dir() else []


def corpus_glob(out: str | Path) -> str:
    """The ``data_files`` pattern for ``datasets.load_dataset("parquet", ...)``."""
    return str(Path(out) / PARTS / "part-*.parquet")


def written_ids(out: str | Path) -> set[str]:
    """Ids already in published parts (of every shard)."""
    ids: set[str] = set()
    for path in part_files(out):
        ids.update(pq.read_table(path, columns=["id"]).column("id").to_pylist())
    return ids


def remove_stale(out: str | Path, shard_id: int) -> int:
    """Delete temporary part files a killed run of this shard left behind; returns how many."""
    stale = list((Path(out) / PARTS).glob(f".part-{shard_id:05d}-*.tmp*"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def write_part(out: str | Path, shard_id: int, rows: list[dict]) -> Path:
    """Write ``rows`` as this shard's next part, atomically (temporary file + rename)."""
    folder = Path(out) / PARTS
    folder.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(2)) for p in part_files(out) if (m := _PART.match(p.name)) and int(m.group(1)) == shard_id]
    name = f"part-{shard_id:05d}-{max(taken, default=-1) + 1:06d}.parquet"
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    tmp = folder / f".{name}.tmp{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, folder / name)
    return folder / name


def read_corpus(out: str | Path) -> pd.DataFrame:
    """The whole corpus as a DataFrame (empty with the corpus columns when nothing is written yet)."""
    files = part_files(out)
    if not files:
        return SCHEMA.empty_table().to_pandas()
    return pa.concat_tables(pq.read_table(p, schema=SCHEMA) for p in files).to_pandas()


def corpus_counts(out: str | Path) -> dict:
    """Reports, breasts, parts and reports per source over every published part."""
    files = part_files(out)
    columns = ["breast_id", "source"]
    table = pa.concat_tables(pq.read_table(p, columns=columns) for p in files) if files else None
    sources = Counter(table.column("source").to_pylist()) if table is not None else Counter()
    return {
        "reports": 0 if table is None else table.num_rows,
        "breasts": 0 if table is None else len(set(table.column("breast_id").to_pylist())),
        "parts": len(files),
        "by_source": dict(sorted(sources.items())),
    }


def write_manifest(out: str | Path, manifest: dict) -> Path:
    """Write ``<out>/manifest.json`` atomically (temporary file + rename)."""
    path = Path(out) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{MANIFEST}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def check_manifest(out: str | Path, manifest: dict) -> None:
    """Refuse to add to a corpus written with another backend, model, sampling, prompt or fields."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); remove it or choose another out directory") from None
    changed = [key for key in MANIFEST_KEYS if old.get(key) != manifest.get(key)]
    if changed:
        detail = "; ".join(f"{k}: {old.get(k)!r} -> {manifest.get(k)!r}" for k in changed)
        raise ConfigError(
            f"{path}: the corpus was written with other settings ({detail}); resume with the same config or "
            "write to a new out directory"
        )
