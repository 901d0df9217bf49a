"""What ``predict`` / ``embed`` read: DICOM files and folders grouped into exams and breasts from their headers, or
the rows of a canonical table / ``mvmlm preprocess`` cache table.

DICOM grouping: patient = PatientID, exam = StudyInstanceUID, image = SOPInstanceUID, side = ImageLaterality, else
Laterality, view = ViewPosition, else ViewCodeSequence (:func:`mvmlm.data.dicom.read_dicom_header`, the data layer's
fallbacks), age = PatientAge. A slot (CC, MLO) takes one image: the preferred view code (the data layer's
``SLOT_VIEWS``: CC before XCCL, ...), then the newest acquisition (AcquisitionDateTime, else AcquisitionDate +
AcquisitionTime, else ContentDate + ContentTime; then the higher SeriesNumber, then the higher InstanceNumber; an image
without them counts as the oldest), then the smallest image id. The other images of that slot are skipped, the reason
naming the image used and why. Table rows carry no acquisition time: their slots follow the preferred view code and
the smallest image id (:func:`mvmlm.data.exams.build_breasts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mvmlm.data import schema
from mvmlm.data.dicom import DicomReadError, read_dicom_header
from mvmlm.data.exams import BREAST_KEYS, SLOT_VIEWS
from mvmlm.data.preprocess import read_cached_table
from mvmlm.errors import InputError

__all__ = ["DICOM_DATASET", "Inputs", "collect"]

DICOM_DATASET = "dicom"  # the dataset name of images read from DICOM headers
_TABLE_SUFFIXES = (".parquet",)


@dataclass
class Inputs:
    """Images as canonical rows (``path`` absolute; ``cache_path`` for cache tables) and the files skipped."""

    images: pd.DataFrame
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    cached: bool = False


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if path.is_file():
        return [path]
    raise InputError(f"{path}: no such file or folder")


def _dicom_row(path: Path) -> dict[str, object]:
    meta = read_dicom_header(path)
    if meta.laterality not in ("L", "R"):
        raise DicomReadError(f"{path}: no laterality (ImageLaterality / Laterality is {meta.laterality!r})")
    if meta.view is None:
        raise DicomReadError(f"{path}: no view (ViewPosition / ViewCodeSequence)")
    return {
        "dataset": DICOM_DATASET,
        "patient_id": meta.patient_id or "unknown",
        "exam_id": meta.study_uid or f"unknown-{path.parent.name}",
        "image_id": meta.sop_uid or path.stem,
        "path": str(path.resolve()),
        "laterality": meta.laterality,
        "view": meta.view,
        "split": "test",
        "age": meta.age,
        "acquired": meta.acquired,
        "series_number": meta.series_number,
        "instance_number": meta.instance_number,
    }


def _table_rows(path: Path, root: str) -> tuple[pd.DataFrame, bool]:
    table = schema.read_table(path)
    if "cache_path" in table.columns:
        return read_cached_table(path), True
    base = Path(root) if root else path.parent
    return table.assign(path=[str((base / p).resolve()) for p in table["path"]]), False


_ACQUISITION = ("acquired", "series_number", "instance_number")


def _acquisition(row: pd.Series) -> str:
    when = row["acquired"]
    shown = f"acquired {when[:4]}-{when[4:6]}-{when[6:8]} {when[8:10]}:{when[10:12]}:{when[12:14]}" if when else ""
    numbers = ", ".join(
        f"{name} {int(row[key])}"
        for name, key in (("series", "series_number"), ("instance", "instance_number"))
        if pd.notna(row[key])
    )
    return ", ".join(part for part in (shown, numbers) if part) or "no acquisition time"


def _reason(row: pd.Series, chosen: pd.Series) -> str:
    """Why ``row`` is not used for its slot when ``chosen`` is."""
    slot, used = row["slot_"], chosen["image_id"]
    if chosen["rank_"] != row["rank_"]:
        return f"view {row['view']!r} not used: its breast has a {chosen['view']} image for the {slot} slot ({used})"
    if [row[k] for k in _ACQUISITION] != [chosen[k] for k in _ACQUISITION]:
        return (
            f"duplicate {slot} view of its breast: image {used} is a newer acquisition ({_acquisition(chosen)}; "
            f"this one: {_acquisition(row)})"
        )
    return f"duplicate {slot} view of its breast with the same acquisition time: image {used} (smaller id) is used"


def _unused_views(images: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Images whose view fits a slot and is the one the slot takes (see the module docstring); the others with
    their reason."""
    rank = {view: (slot, i) for slot, views in SLOT_VIEWS.items() for i, view in enumerate(views)}
    fits = images["view"].isin(list(rank))
    skipped = [
        {"path": p, "reason": f"view {v!r} is not used (CC or MLO views)"}
        for p, v in images.loc[~fits, ["path", "view"]].itertuples(index=False)
    ]
    usable = images[fits].assign(
        slot_=lambda f: f["view"].map(lambda v: rank[v][0]), rank_=lambda f: f["view"].map(lambda v: rank[v][1])
    )
    for key in _ACQUISITION:
        if key not in usable.columns:
            usable[key] = None
    keys = [*BREAST_KEYS, "slot_"]
    ordered = usable.sort_values(
        [*keys, "rank_", *_ACQUISITION, "image_id"],
        ascending=[True] * (len(keys) + 1) + [False] * len(_ACQUISITION) + [True],
        na_position="last",
        kind="stable",
    )
    duplicate = ordered.duplicated(keys, keep="first")
    kept = ordered[~duplicate].set_index(keys)
    for _, row in ordered[duplicate].iterrows():
        skipped.append({"path": row["path"], "reason": _reason(row, kept.loc[tuple(row[k] for k in keys)])})
    return ordered[~duplicate].drop(columns=["slot_", "rank_", *_ACQUISITION]), skipped


def collect(paths: list[str], root: str = "") -> Inputs:
    """Every image of ``paths`` (DICOM files, folders searched recursively, or tables) as canonical rows.

    Raises:
        InputError: a path that does not exist, or DICOM files mixed with a table.
    """
    rows, skipped, tables = [], [], []
    for given in paths:
        path = Path(given)
        if path.suffix in _TABLE_SUFFIXES and path.is_file():
            tables.append(_table_rows(path, root))
            continue
        for file in _files(path):
            try:
                rows.append(_dicom_row(file))
            except DicomReadError as exc:
                skipped.append({"path": str(file), "reason": str(exc).removeprefix(f"{file}: ")})
    if tables and rows:
        raise InputError("give either DICOM files / folders or tables, not both")
    cached = bool(tables) and all(c for _, c in tables)
    if tables and not cached and any(c for _, c in tables):
        raise InputError("give either canonical tables or `mvmlm preprocess` cache tables, not both")
    images = pd.concat([t for t, _ in tables], ignore_index=True) if tables else pd.DataFrame(rows)
    if images.empty:
        return Inputs(schema.empty_table(), skipped, cached)
    used, unused = _unused_views(schema.conform(images))
    return Inputs(used.reset_index(drop=True), skipped + unused, cached)
