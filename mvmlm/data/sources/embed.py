"""EMBED Open Data (Emory, AWS) -> canonical image table.

Native layout (``root``)::

    tables/EMBED_OpenData_clinical.csv    one row per finding (side L/R/B, NaN = no finding), codes per the legend
    tables/EMBED_OpenData_metadata.csv    one row per image (anon_dicom_path, FinalImageType, ImageLateralityFinal...)
    images/cohort_1/<empi_anon>/<study>/<series>/<SOPInstanceUID>.dcm

Join rule (EMBED sample notebook): merge the two tables on ``acc_anon`` and keep the rows whose ``side`` equals
``ImageLateralityFinal``, is ``B`` (both breasts) or is NaN (no finding: the exam-level assessment applies to both).
A breast with no such row has no label and its images are left out. Only ``2D`` images are kept (``cview`` /
``C-view`` synthetic views are dropped); spot-compression / magnification views (``spot_mag`` 1) and images without
an L/R ``ImageLateralityFinal`` (logged) are dropped.

Breast-level labels over the breast's finding rows: BI-RADS = the highest ``asses`` (letters A N B P S M K ->
0 1 2 3 4 5 6, X -> NA); density from ``tissueden`` 1-4 -> A-D (5 = male -> NA); mass / calcification by the
notebook's finding rules; descriptors (lexicon words) from the highest-assessed finding; malignant if any
``path_severity`` is 0 or 1 (invasive / non-invasive cancer); pathology malignant, benign (any other pathology
result), normal (no finding, no pathology) or NA (a finding that was not biopsied).

Risk follow-up (Mirai convention, per exam, float years = days / 365.25), from every exam of the patient in the
clinical table (also those without images in the release): ``years_to_cancer`` = time to the first exam on or
after this one with a cancer pathology (0 = cancer found at this exam; NA = no cancer seen);
``years_to_last_followup`` = years known cancer-free: ``years_to_cancer`` when a cancer was seen, else the time to
the patient's last exam. Exams after a cancer diagnosis get NA for both.
Extra column ``screening``: the study description contains "screen". Split: patient-level with a fixed seed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from mvmlm.data.sources import SourceError, read_native_table, register_source
from mvmlm.data.splits import source_less_split

__all__ = ["CLINICAL", "METADATA", "ASSESSMENT", "read", "finding_rows", "follow_up"]

log = logging.getLogger(__name__)

CLINICAL = "tables/EMBED_OpenData_clinical.csv"
METADATA = "tables/EMBED_OpenData_metadata.csv"
CLINICAL_COLUMNS = (
    "empi_anon",
    "acc_anon",
    "study_date_anon",
    "desc",
    "asses",
    "tissueden",
    "side",
    "massshape",
    "massmargin",
    "massdens",
    "calcfind",
    "calcdistri",
    "calcnumber",
    "path_severity",
    "age_at_study",
)
METADATA_COLUMNS = (
    "anon_dicom_path",
    "empi_anon",
    "acc_anon",
    "FinalImageType",
    "ImageLateralityFinal",
    "ViewPosition",
    "spot_mag",
)
DAYS_PER_YEAR = 365.25

ASSESSMENT = {"A": 0, "N": 1, "B": 2, "P": 3, "S": 4, "M": 5, "K": 6, "X": None}
DENSITY = {1: "A", 2: "B", 3: "C", 4: "D"}  # 5 = normal male -> NA
CANCER_SEVERITY = (0, 1)  # invasive, non-invasive cancer
MASS_SHAPES_THAT_ARE_MASSES = frozenset("GRONXYDL")
MASS_DENSITIES = frozenset("+-=")
MASS_SHAPE = {"R": "round", "O": "oval", "X": "irregular"}
MASS_MARGIN = {"D": "circumscribed", "U": "obscured", "M": "microlobulated", "I": "indistinct", "S": "spiculated"}
CALC_MORPHOLOGY = {
    "A": "amorphous",
    "9": "benign",
    "H": "coarse heterogeneous",
    "C": "coarse popcorn-like",
    "D": "dystrophic",
    "E": "rim",
    "F": "fine linear",
    "B": "fine linear branching",
    "I": "fine pleomorphic",
    "L": "large rod-like",
    "M": "milk of calcium",
    "J": "oil cyst",
    "K": "pleomorphic",
    "P": "punctate",
    "R": "round",
    "S": "skin",
    "O": "lucent-centered",
    "U": "suture",
    "V": "vascular",
    "Q": "coarse",
}
CALC_DISTRIBUTION = {"G": "grouped", "S": "segmental", "R": "regional", "D": "diffuse", "L": "linear", "C": "grouped"}
DESCRIPTORS = {
    "massshape": ("mass_shape", MASS_SHAPE),
    "massmargin": ("mass_margin", MASS_MARGIN),
    "calcfind": ("calc_morphology", CALC_MORPHOLOGY),
    "calcdistri": ("calc_distribution", CALC_DISTRIBUTION),
}


@register_source("embed")
def read(root: str | Path, *, seed: int = 0, val_fraction: float = 0.1) -> pd.DataFrame:
    """Read EMBED Open Data under ``root`` (``tables/`` + ``images/``)."""
    root = Path(root)
    clinical = _read_csv(root / CLINICAL, CLINICAL_COLUMNS)
    metadata = _read_csv(root / METADATA, METADATA_COLUMNS)
    findings = finding_rows(clinical, root / CLINICAL)
    images = metadata[
        metadata["FinalImageType"].str.strip().str.upper().eq("2D")
        & pd.to_numeric(metadata["spot_mag"], errors="coerce").fillna(0).ne(1)
    ]
    images = images.rename(columns={"ImageLateralityFinal": "laterality", "ViewPosition": "view"})
    sided = images["laterality"].isin(["L", "R"])
    if not sided.all():
        log.warning("%s: %d 2D image(s) without ImageLateralityFinal L/R left out", root / METADATA, (~sided).sum())
        images = images[sided]
    breasts = images[["acc_anon", "laterality"]].drop_duplicates()
    joined = breasts.merge(findings, on="acc_anon", how="inner")
    joined = joined[
        joined["side"].eq(joined["laterality"]).fillna(False)
        | joined["side"].eq("B").fillna(False)
        | joined["side"].isna()
    ]
    labels = _breast_labels(joined)
    exams = _exam_info(findings)
    table = images.merge(labels, on=["acc_anon", "laterality"], how="inner").merge(exams, on="acc_anon", how="left")
    table["path"] = table["anon_dicom_path"].str.strip().str.removeprefix("./")
    _check_files(root, table)
    table["image_id"] = table["path"].map(lambda p: Path(p).stem)
    table["dataset"] = "embed"
    table["patient_id"] = table["empi_anon"]
    table["exam_id"] = table["acc_anon"]
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
        "mass_shape",
        "mass_margin",
        "calc_morphology",
        "calc_distribution",
        "pathology",
        "years_to_cancer",
        "years_to_last_followup",
        "screening",
    ]
    return table[keep].sort_values(["patient_id", "exam_id", "image_id"], ignore_index=True)


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """An EMBED table's ``columns`` as stripped strings ("" = NA), with the 1-based data row as ``source_row``."""
    options = {"dtype": str, "keep_default_na": False, "na_values": [""], "low_memory": False}
    table = read_native_table(path, columns, what="EMBED table", **options)
    table = table[list(columns)].apply(lambda column: column.str.strip())
    return table.assign(source_row=table.index + 1)


def finding_rows(clinical: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Clinical rows with decoded labels: birads, mass, calcification, lexicon descriptors, pathology flags."""
    unknown = clinical["asses"].notna() & ~clinical["asses"].isin(list(ASSESSMENT))
    if unknown.any():
        first = clinical[unknown].iloc[0]
        raise SourceError(
            f"{path} row {first['source_row']}: unknown asses code {first['asses']!r}; known: {sorted(ASSESSMENT)}"
        )
    calcnumber = pd.to_numeric(clinical["calcnumber"], errors="coerce").fillna(0)
    out = pd.DataFrame(
        {
            "empi_anon": clinical["empi_anon"],
            "acc_anon": clinical["acc_anon"],
            "side": clinical["side"],
            "date": pd.to_datetime(clinical["study_date_anon"], errors="coerce"),
            "screening": clinical["desc"].str.contains("screen", case=False, na=False),
            "age": pd.to_numeric(clinical["age_at_study"], errors="coerce"),
            "tissueden": pd.to_numeric(clinical["tissueden"], errors="coerce"),
            "birads": clinical["asses"].map(ASSESSMENT).astype("Float64"),
            "mass": (
                clinical["massshape"].isin(list(MASS_SHAPES_THAT_ARE_MASSES))
                | clinical["massmargin"].notna()
                | clinical["massdens"].isin(list(MASS_DENSITIES))
            ).astype(int),
            "calcification": (clinical["calcfind"].notna() | clinical["calcdistri"].notna() | calcnumber.ne(0)).astype(
                int
            ),
            "finding": clinical[["massshape", "massmargin", "massdens", "calcfind", "calcdistri"]].notna().any(axis=1)
            | calcnumber.ne(0),
            "severity": pd.to_numeric(clinical["path_severity"], errors="coerce"),
        }
    )
    for column, (canonical, words) in DESCRIPTORS.items():
        out[canonical] = clinical[column].map(words)
    out["cancer"] = out["severity"].isin(CANCER_SEVERITY)
    return out


def _breast_labels(joined: pd.DataFrame) -> pd.DataFrame:
    """Aggregate the finding rows kept for each (exam, breast) into breast-level labels."""
    ordered = joined.sort_values(["cancer", "birads"], ascending=False, na_position="last")
    groups = ordered.groupby(["acc_anon", "laterality"], sort=False)
    labels = groups.agg(
        birads=("birads", "max"),
        mass=("mass", "max"),
        calcification=("calcification", "max"),
        malignant=("cancer", "max"),
        finding=("finding", "max"),
        biopsied=("severity", lambda s: s.notna().any()),
        **{c: (c, "first") for c in ("mass_shape", "mass_margin", "calc_morphology", "calc_distribution")},
    ).reset_index()
    labels["malignant"] = labels["malignant"].astype(int)
    labels["pathology"] = None
    labels.loc[labels["biopsied"], "pathology"] = "benign"
    labels.loc[~labels["biopsied"] & ~labels["finding"], "pathology"] = "normal"
    labels.loc[labels["malignant"].eq(1), "pathology"] = "malignant"
    return labels.drop(columns=["finding", "biopsied"])


def _exam_info(findings: pd.DataFrame) -> pd.DataFrame:
    """Per exam: age, density, screening flag and the risk follow-up."""
    exams = findings.groupby("acc_anon", as_index=False).agg(
        empi_anon=("empi_anon", "first"),
        date=("date", "first"),
        age=("age", "first"),
        tissueden=("tissueden", "first"),
        screening=("screening", "max"),
        cancer=("cancer", "max"),
    )
    exams["density"] = exams["tissueden"].map(DENSITY)
    exams[["years_to_cancer", "years_to_last_followup"]] = follow_up(exams)
    return exams[["acc_anon", "age", "density", "screening", "years_to_cancer", "years_to_last_followup"]]


def follow_up(exams: pd.DataFrame) -> pd.DataFrame:
    """Mirai-style follow-up of each exam from all exams (``empi_anon``, ``date``, ``cancer``) of its patient.

    Returns ``years_to_cancer`` and ``years_to_last_followup`` aligned with ``exams`` (see the module docstring).
    """
    first_cancer = exams[exams["cancer"]].groupby("empi_anon")["date"].min()
    last_exam = exams.groupby("empi_anon")["date"].max()
    cancer_date = exams["empi_anon"].map(first_cancer)
    after_diagnosis = cancer_date.notna() & (exams["date"] > cancer_date)
    years_to_cancer = ((cancer_date - exams["date"]).dt.days / DAYS_PER_YEAR).where(~after_diagnosis)
    years_to_last = (exams["empi_anon"].map(last_exam) - exams["date"]).dt.days / DAYS_PER_YEAR
    return pd.DataFrame(
        {
            "years_to_cancer": years_to_cancer,
            "years_to_last_followup": years_to_cancer.where(cancer_date.notna(), years_to_last).where(~after_diagnosis),
        },
        index=exams.index,
    )


def _check_files(root: Path, table: pd.DataFrame) -> None:
    missing = table.loc[~table["path"].map(lambda p: (root / p).is_file())]
    if not missing.empty:
        raise SourceError(
            f"{root / METADATA} row {missing['source_row'].iloc[0]}: image {missing['path'].iloc[0]} "
            f"not found ({len(missing)} missing image(s) in all)"
        )
