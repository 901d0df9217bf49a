"""CMMD (TCIA, Chinese Mammography Database) -> canonical image table.

Native layout (``root``)::

    CMMD_clinicaldata_revision.xlsx          one row per breast WITH a lesion (ID1, LeftRight, Age, abnormality, ...)
    CMMD/<ID1>/<date>/<series>/1-1.dcm ...    NBIA download; 8-bit SIGMOID DICOM, view only in ViewCodeSequence

Traps handled: a breast without a sheet row is normal (it is imaged but has no lesion); images are found by
walking the DICOM folders and reading laterality (ImageLaterality, then Laterality) and view (ViewPosition, else
the SNOMED code of ViewCodeSequence) from the headers; CMMD has no BI-RADS or density. The optional TOMPEI-CMMD
xlsx (``extra=``) adds per-breast BI-RADS and density and corrects lesions recorded on the wrong side.
No official split: patient-level split with a fixed seed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from mvmlm.data.dicom import DicomReadError, read_dicom_header
from mvmlm.data.sources import SourceError, read_native_table, register_source
from mvmlm.data.splits import source_less_split

__all__ = [
    "SHEET",
    "TOMPEI_SHEET",
    "TOMPEI_FILE",
    "OTHER_SIDE",
    "read",
    "read_clinical_sheet",
    "scan_images",
    "read_tompei",
    "correct_sides",
]

SHEET = "CMMD_clinicaldata_revision.xlsx"
SHEET_COLUMNS = ("ID1", "LeftRight", "Age", "abnormality", "classification")
TOMPEI_FILE = "TOMPEI-CMMD_clinical_data_v01_20250121.xlsx"
TOMPEI_SHEET = "Imaging Diagnosis Details Sheet"
#: TOMPEI columns are read by position (the sheet has two header rows): ID, LeftRight, class, density, BI-RADS.
TOMPEI_POSITIONS = {"patient_id": 0, "laterality": 1, "tompei_class": 3, "density": 5, "birads": 21}

ABNORMALITY = {"mass": (1, 0), "calcification": (0, 1), "both": (1, 1)}  # -> (mass, calcification)
CLASSIFICATION = {"malignant": 1, "benign": 0}
#: TOMPEI density words (matched by keyword, the spelling varies) -> BI-RADS density letter
DENSITY_WORDS = (("fat", "A"), ("scatter", "B"), ("hetero", "C"), ("extrem", "D"))
OTHER_SIDE = {"L": "R", "R": "L"}


@register_source("cmmd")
def read(
    root: str | Path, *, seed: int = 0, val_fraction: float = 0.1, extra: str | Path | None = None
) -> pd.DataFrame:
    """Read CMMD under ``root``; ``extra`` = TOMPEI-CMMD clinical xlsx (absolute or relative to ``root``)."""
    root = Path(root)
    lesions = read_clinical_sheet(root / SHEET)
    images = scan_images(root)
    if extra is not None:
        tompei = read_tompei(root / extra)
        lesions = correct_sides(lesions, tompei)
        images = images.merge(
            tompei[["patient_id", "laterality", "birads", "density"]], how="left", on=["patient_id", "laterality"]
        )
    table = images.merge(lesions, how="left", on=["patient_id", "laterality"])
    normal = table["classification"].isna()
    table["malignant"] = table["classification"].map(CLASSIFICATION).where(~normal, 0)
    table["pathology"] = table["classification"].where(~normal, "normal")
    table[["mass", "calcification"]] = table[["mass", "calcification"]].fillna(0)
    ages = lesions.groupby("patient_id")["Age"].first()
    table["age"] = table["patient_id"].map(ages).fillna(table["header_age"])
    table["dataset"] = "cmmd"
    table["split"] = source_less_split(table["patient_id"], seed=seed, val_fraction=val_fraction)
    keep = [
        "dataset",
        "patient_id",
        "exam_id",
        "image_id",
        "path",
        "laterality",
        "view",
        "split",
        "age",
        "birads",
        "density",
        "malignant",
        "mass",
        "calcification",
        "pathology",
    ]
    return table[[c for c in keep if c in table.columns]].sort_values("path", ignore_index=True)


def read_clinical_sheet(path: Path) -> pd.DataFrame:
    """The CMMD clinical sheet as (patient_id, laterality, Age, mass, calcification, classification), one row per
    lesioned breast; several rows of one breast are merged (a finding present in any row is present)."""
    hint = f"download {SHEET} from the TCIA CMMD page"
    sheet = read_native_table(path, SHEET_COLUMNS, what="CMMD clinical sheet", hint=hint, dtype=object)
    sheet = sheet.dropna(how="all")
    rows = []
    for index, row in sheet.iterrows():
        where = f"{path} row {index + 2}"
        side = str(row["LeftRight"]).strip().upper()
        abnormality = str(row["abnormality"]).strip().lower()
        classification = str(row["classification"]).strip().lower()
        if side not in OTHER_SIDE or abnormality not in ABNORMALITY or classification not in CLASSIFICATION:
            raise SourceError(
                f"{where}: unexpected LeftRight/abnormality/classification "
                f"{row['LeftRight']!r}/{row['abnormality']!r}/{row['classification']!r}"
            )
        mass, calcification = ABNORMALITY[abnormality]
        age = pd.to_numeric(row["Age"], errors="coerce")
        rows.append((str(row["ID1"]).strip(), side, age, mass, calcification, classification))
    lesions = pd.DataFrame(rows, columns=["patient_id", "laterality", "Age", "mass", "calcification", "classification"])
    lesions["severity"] = lesions["classification"].map(CLASSIFICATION)
    merged = lesions.sort_values("severity", ascending=False).groupby(["patient_id", "laterality"], as_index=False)
    return merged.agg(
        Age=("Age", "first"),
        mass=("mass", "max"),
        calcification=("calcification", "max"),
        classification=("classification", "first"),
    )


def scan_images(root: Path) -> pd.DataFrame:
    """One row per ``*.dcm`` under ``root`` with ids, laterality and view read from its header."""
    rows = []
    for file in sorted(root.rglob("*.dcm")):
        try:
            meta = read_dicom_header(file)
        except DicomReadError as exc:
            raise SourceError(f"unreadable CMMD image: {exc}") from None
        if meta.laterality not in OTHER_SIDE or meta.view is None:
            raise SourceError(
                f"{file}: no laterality (ImageLaterality/Laterality) or view "
                f"(ViewPosition/ViewCodeSequence) in the header"
            )
        rows.append(
            {
                "patient_id": meta.patient_id,
                "exam_id": meta.study_uid,
                "image_id": meta.sop_uid,
                "path": file.relative_to(root).as_posix(),
                "laterality": meta.laterality,
                "view": meta.view,
                "header_age": meta.age,
            }
        )
    if not rows:
        raise SourceError(f"{root}: no CMMD DICOM files (*.dcm) found under the dataset root")
    return pd.DataFrame(rows)


def read_tompei(path: Path) -> pd.DataFrame:
    """TOMPEI-CMMD per-breast diagnosis: (patient_id, laterality, tompei_class, density A-D, birads 0-6)."""
    if not path.is_file():
        raise SourceError(f"{path}: TOMPEI-CMMD clinical xlsx not found")
    try:
        sheet = pd.read_excel(path, sheet_name=TOMPEI_SHEET, header=None, skiprows=2, dtype=object)
    except ValueError as exc:
        raise SourceError(f"{path}: no sheet {TOMPEI_SHEET!r}: {exc}") from None
    if sheet.shape[1] <= max(TOMPEI_POSITIONS.values()):
        raise SourceError(
            f"{path}: sheet {TOMPEI_SHEET!r} has {sheet.shape[1]} columns; "
            f"column {TOMPEI_POSITIONS['birads']} (BI-RADS) is missing"
        )
    table = pd.DataFrame({name: sheet.iloc[:, pos] for name, pos in TOMPEI_POSITIONS.items()})
    table = table[table["patient_id"].notna()]
    table["patient_id"] = table["patient_id"].astype(str).str.strip()
    table["laterality"] = table["laterality"].astype(str).str.strip().str.upper()
    table["tompei_class"] = table["tompei_class"].astype(str).str.strip().str.lower()
    table["density"] = table["density"].map(_density_letter)
    table["birads"] = table["birads"].map(_birads_number)
    return table.reset_index(drop=True)


def _density_letter(value: object) -> str | None:
    text = str(value).lower() if pd.notna(value) else ""
    return next((letter for word, letter in DENSITY_WORDS if word in text), None)


def _birads_number(value: object) -> int | None:
    match = re.search(r"[0-6]", str(value)) if pd.notna(value) else None
    return int(match.group()) if match else None


def correct_sides(lesions: pd.DataFrame, tompei: pd.DataFrame) -> pd.DataFrame:
    """Move a CMMD lesion row to the other breast where TOMPEI-CMMD calls its breast normal and finds a lesion of
    the same class in the other breast (which has no CMMD row)."""
    classes = tompei.set_index(["patient_id", "laterality"])["tompei_class"].to_dict()
    recorded = set(zip(lesions["patient_id"], lesions["laterality"], strict=True))
    corrected = lesions.copy()
    for index, row in lesions.iterrows():
        other = OTHER_SIDE[row["laterality"]]
        if (
            classes.get((row["patient_id"], row["laterality"])) == "normal"
            and classes.get((row["patient_id"], other)) == row["classification"]
            and (row["patient_id"], other) not in recorded
        ):
            corrected.loc[index, "laterality"] = other
    return corrected
