"""CBIS-DDSM (TCIA) -> canonical image table.

Native layout (``root`` = the NBIA download folder, with the four case-description CSVs put next to it)::

    {mass,calc}_case_description_{train,test}_set.csv   one row per abnormality (abnormality id 1..n per image)
    metadata.csv                                        NBIA manifest: Series UID -> File Location (optional)
    CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/<date>/1.000000-full mammogram images-<n>/1-1.dcm
    CBIS-DDSM/Mass-Training_P_00001_LEFT_CC_1/<date>/1.000000-ROI mask images-<n>/1-1.dcm, 1-2.dcm

Traps handled: ``breast_density`` (mass) vs ``breast density`` (calc); literal ``N/A`` in ``calc type``; quoted
paths with a trailing newline; CSV paths (``<folder>/<StudyUID>/<SeriesUID>/000000.dcm``) that differ from the
download layout, mapped through the SeriesInstanceUID (``metadata.csv``, else the DICOM headers); crop and ROI
paths that may be swapped (the ROI mask is the file with the full image's size); an image listed in both the mass
and the calc CSVs (one row, the mass copy). Only lesioned images exist (no normals). Labels are breast-level: mass
/ calcification if any abnormality of that type, malignant if any ``MALIGNANT`` (``BENIGN_WITHOUT_CALLBACK`` is
benign), BI-RADS = the highest ``assessment``, density 1-4 -> A-D (0 -> NA), descriptors of the most severe
abnormality in BI-RADS lexicon words. Extra columns ``roi_path`` and ``crop_path`` list each image's ROI masks and
crops, ``;``-separated, mass before calc, by abnormality id. Split: the source's Training/Test (a patient with any
test abnormality is test), val drawn from Training patients with a fixed seed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mvmlm.data.dicom import DicomReadError, MammogramMeta, read_dicom_header
from mvmlm.data.sources import SourceError, read_native_table, register_source
from mvmlm.data.splits import patient_split

__all__ = ["CSV_FILES", "LEXICON", "WORDS", "lexicon_words", "read", "split_patients"]

#: (abnormality kind, source split) -> CSV file name
CSV_FILES = {
    (kind, split): f"{kind}_case_description_{split}_set.csv"
    for kind in ("mass", "calc")
    for split in ("train", "test")
}
COMMON_COLUMNS = (
    "patient_id",
    "breast_density",
    "left or right breast",
    "image view",
    "abnormality id",
    "assessment",
    "pathology",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
)
DESCRIPTOR_COLUMNS = {
    "mass": {"mass shape": "mass_shape", "mass margins": "mass_margin"},
    "calc": {"calc type": "calc_morphology", "calc distribution": "calc_distribution"},
}
RENAME = {"breast density": "breast_density"}  # the calc CSVs' spelling
SIDES = {"LEFT": "L", "RIGHT": "R"}
#: canonical laterality -> CBIS-DDSM side word
WORDS = {side: word for word, side in SIDES.items()}
SEVERITY = {"MALIGNANT": 2, "BENIGN": 1, "BENIGN_WITHOUT_CALLBACK": 0}
DENSITY = {"1": "A", "2": "B", "3": "C", "4": "D"}  # "0" (2 calc rows) -> NA
#: CBIS-DDSM words that differ from the BI-RADS 5th-edition lexicon; others are lower-cased, "_" -> " "
LEXICON = {
    "ILL_DEFINED": "indistinct",
    "LUCENT_CENTER": "lucent-centered",
    "LUCENT_CENTERED": "lucent-centered",
    "ROUND_AND_REGULAR": "round",
    "DIFFUSELY_SCATTERED": "diffuse",
    "CLUSTERED": "grouped",
    "PLEOMORPHIC": "fine pleomorphic",
    "COARSE": "coarse heterogeneous",
    "EGGSHELL": "rim",
    "MILK_OF_CALCIUM": "milk of calcium",
}
MISSING_WORDS = {"", "N/A", "NA", "NONE"}


def lexicon_words(value: str) -> str | None:
    """A CBIS descriptor (``IRREGULAR-ARCHITECTURAL_DISTORTION``) as lexicon words joined by ``, ``; NA if empty."""
    if value.strip().upper() in MISSING_WORDS:
        return None
    words = [LEXICON.get(part, part.lower().replace("_", " ")) for part in value.strip().upper().split("-") if part]
    return ", ".join(dict.fromkeys(words))


def split_patients(patient_ids: pd.Series, source_split: pd.Series, *, seed: int, val_fraction: float) -> pd.Series:
    """Training/Test from the source (a patient with any ``test`` row is test); val drawn from Training patients."""
    test_patients = set(patient_ids[source_split == "test"])
    fixed = patient_ids.map(lambda p: "test" if p in test_patients else None)
    return patient_split(patient_ids, seed=seed, val_fraction=val_fraction, fixed=fixed)


@register_source("cbis_ddsm")
def read(root: str | Path, *, seed: int = 0, val_fraction: float = 0.1) -> pd.DataFrame:
    """Read CBIS-DDSM under ``root`` (the four case-description CSVs + the NBIA download)."""
    root = Path(root)
    rows = pd.concat(
        [_read_cases(root / name, kind, split) for (kind, split), name in CSV_FILES.items()], ignore_index=True
    )
    files = _FileIndex(root)
    located = rows.apply(files.locate, axis=1, result_type="expand")
    rows[["path", "roi", "crop"]] = located
    rows["kind_order"] = rows["kind"].map({"mass": 0, "calc": 1})
    rows = rows.sort_values(["patient_id", "laterality", "kind_order", "abnormality_id", "view"], ignore_index=True)
    breasts = _breast_labels(rows)
    images = rows.groupby(["patient_id", "laterality", "view"], as_index=False, sort=False).agg(
        path=("path", "first"),
        roi_path=("roi", ";".join),
        crop_path=("crop", ";".join),
        source_split=("split", "max"),  # "test" > "train"
    )
    table = images.merge(breasts, on=["patient_id", "laterality"], how="left")
    table["dataset"] = "cbis_ddsm"
    table["exam_id"] = table["patient_id"]
    table["image_id"] = table["patient_id"] + "_" + table["laterality"].map(WORDS) + "_" + table["view"]
    source_split = table.pop("source_split")
    table["split"] = split_patients(table["patient_id"], source_split, seed=seed, val_fraction=val_fraction)
    return table.sort_values("image_id", ignore_index=True)


def _read_cases(path: Path, kind: str, split: str) -> pd.DataFrame:
    """One case-description CSV as normalised abnormality rows (strings stripped, ``N/A`` kept, then mapped)."""
    required = (*COMMON_COLUMNS, *DESCRIPTOR_COLUMNS[kind])
    what, hint = "CBIS-DDSM case-description CSV", "download it from the TCIA page"
    options = {"rename": RENAME, "allow_empty": True, "dtype": str, "keep_default_na": False}  # a split may be empty
    table = read_native_table(path, required, what=what, hint=hint, **options)
    table = table[list(required)].apply(lambda column: column.str.strip())
    bad = ~table["left or right breast"].isin(list(SIDES)) | ~table["pathology"].isin(list(SEVERITY))
    if bad.any():
        raise SourceError(
            f"{path} row {int(bad.idxmax()) + 1}: unexpected side/pathology "
            f"{table.loc[bad.idxmax(), ['left or right breast', 'pathology']].tolist()}"
        )

    def number(column: str) -> pd.Series:
        return pd.to_numeric(table[column], errors="coerce")

    out = pd.DataFrame(
        {
            "csv": str(path),
            "row": table.index + 1,
            "kind": kind,
            "split": split,
            "patient_id": table["patient_id"],
            "laterality": table["left or right breast"].map(SIDES),
            "view": table["image view"].str.upper(),
            "abnormality_id": number("abnormality id"),
            "density": table["breast_density"].map(DENSITY),
            "assessment": number("assessment"),
            "pathology_word": table["pathology"],
            "image_csv_path": table["image file path"],
            "crop_csv_path": table["cropped image file path"],
            "roi_csv_path": table["ROI mask file path"],
        }
    )
    for column, canonical in DESCRIPTOR_COLUMNS[kind].items():
        out[canonical] = table[column].map(lexicon_words)
    return out


def _breast_labels(rows: pd.DataFrame) -> pd.DataFrame:
    """Breast-level labels aggregated over every abnormality row of the breast (both views)."""
    rows = rows.assign(severity=rows["pathology_word"].map(SEVERITY))
    by_severity = rows.sort_values(["severity", "abnormality_id", "view"], ascending=[False, True, True])
    groups = by_severity.groupby(["patient_id", "laterality"], sort=False)
    breasts = groups.agg(
        mass=("kind", lambda k: int((k == "mass").any())),
        calcification=("kind", lambda k: int((k == "calc").any())),
        malignant=("severity", lambda s: int((s == SEVERITY["MALIGNANT"]).any())),
        birads=("assessment", "max"),
        density=("density", "max"),
        **{c: (c, "first") for c in ("mass_shape", "mass_margin", "calc_morphology", "calc_distribution") if c in rows},
    ).reset_index()
    breasts["pathology"] = breasts["malignant"].map({1: "malignant", 0: "benign"})
    return breasts


class _FileIndex:
    """Maps CSV paths to files of the download: the CSV path itself if it exists, else by its SeriesInstanceUID."""

    def __init__(self, root: Path):
        self.root = root
        self._series: dict[str, list[str]] | None = None
        self._sizes: dict[str, tuple[int, int]] = {}

    def series(self) -> dict[str, list[str]]:
        """SeriesInstanceUID -> relative file paths, from ``metadata.csv`` when present, else from the headers."""
        if self._series is None:
            self._series = self._from_metadata() if (self.root / "metadata.csv").is_file() else self._from_headers()
        return self._series

    def _from_metadata(self) -> dict[str, list[str]]:
        columns = ("Series UID", "File Location")
        table = read_native_table(
            self.root / "metadata.csv", columns, what="NBIA manifest", dtype=str, keep_default_na=False
        )
        index = {}
        for uid, location in zip(table["Series UID"], table["File Location"], strict=True):
            folder = self.root / location.strip()
            index[uid.strip()] = [f.relative_to(self.root).as_posix() for f in sorted(folder.glob("*.dcm"))]
        return index

    def _from_headers(self) -> dict[str, list[str]]:
        index: dict[str, list[str]] = {}
        for file in sorted(self.root.rglob("*.dcm")):
            uid = self._header(file).series_uid or ""
            index.setdefault(uid, []).append(file.relative_to(self.root).as_posix())
        return index

    @staticmethod
    def _header(file: Path) -> MammogramMeta:
        try:
            return read_dicom_header(file)
        except DicomReadError as exc:
            raise SourceError(f"unreadable CBIS-DDSM file: {exc}") from None

    def size(self, relative: str) -> tuple[int, int]:
        """(Rows, Columns) of a file, from its header (cached)."""
        if relative not in self._sizes:
            meta = self._header(self.root / relative)
            self._sizes[relative] = (meta.rows, meta.cols)
        return self._sizes[relative]

    def files(self, csv_path: str) -> list[str]:
        """Files a CSV path stands for: itself when it exists, else every file of its series."""
        if (self.root / csv_path).is_file():
            return [csv_path]
        parts = csv_path.split("/")
        return self.series().get(parts[-2], []) if len(parts) >= 2 else []

    def locate(self, row: pd.Series) -> tuple[str, str, str]:
        """(full image, ROI mask, crop) relative paths of one abnormality row; of the ROI/crop pair the larger file
        is the mask (it has the full image's size), whichever CSV field names it."""
        where = f"{row['csv']} row {row['row']}"
        full = self.files(row["image_csv_path"])
        if len(full) != 1:
            raise SourceError(
                f"{where}: image file path {row['image_csv_path']!r} matches {len(full)} files "
                f"in the download (expected 1; is the series downloaded?)"
            )
        pieces = sorted(set(self.files(row["roi_csv_path"])) | set(self.files(row["crop_csv_path"])))
        if len(pieces) != 2:
            raise SourceError(
                f"{where}: expected an ROI mask and a crop for {row['roi_csv_path']!r} / "
                f"{row['crop_csv_path']!r}, found {pieces or 'no file'} in the download"
            )
        crop, mask = sorted(pieces, key=lambda f: self.size(f)[0] * self.size(f)[1])
        return full[0], mask, crop
