"""Synthetic exams in the EMBED Open Data layout: clinical (one row per finding) and metadata (one row per image)
tables under ``tables/`` and DICOMs under ``images/cohort_1/<empi_anon>/<study>/<series>/<SOPInstanceUID>.dcm``.

Each truth exam is one patient's imaged exam. A lesioned breast gets a finding row (side L/R, ``asses`` letter,
mass / calcification codes, ``path_severity`` 0/1 for cancer and 4 for benign), a lesion-free breast a row without
finding codes (``asses`` N); an exam with no lesion has one row with side NaN or ``B`` (alternately). The risk
follow-up is encoded as a later exam of the patient that has no images in the release: a cancer diagnosis
(``path_severity`` 0) ``years_to_cancer`` later, else a negative screening at ``years_to_last_followup``. Exams
with tomosynthesis also have ``cview`` images and diagnostic exams a spot-compression view (``spot_mag`` 1); the
adapter drops both. Dates are whole days, so the expected follow-up is the truth rounded to days / 365.25.

The cohort is screening-like: the truth draws a lesion for 40 % of breasts, so a third of its exams have a cancer
found at the exam (``years_to_cancer`` 0), which no screening cohort has and which would swamp the planted future
hazard (density, benign lesions) a risk model should find. Of those exams only one in
:data:`CANCER_AT_EXAM_EVERY` is written (the first, the 11th, ...); the others are left out, so fewer exams than
the truth holds are written (about 70 %).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.uid import generate_uid

from mvmlm.data.sources.embed import CLINICAL, DAYS_PER_YEAR, METADATA
from mvmlm.data.splits import source_less_split
from mvmlm.data.synthetic import register_format
from mvmlm.data.synthetic.dicom_writer import write_mammogram_dicom
from mvmlm.data.synthetic.lesions import LESION_COLUMNS
from mvmlm.data.synthetic.phantom import render_native

__all__ = ["write"]

ASSES = {0: "A", 1: "N", 2: "B", 3: "P", 4: "S", 5: "M", 6: "K"}
CODES = {
    "mass_shape": ("massshape", {"oval": "O", "round": "R", "irregular": "X"}),
    "mass_margin": ("massmargin", {"circumscribed": "D", "spiculated": "S"}),
    "calc_morphology": (
        "calcfind",
        {"punctate": "P", "round": "R", "fine pleomorphic": "I", "fine linear branching": "B"},
    ),
    "calc_distribution": ("calcdistri", {"grouped": "G", "regional": "R", "linear": "L", "segmental": "S"}),
}
RACES = ("Caucasian or White", "African American  or Black", "Asian", "Unknown, Unavailable or Unreported")
ETHNIC_GROUPS = ("Non-Hispanic or Latino", "Hispanic or Latino", "Unknown~Hispanic")
SCREENING_DESC = ("MG Screening Bilateral", "MG Screen Bilat w/Tomo/CAD Stnd Protocol")
DIAGNOSTIC_DESC = ("MG Diagnostic Mammo Bilateral", "MG Diag Bilat w/Tomo/CAD")
#: of the truth's exams with a cancer found at the exam, one in this many is written (a screening cohort)
CANCER_AT_EXAM_EVERY = 10


def _finding(breast: pd.Series | None, side: str | float, number: int, severity: float) -> dict:
    """One clinical finding row's finding columns (``breast`` None: no finding, exam-level assessment)."""
    row = {
        "side": side,
        "numfind": number,
        "asses": "N",
        "path_severity": severity,
        "bside": side if not pd.isna(severity) else np.nan,
        "calcnumber": 0,
    }
    if breast is not None and breast["pathology"] != "normal":
        row["asses"] = ASSES[int(breast["birads"])]
        row.update({column: codes.get(breast[word]) for word, (column, codes) in CODES.items()})
        row["calcnumber"] = 6 if breast["calcification"] == 1 else 0
        row["massdens"] = ("+" if breast["malignant"] == 1 else "=") if breast["mass"] == 1 else None
    return row


@register_format("embed")
def write(truth: pd.DataFrame, out: Path, *, height: int, width: int, seed: int) -> pd.DataFrame:
    """Write EMBED tables and DICOMs under ``out``; return the expected canonical table."""
    rng = np.random.default_rng(seed)
    clinical, metadata, expected = [], [], []
    cancer_severity, no_finding_side = itertools.cycle((0, 1)), itertools.cycle((np.nan, "B"))
    exams = _screening_cohort(truth)
    empis = 10_000_000 + rng.choice(90_000_000, size=len(exams), replace=False)
    for index, (exam_id, empi) in enumerate(zip(exams, empis, strict=True)):
        rows = truth[truth["exam_id"] == exam_id]
        first = rows.iloc[0]
        breasts = {side: group.iloc[0] for side, group in rows.groupby("laterality")}
        acc = str(int(empi) * 100 + 1)
        date = pd.Timestamp("2013-01-01") + pd.Timedelta(days=int(rng.integers(0, 5 * 365)))
        tomo = index % 2 == 1
        screening = max(int(b["birads"]) for b in breasts.values()) <= 2
        desc = (SCREENING_DESC if screening else DIAGNOSTIC_DESC)[int(tomo)]
        lesioned = [s for s, b in breasts.items() if b["pathology"] != "normal"]
        severity = {s: next(cancer_severity) if breasts[s]["malignant"] == 1 else 4 for s in lesioned}
        findings = (
            [_finding(b, s, n, severity.get(s, np.nan)) for n, (s, b) in enumerate(breasts.items(), 1)]
            if lesioned
            else [_finding(None, next(no_finding_side), 1, np.nan)]
        )
        exam = {
            "empi_anon": str(empi),
            "acc_anon": acc,
            "study_date_anon": date.strftime("%Y-%m-%d"),
            "desc": desc,
            "tissueden": float("ABCD".index(first["density"]) + 1),
            "age_at_study": float(first["age"]),
            "ETHNICITY_DESC": RACES[index % len(RACES)],
            "ETHNIC_GROUP_DESC": ETHNIC_GROUPS[index % 3],
            "total_L_find": int("L" in lesioned),
            "total_R_find": int("R" in lesioned),
        }
        clinical += [{**exam, **finding} for finding in findings]
        years_to_cancer, years_to_followup = _later_exam(clinical, exam, first, date)
        for _, row in rows.iterrows():
            files = [("2D", 0)] + [("cview", 0)] * tomo + [("2D", 1)] * (not screening and row["view"] == "CC")
            native = render_native(row.to_dict(), height, width, seed=seed * 7919 + int(row.name))
            paths = [_image(out, row, native, str(empi), acc, number, seed) for number in range(len(files))]
            metadata += [
                {
                    "anon_dicom_path": f"./{path}",
                    "empi_anon": str(empi),
                    "acc_anon": acc,
                    "study_date_anon": exam["study_date_anon"],
                    "StudyDescription": desc,
                    "SeriesDescription": f"{row['laterality']} {row['view']}",
                    "FinalImageType": image_type,
                    "ImageLateralityFinal": row["laterality"],
                    "ViewPosition": row["view"],
                    "spot_mag": spot,
                    "num_roi": 0,
                    "ROI_coords": "()",
                    "match_level": 1,
                }
                for path, (image_type, spot) in zip(paths, files, strict=True)
            ]
            expected.append(
                {
                    **row[
                        [
                            "laterality",
                            "view",
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
                        ]
                    ].to_dict(),
                    "dataset": "embed",
                    "patient_id": str(empi),
                    "exam_id": acc,
                    "image_id": Path(paths[0]).stem,
                    "path": paths[0],
                    "years_to_cancer": years_to_cancer,
                    "years_to_last_followup": years_to_followup,
                    "screening": screening,
                    **row[list(LESION_COLUMNS)].to_dict(),
                }
            )
    (out / "tables").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(clinical).to_csv(out / CLINICAL, index=False)
    pd.DataFrame(metadata).to_csv(out / METADATA, index=False)
    table = pd.DataFrame(expected)
    table["split"] = source_less_split(table["patient_id"], seed=0, val_fraction=0.1)  # the adapter's defaults
    return table


def _screening_cohort(truth: pd.DataFrame) -> list[str]:
    """The exam ids written, sorted: every exam without a cancer at the exam, and one in
    :data:`CANCER_AT_EXAM_EVERY` of those with one (the first of each run of that many)."""
    cancer_now = truth.groupby("exam_id", sort=True)["malignant"].max().eq(1)
    kept = ~cancer_now | (cancer_now.cumsum() % CANCER_AT_EXAM_EVERY == 1)
    return list(cancer_now.index[kept.to_numpy()])


def _later_exam(clinical: list[dict], exam: dict, first: pd.Series, date: pd.Timestamp) -> tuple[float, float]:
    """Append the follow-up exam (no images) that encodes the truth's risk follow-up; return the expected
    (years_to_cancer, years_to_last_followup) at whole-day resolution."""
    cancer = not pd.isna(first["years_to_cancer"])
    if cancer and first["years_to_cancer"] == 0:
        return 0.0, 0.0
    days = int(round(float(first["years_to_cancer"] if cancer else first["years_to_last_followup"]) * DAYS_PER_YEAR))
    later = {
        **exam,
        "acc_anon": str(int(exam["acc_anon"]) + 1),
        "study_date_anon": (date + pd.Timedelta(days=days)).strftime("%Y-%m-%d"),
        "age_at_study": exam["age_at_study"] + days / DAYS_PER_YEAR,
    }
    if cancer:
        finding = {
            "side": "L",
            "numfind": 1,
            "asses": "S",
            "massshape": "X",
            "massmargin": "S",
            "calcnumber": 0,
            "path_severity": 0,
            "bside": "L",
            "desc": DIAGNOSTIC_DESC[0],
        }
    else:
        finding = {"side": np.nan, "numfind": 1, "asses": "N", "calcnumber": 0, "desc": SCREENING_DESC[0]}
    clinical.append({**later, **finding})
    years = days / DAYS_PER_YEAR
    return (years, years) if cancer else (np.nan, years)


def _image(out: Path, row: pd.Series, native: np.ndarray, empi: str, acc: str, number: int, seed: int) -> str:
    """Write one image of ``row`` (``number`` > 0: an extra cview / spot image); return its path under ``out``."""

    def uid(*key: object) -> str:
        return generate_uid(entropy_srcs=["embed", str(seed), acc, *map(str, key)])

    study, series, sop = uid("study"), uid(row["image_id"], number, "series"), uid(row["image_id"], number)
    relative = f"images/cohort_1/{empi}/{study}/{series}/{sop}.dcm"
    (out / relative).parent.mkdir(parents=True, exist_ok=True)
    write_mammogram_dicom(
        out / relative,
        native,
        laterality=row["laterality"],
        view=row["view"],
        patient_id=empi,
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        photometric=row["photometric"],
        bits_stored=int(row["bits_stored"]),
        voi_function=row["voi_function"],
        transfer_syntax=row["transfer_syntax"],
        age=row["age"],
    )
    return relative
