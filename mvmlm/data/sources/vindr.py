"""VinDr-Mammo (PhysioNet 1.0.0) -> canonical image table.

Native layout (``root``)::

    breast-level_annotations.csv   one row per image: study_id, image_id, laterality, view_position,
                                   breast_birads ("BI-RADS 3"), breast_density ("DENSITY C"), split
    finding_annotations.csv        one row per box (or one ['No Finding'] row per image): finding_categories
                                   (a Python list literal), finding_birads, xmin, ymin, xmax, ymax
    images/<study_id>/<image_id>.dicom

Traps handled: every id is read as a string (hex ids can look like numbers); ``BI-RADS 3`` -> 3 and
``DENSITY C`` -> C; ``finding_categories`` is parsed with :func:`ast.literal_eval` (single items bare, several
CSV-quoted); a breast has a mass / calcification when any of its images has a ``Mass`` / ``Suspicious
Calcification`` box; boxes (native pixels, which can fall slightly outside the image) are clipped to the image and
kept in the extra column ``boxes`` as ``{finding, xmin, ymin, xmax, ymax}`` records (one per category of a box).
VinDr has no patient ids (the study is the patient), no pathology and no age in its tables: those stay NA.
The source split is by study: ``test`` is kept, ``training`` is divided into train / val at patient level.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mvmlm.data.sources import SourceError, csv_line, read_native_table, register_source
from mvmlm.data.splits import patient_split

__all__ = [
    "BOX",
    "BREAST_COLUMNS",
    "BREAST_FILE",
    "CATEGORY_OF",
    "FINDING_COLUMNS",
    "FINDING_FILE",
    "read",
    "split_studies",
]

BREAST_FILE = "breast-level_annotations.csv"
FINDING_FILE = "finding_annotations.csv"
#: documented header order (the writer uses it; reading goes by name)
BREAST_COLUMNS = (
    "study_id",
    "series_id",
    "image_id",
    "laterality",
    "view_position",
    "height",
    "width",
    "breast_birads",
    "breast_density",
    "split",
)
FINDING_COLUMNS = (
    *BREAST_COLUMNS[:-1],
    "finding_categories",
    "finding_birads",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
    "split",
)
BREAST_NEEDED = ("study_id", "image_id", "laterality", "view_position", "breast_birads", "breast_density", "split")
FINDING_NEEDED = ("image_id", "height", "width", "finding_categories", "xmin", "ymin", "xmax", "ymax")
BOX = ("xmin", "ymin", "xmax", "ymax")
DOWNLOAD = "download it from PhysioNet vindr-mammo 1.0.0"
#: canonical finding column -> VinDr category
CATEGORY_OF = {"mass": "Mass", "calcification": "Suspicious Calcification"}
NO_FINDING = "No Finding"
#: source split -> fixed canonical split (None: drawn into train / val)
SPLITS = {"training": None, "test": "test"}
BIRADS = re.compile(r"BI-RADS\s*([0-6])")  # "BI-RADS 3" -> 3
DENSITY = re.compile(r"DENSITY\s*([A-D])")  # "DENSITY C" -> C


def split_studies(study_ids: pd.Series, source_split: pd.Series, *, seed: int, val_fraction: float) -> pd.Series:
    """VinDr's split: ``test`` kept, ``training`` studies divided into train / val (a study is a patient)."""
    return patient_split(study_ids, seed=seed, val_fraction=val_fraction, fixed=source_split.map(SPLITS))


@register_source("vindr")
def read(root: str | Path, *, seed: int = 0, val_fraction: float = 0.1) -> pd.DataFrame:
    """Read VinDr-Mammo under ``root`` into the canonical table (plus the extra column ``boxes``)."""
    root = Path(root)
    options = {"what": "VinDr-Mammo table", "hint": DOWNLOAD, "dtype": str, "keep_default_na": False}
    images = read_native_table(root / BREAST_FILE, BREAST_NEEDED, **options)
    findings = read_native_table(root / FINDING_FILE, FINDING_NEEDED, **options)
    if not (root / "images").is_dir():
        raise SourceError(f"{root / 'images'}: VinDr image folder not found (images/<study_id>/<image_id>.dicom)")
    unknown = ~images["split"].isin(list(SPLITS))
    if unknown.any():
        raise SourceError(
            f"{root / BREAST_FILE} row {csv_line(unknown)}: column 'split' has "
            f"{images['split'][unknown].iloc[0]!r}; expected one of {sorted(SPLITS)}"
        )
    splits = images.groupby("study_id")["split"].transform("nunique")
    if (splits > 1).any():
        study = images["study_id"][splits > 1].iloc[0]
        raise SourceError(
            f"{root / BREAST_FILE} row {csv_line(splits > 1)}: study {study!r} is in more than one split "
            f"({', '.join(sorted(set(images['split'][images['study_id'] == study])))}); a study belongs to one split"
        )
    table = pd.DataFrame(
        {
            "dataset": "vindr",
            "patient_id": images["study_id"],
            "exam_id": images["study_id"],
            "image_id": images["image_id"],
            "path": "images/" + images["study_id"] + "/" + images["image_id"] + ".dicom",
            "laterality": images["laterality"],
            "view": images["view_position"],
            "birads": _parse(images, "breast_birads", BIRADS, root / BREAST_FILE).astype("Int64"),
            "density": _parse(images, "breast_density", DENSITY, root / BREAST_FILE),
        }
    )
    per_image = _image_findings(findings, root / FINDING_FILE)
    table = table.merge(per_image, how="left", on="image_id")
    table["boxes"] = [boxes if isinstance(boxes, list) else [] for boxes in table["boxes"]]
    for column, category in CATEGORY_OF.items():
        has = table["categories"].map(lambda found, c=category: isinstance(found, set) and c in found)
        table[column] = has.groupby([table["exam_id"], table["laterality"]]).transform("max").astype(int)
    table["split"] = split_studies(table["patient_id"], images["split"], seed=seed, val_fraction=val_fraction)
    return table.drop(columns="categories")


def _parse(table: pd.DataFrame, column: str, pattern: re.Pattern, path: Path) -> pd.Series:
    """The captured group of ``pattern`` in ``table[column]`` ("" -> NA); anything else is an error naming the row."""
    values = table[column].str.strip()
    bad = ~values.str.fullmatch(pattern.pattern) & (values != "")
    if bad.any():
        raise SourceError(
            f"{path} row {csv_line(bad)}: column {column!r} has {values[bad].iloc[0]!r}; "
            f"expected the pattern {pattern.pattern!r}"
        )
    return values.str.extract(f"^{pattern.pattern}$", expand=False).astype("string")


def _categories(value: str, path: Path, line: int) -> list[str]:
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = None
    if not isinstance(parsed, list) or not all(isinstance(item, str) for item in parsed):
        raise SourceError(
            f"{path} row {line}: column 'finding_categories' has {value!r}; expected a Python list of "
            "category names such as ['Mass'] or ['Suspicious Calcification', 'Mass']"
        )
    return [item.strip() for item in parsed]


def _image_findings(findings: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Per image: the set of finding categories and the clipped boxes (one record per category of a box)."""
    categories: dict[str, set[str]] = {}
    boxes: dict[str, list[dict]] = {}
    for index, row in enumerate(findings.itertuples(index=False)):
        line = index + 2
        names = [name for name in _categories(row.finding_categories, path, line) if name != NO_FINDING]
        categories.setdefault(row.image_id, set()).update(names)
        boxes.setdefault(row.image_id, [])
        if not names or row.xmin.strip() == "":
            continue
        try:
            corners = np.array([float(getattr(row, c)) for c in BOX])
            size = np.array([float(row.width), float(row.height)] * 2)
        except ValueError:
            values = ", ".join(f"{c}={getattr(row, c)!r}" for c in (*BOX, "width", "height"))
            raise SourceError(f"{path} row {line}: box or image size is not a number ({values})") from None
        clipped = np.clip(corners, 0.0, size).tolist()
        boxes[row.image_id] += [{"finding": name, **dict(zip(BOX, clipped, strict=True))} for name in names]
    return pd.DataFrame(
        {"image_id": list(boxes), "categories": [categories[i] for i in boxes], "boxes": list(boxes.values())}
    )
