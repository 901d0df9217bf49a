"""Native dataset adapters: each turns one dataset's own download layout into the canonical image table.

``mvmlm tables --source vindr --root DIR --out table.parquet``
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mvmlm.config import MISSING
from mvmlm.data import schema
from mvmlm.errors import InputError
from mvmlm.registry import Registry

__all__ = ["SOURCES", "SourceError", "csv_line", "read_native_table", "read_source", "register_source", "main"]

log = logging.getLogger(__name__)

#: source name -> ``fn(root, **options) -> canonical table``; each module registers itself when first used
SOURCES: Registry[Callable[..., pd.DataFrame]] = Registry(
    "source", lazy={name: f"mvmlm.data.sources.{name}" for name in ("vindr", "rsna", "cmmd", "cbis_ddsm", "embed")}
)
register_source = SOURCES.register


class SourceError(ValueError, InputError):
    """A native dataset is incomplete or malformed (the message names the file, row and column)."""


def read_native_table(
    path: Path,
    required: Iterable[str],
    *,
    what: str,
    hint: str = "",
    rename: Mapping[str, str] | None = None,
    allow_empty: bool = False,
    **read_kwargs,
) -> pd.DataFrame:
    """Read a dataset's own CSV (Excel for ``.xlsx``) with ``read_kwargs``, checking it has the ``required`` columns.

    Raises :class:`SourceError` naming ``path`` when it is missing (``what`` says what it is, ``hint`` where to get
    it), is not a readable table (empty file, an extra field or an unclosed quote, not UTF-8: the message names the
    line), has no data rows (unless ``allow_empty``) or lacks a required column (after ``rename``, which maps
    alternative spellings to the ones required).
    """
    if not path.is_file():
        raise SourceError(f"{path}: {what} not found" + (f" ({hint})" if hint else ""))
    reader = pd.read_excel if path.suffix.lower() == ".xlsx" else pd.read_csv
    try:
        table = reader(path, **read_kwargs)
    except pd.errors.EmptyDataError:
        raise SourceError(f"{path}: empty file; expected a {what} with the columns {list(required)}") from None
    except pd.errors.ParserError as exc:  # extra field, unclosed quote: pandas names the line
        raise SourceError(f"{path}: malformed CSV ({' '.join(str(exc).split())})") from None
    except UnicodeDecodeError as exc:
        data = path.read_bytes()
        start = exc.start
        try:  # pandas reports the offset inside its read chunk: find the first bad byte of the file
            data.decode(exc.encoding)
        except UnicodeDecodeError as whole:
            start = whole.start
        line = data[:start].count(b"\n") + 1
        raise SourceError(
            f"{path} line {line}: not {exc.encoding.upper()} ({data[start : start + 1]!r}, "
            "e.g. Latin-1); save the file as UTF-8 (iconv -f latin1 -t utf-8)"
        ) from None
    if table.empty and not allow_empty:
        raise SourceError(f"{path}: no data rows (header only?); expected a {what}")
    if rename:
        table = table.rename(columns=rename)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise SourceError(f"{path}: missing column(s) {missing}; found {list(table.columns)}")
    return table


def csv_line(mask: pd.Series) -> int:
    """CSV line of the first True row of a table read from a CSV (line 1 is the header)."""
    return int(np.flatnonzero(mask.to_numpy())[0]) + 2


def read_source(name: str, root: str, **options) -> pd.DataFrame:
    """Read dataset ``name`` from its native layout under ``root`` into a validated canonical table."""
    table = schema.conform(SOURCES.get(name)(root, **options))
    return schema.check(table, f"{name} table from {root}")


@dataclass
class TablesConfig:
    source: str = MISSING  # vindr | rsna | cmmd | cbis_ddsm | embed
    root: str = MISSING  # dataset root in its native download layout
    out: str = MISSING  # output parquet file
    seed: int = 0  # seed of the patient-level split where the source has none
    val_fraction: float = 0.1  # share of training patients moved to val
    extra: str | None = None  # source-specific extra file (TOMPEI-CMMD xlsx for cmmd)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """``mvmlm tables``: write the canonical table of one native dataset."""
    from mvmlm.commands import TABLES

    cfg = TABLES.parse(argv)
    options = {"seed": cfg.seed, "val_fraction": cfg.val_fraction}
    if cfg.extra:
        options["extra"] = cfg.extra
    table = read_source(cfg.source, cfg.root, **options)
    schema.write_table(table, cfg.out)
    counts = table.groupby("split").size().to_dict()
    log.info(
        "%s: %d images, %d exams, %d patients, splits %s -> %s",
        cfg.source,
        len(table),
        table.exam_id.nunique(),
        table.patient_id.nunique(),
        counts,
        cfg.out,
    )
    return table
