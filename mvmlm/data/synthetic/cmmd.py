"""Synthetic exams in the CMMD (TCIA) layout, with a small TOMPEI-CMMD clinical xlsx.

CMMD is a cohort of patients with at least one lesion, so exams without a lesion are left out. One row per
lesioned breast in ``CMMD_clinicaldata_revision.xlsx``; a lesion-free breast is imaged but has no row (normal).
Every second patient with a single lesion has only the lesioned breast imaged, as in CMMD's D1 cohort. Files are
8-bit MONOCHROME2 with a SIGMOID VOI LUT (WindowCenter 128 / WindowWidth 256) and the view only in
ViewCodeSequence; the truth's transfer syntax is kept. The first patient with both breasts imaged and one lesion has
the sheet row on the wrong side; the TOMPEI-CMMD sheet (one row per imaged breast: class, density, BI-RADS) has
the right one. The expected table is what the adapter gives with the TOMPEI file (``extra=TOMPEI_FILE``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.uid import generate_uid

from mvmlm.data.sources.cmmd import OTHER_SIDE, SHEET, TOMPEI_FILE, TOMPEI_POSITIONS, TOMPEI_SHEET
from mvmlm.data.splits import source_less_split
from mvmlm.data.synthetic import register_format
from mvmlm.data.synthetic.dicom_writer import write_mammogram_dicom
from mvmlm.data.synthetic.lesions import LESION_COLUMNS
from mvmlm.data.synthetic.phantom import render_native

__all__ = ["write"]

SUBTYPES = ("Luminal A", "Luminal B", "HER2-enriched", "triple negative")
DENSITY_WORDS = {"A": "fatty", "B": "scattered", "C": "heterogeneously dense", "D": "extremely dense"}
TOMPEI_WIDTH = max(TOMPEI_POSITIONS.values()) + 1


def _abnormality(mass: int, calcification: int) -> str:
    return "both" if mass and calcification else "mass" if mass else "calcification"


@register_format("cmmd")
def write(truth: pd.DataFrame, out: Path, *, height: int, width: int, seed: int) -> pd.DataFrame:
    """Write CMMD-style DICOMs, the clinical sheet and the TOMPEI-CMMD xlsx under ``out``; return the expected
    canonical table."""
    rng = np.random.default_rng(seed)
    sheet, tompei, expected = [], [], []
    counters = {"D1": 0, "D2": 0}
    single_lesion_patients, corrected = 0, False
    for _, exam in truth.groupby("exam_id", sort=True):
        breasts = exam.groupby("laterality").first()
        lesioned = [side for side, b in breasts.iterrows() if b["pathology"] != "normal"]
        if not lesioned:
            continue
        sides = list(breasts.index)
        if len(lesioned) == 1 and len(sides) == 2:
            single_lesion_patients += 1
            if single_lesion_patients % 2 == 0:
                sides = lesioned
        cohort = "D2" if breasts["malignant"].max() == 1 else "D1"
        counters[cohort] += 1
        patient = f"{cohort}-{counters[cohort]:04d}"
        age = int(exam["age"].iloc[0])
        swap = not corrected and len(lesioned) == 1 and len(sides) == 2
        corrected |= swap
        for side in lesioned:
            b = breasts.loc[side]
            subtype = SUBTYPES[counters[cohort] % len(SUBTYPES)] if cohort == "D2" and b["malignant"] == 1 else None
            sheet.append(
                {
                    "ID1": patient,
                    "LeftRight": OTHER_SIDE[side] if swap else side,
                    "Age": age,
                    "number": int((exam["laterality"] == side).sum()),
                    "abnormality": _abnormality(b["mass"], b["calcification"]),
                    "classification": "Malignant" if b["malignant"] == 1 else "Benign",
                    "subtype": subtype,
                }
            )
        for side in sides:
            b = breasts.loc[side]
            tompei.append(
                [
                    patient,
                    side,
                    age,
                    str(b["pathology"]).capitalize(),
                    None,
                    DENSITY_WORDS[b["density"]],
                    *[None] * (TOMPEI_WIDTH - 7),
                    int(b["birads"]),
                ]
            )
        expected += _write_images(exam[exam["laterality"].isin(sides)], out, patient, age, rng, height, width, seed)
    _write_sheets(out, sheet, tompei)
    table = pd.DataFrame(expected)
    table["split"] = source_less_split(table["patient_id"], seed=0, val_fraction=0.1)  # the adapter's defaults
    return table


def _write_images(
    exam: pd.DataFrame, out: Path, patient: str, age: int, rng: np.random.Generator, height: int, width: int, seed: int
) -> list[dict]:
    """One study and series per patient, files ``1-1.dcm`` ... in the NBIA layout (old or new folder names)."""

    def uid(key: str) -> str:
        return generate_uid(entropy_srcs=["cmmd", str(seed), patient, key])

    date = f"{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}-{rng.integers(2012, 2017)}"
    study_dir, series_dir = (
        (f"{date}-NA-NA-{rng.integers(10000, 99999)}", f"1.000000-NA-{rng.integers(10000, 99999)}")
        if rng.random() < 0.5
        else (f"{date}-{rng.integers(10000, 99999)}", f"1.000000-{rng.integers(10000, 99999)}")
    )
    folder = out / "CMMD" / patient / study_dir / series_dir
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, (_, row) in enumerate(exam.iterrows(), start=1):
        pixels = render_native({**row.to_dict(), "bits_stored": 8}, height, width, seed=seed * 7919 + number)
        path = write_mammogram_dicom(
            folder / f"1-{number}.dcm",
            pixels,
            laterality=row["laterality"],
            view=row["view"],
            patient_id=patient,
            study_uid=uid("study"),
            series_uid=uid("series"),
            sop_uid=uid(row["image_id"]),
            photometric="MONOCHROME2",
            bits_stored=8,
            voi_function="SIGMOID",
            window=(128.0, 256.0),
            transfer_syntax=row["transfer_syntax"],
            view_code_sequence=True,
            view_position=False,
            age=age,
        )
        rows.append(
            {
                "dataset": "cmmd",
                "patient_id": patient,
                "exam_id": uid("study"),
                "image_id": uid(row["image_id"]),
                "path": path.relative_to(out).as_posix(),
                "laterality": row["laterality"],
                "view": row["view"],
                "age": float(age),
                "birads": row["birads"],
                "density": row["density"],
                "malignant": row["malignant"],
                "mass": row["mass"],
                "calcification": row["calcification"],
                "pathology": row["pathology"],
                **row[list(LESION_COLUMNS)].to_dict(),
            }
        )
    return rows


def _write_sheets(out: Path, sheet: list[dict], tompei: list[list]) -> None:
    """The CMMD clinical sheet and the TOMPEI-CMMD xlsx (README + Imaging Diagnosis sheet with 2 header rows)."""
    pd.DataFrame(sheet).to_excel(out / SHEET, index=False, sheet_name="Sheet1")
    names = [None] * TOMPEI_WIDTH
    for name, position in {
        "ID": 0,
        "LeftRight": 1,
        "Age": 2,
        "class": 3,
        "exclusion reason": 4,
        "density": 5,
        "BI-RADS": TOMPEI_WIDTH - 1,
    }.items():
        names[position] = name
    groups = ["Patient", None, None, "Imaging diagnosis"] + [None] * (TOMPEI_WIDTH - 4)
    with pd.ExcelWriter(out / TOMPEI_FILE, engine="openpyxl") as writer:
        pd.DataFrame({"README": ["Synthetic TOMPEI-CMMD clinical data (mvmlm test fixture)."]}).to_excel(
            writer, sheet_name="README", index=False
        )
        pd.DataFrame([groups, names, *tompei]).to_excel(writer, sheet_name=TOMPEI_SHEET, index=False, header=False)
