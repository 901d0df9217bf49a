"""The canonical image table: one row per image, the only table anything downstream of an adapter reads.

Columns, dtypes and vocabularies follow DESIGN.md. Missing values are NA (never a sentinel number).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mvmlm.errors import InputError

__all__ = [
    "COLUMNS",
    "ID_COLUMNS",
    "LABEL_COLUMNS",
    "VOCABULARIES",
    "SchemaError",
    "Violation",
    "empty_table",
    "conform",
    "validate",
    "check",
    "read_table",
    "write_table",
    "concat_tables",
]

STRING = "string"
INT = "Int64"
FLOAT = "Float64"

#: column -> pandas dtype, in canonical order.
COLUMNS: dict[str, str] = {
    "dataset": STRING,
    "patient_id": STRING,
    "exam_id": STRING,
    "image_id": STRING,
    "path": STRING,
    "laterality": STRING,
    "view": STRING,
    "split": STRING,
    "age": FLOAT,
    "birads": INT,
    "density": STRING,
    "malignant": INT,
    "mass": INT,
    "calcification": INT,
    "mass_shape": STRING,
    "mass_margin": STRING,
    "calc_morphology": STRING,
    "calc_distribution": STRING,
    "pathology": STRING,
    "years_to_cancer": FLOAT,
    "years_to_last_followup": FLOAT,
}

ID_COLUMNS = ("dataset", "patient_id", "exam_id", "image_id", "path", "laterality", "view", "split")
LABEL_COLUMNS = ("birads", "density", "malignant", "mass", "calcification", "pathology")
#: Labels are breast-level: both views of a breast must agree on these.
BREAST_LEVEL_COLUMNS = (
    "age",
    "birads",
    "density",
    "malignant",
    "mass",
    "calcification",
    "mass_shape",
    "mass_margin",
    "calc_morphology",
    "calc_distribution",
    "pathology",
    "years_to_cancer",
    "years_to_last_followup",
)

#: Closed vocabularies (values outside them are violations). ``view`` is open: any DICOM ViewPosition code.
VOCABULARIES: dict[str, frozenset] = {
    "laterality": frozenset({"L", "R"}),
    "split": frozenset({"train", "val", "test"}),
    "density": frozenset({"A", "B", "C", "D"}),
    "pathology": frozenset({"normal", "benign", "malignant"}),
    "birads": frozenset(range(7)),
    "malignant": frozenset({0, 1}),
    "mass": frozenset({0, 1}),
    "calcification": frozenset({0, 1}),
}


class SchemaError(ValueError, InputError):
    """A table does not match the canonical schema; ``violations`` lists every problem."""

    def __init__(self, violations: list[Violation], source: str = "table"):
        self.violations = violations
        body = "\n".join(f"  - {v}" for v in violations)
        super().__init__(f"{source}: {len(violations)} schema violation(s):\n{body}")


@dataclass
class Violation:
    """One problem: a column, what is wrong, and the offending ``image_id``s (first 10 shown)."""

    column: str
    problem: str
    rows: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        shown = ", ".join(self.rows[:10]) + (f" (+{len(self.rows) - 10} more)" if len(self.rows) > 10 else "")
        return f"{self.column}: {self.problem}" + (f" [image_id: {shown}]" if self.rows else "")


def empty_table() -> pd.DataFrame:
    """A zero-row canonical table with the right dtypes."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in COLUMNS.items()})


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Add missing optional columns as NA, cast every canonical column to its dtype, order columns canonically.

    Extra columns are kept after the canonical ones. Raises :class:`SchemaError` when a value cannot be cast.
    """
    out = df.copy()
    problems: list[Violation] = []
    for name, dtype in COLUMNS.items():
        if name not in out.columns:
            out[name] = pd.Series(pd.NA, index=out.index, dtype=dtype)
            continue
        try:
            column = out[name]
            if dtype == STRING:
                out[name] = column.astype("object").where(column.notna(), None).astype(STRING)
            elif dtype == INT:
                numeric = pd.to_numeric(column, errors="raise").astype(FLOAT)
                if (numeric.dropna() % 1 != 0).any():
                    raise ValueError("non-integer values")
                out[name] = numeric.astype(INT)
            else:
                out[name] = pd.to_numeric(column, errors="raise").astype(FLOAT)
        except (ValueError, TypeError) as exc:
            problems.append(Violation(name, f"cannot be cast to {dtype}: {exc}"))
    if problems:
        raise SchemaError(problems)
    extra = [c for c in out.columns if c not in COLUMNS]
    return out[list(COLUMNS) + extra].reset_index(drop=True)


def _ids(df: pd.DataFrame, mask: pd.Series) -> list[str]:
    ids = df["image_id"] if "image_id" in df.columns else pd.Series(df.index.astype(str), index=df.index)
    return [str(x) for x in ids[mask.fillna(False).astype(bool)].tolist()]


def validate(df: pd.DataFrame) -> list[Violation]:
    """Every way ``df`` departs from the canonical schema, with the offending image ids. Empty list = valid."""
    problems: list[Violation] = []
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        problems.append(Violation(", ".join(missing), "required column(s) missing"))
    for name, dtype in COLUMNS.items():
        if name in df.columns and str(df[name].dtype) != dtype:
            problems.append(Violation(name, f"dtype is {df[name].dtype}, expected {dtype} (use schema.conform)"))
    for name in ID_COLUMNS:
        if name in df.columns:
            empty = df[name].isna() | (df[name].astype("string").str.strip() == "")
            if empty.any():
                problems.append(Violation(name, "empty id/path values", _ids(df, empty)))
    if "image_id" in df.columns and "dataset" in df.columns:
        dup = df.duplicated(["dataset", "image_id"], keep=False)
        if dup.any():
            problems.append(Violation("image_id", "duplicate image ids within a dataset", _ids(df, dup)))
    for name, allowed in VOCABULARIES.items():
        if name in df.columns:
            bad = df[name].notna() & ~df[name].isin(list(allowed))
            if bad.any():
                values = sorted({str(v) for v in df.loc[bad.fillna(False), name]})
                problems.append(Violation(name, f"values {values} not in {sorted(map(str, allowed))}", _ids(df, bad)))
    for name in ("age", "years_to_cancer", "years_to_last_followup"):
        if name in df.columns:
            values = pd.to_numeric(df[name], errors="coerce")
            bad = values.notna() & (values < 0)
            if bad.any():
                problems.append(Violation(name, "negative values", _ids(df, bad)))
    problems.extend(_breast_level_conflicts(df))
    return problems


def _breast_level_conflicts(df: pd.DataFrame) -> list[Violation]:
    keys = ["dataset", "patient_id", "exam_id", "laterality"]
    if not set(keys) <= set(df.columns) or df.empty:
        return []
    problems = []
    groups = df.groupby(keys, dropna=False, sort=False)
    for name in BREAST_LEVEL_COLUMNS:
        if name not in df.columns:
            continue
        distinct = groups[name].transform("nunique")  # nunique skips NA
        bad = distinct > 1
        if bad.any():
            problems.append(Violation(name, "views of one breast disagree on a breast-level label", _ids(df, bad)))
    return problems


def check(df: pd.DataFrame, source: str = "table") -> pd.DataFrame:
    """Return ``df`` unchanged if valid, else raise :class:`SchemaError` listing every violation."""
    problems = validate(df)
    if problems:
        raise SchemaError(problems, source)
    return df


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Conform, validate and write ``df`` as parquet (atomically). Returns the path."""
    path = Path(path)
    table = check(conform(df), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def read_table(path: str | Path, *, validate_rows: bool = True) -> pd.DataFrame:
    """Read a canonical table from parquet (or CSV), conform dtypes and (by default) validate it.

    Raises :class:`SchemaError` naming the file when an id column (:data:`ID_COLUMNS`) is missing; other absent
    columns are optional and read as NA.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"canonical table not found: {path}")
    df = pd.read_parquet(path) if path.suffix != ".csv" else pd.read_csv(path, dtype=str, keep_default_na=False)
    if path.suffix == ".csv":
        df = df.replace({"": np.nan})
    missing = [c for c in ID_COLUMNS if c not in df.columns]
    if missing:  # before conform, which would fill them with NA and hide the cause
        raise SchemaError([Violation(", ".join(missing), "required column(s) missing")], str(path))
    table = conform(df)
    return check(table, str(path)) if validate_rows else table


def concat_tables(tables: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate canonical tables (e.g. several datasets) keeping dtypes."""
    return conform(pd.concat([conform(t) for t in tables], ignore_index=True))
