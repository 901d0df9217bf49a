"""Synthetic exams in the CBIS-DDSM (TCIA) layout: four case-description CSVs, an NBIA download and its metadata.csv.

Only lesioned breasts are written (CBIS-DDSM has no normal images). Each image with a mass gets a folder
``Mass-{Training,Test}_P_xxxxx_{LEFT,RIGHT}_{CC,MLO}``, each with calcifications a ``Calc-...`` folder holding a
second copy of the same mammogram; abnormality ``k`` gets ``..._k`` with a crop and a real ROI mask (8-bit, 0/255,
full image size). Traps planted: every second calcified breast has two abnormalities (the cluster split in halves,
the second benign / benign-without-callback with ``calc type`` ``N/A``); crop and mask share one series (either
file order) or sit in two series; the first malignant mass has the combined shape
``IRREGULAR-ARCHITECTURAL_DISTORTION``; each CSV's first row has a trailing newline inside its quoted ROI path; CSV
paths use ``<folder>/<StudyUID>/<SeriesUID>/00000k.dcm`` unlike the download layout.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mvmlm.data.sources.cbis_ddsm import CSV_FILES, WORDS, split_patients
from mvmlm.data.synthetic import register_format
from mvmlm.data.synthetic.dicom_writer import write_mammogram_dicom
from mvmlm.data.synthetic.lesions import LESION_COLUMNS
from mvmlm.data.synthetic.phantom import render_native

__all__ = ["write"]

#: canonical lexicon word -> CBIS-DDSM word, per descriptor column
CBIS_WORDS = {
    "mass_shape": {"oval": "OVAL", "round": "ROUND", "irregular": "IRREGULAR"},
    "mass_margin": {"circumscribed": "CIRCUMSCRIBED", "spiculated": "SPICULATED"},
    "calc_morphology": {
        "punctate": "PUNCTATE",
        "round": "ROUND_AND_REGULAR",
        "fine pleomorphic": "PLEOMORPHIC",
        "fine linear branching": "FINE_LINEAR_BRANCHING",
    },
    "calc_distribution": {"grouped": "CLUSTERED", "regional": "REGIONAL", "linear": "LINEAR", "segmental": "SEGMENTAL"},
}
HEADERS = {
    "mass": [
        "patient_id",
        "breast_density",
        "left or right breast",
        "image view",
        "abnormality id",
        "abnormality type",
        "mass shape",
        "mass margins",
        "assessment",
        "pathology",
        "subtlety",
        "image file path",
        "cropped image file path",
        "ROI mask file path",
    ],
    "calc": [
        "patient_id",
        "breast density",
        "left or right breast",
        "image view",
        "abnormality id",
        "abnormality type",
        "calc type",
        "calc distribution",
        "assessment",
        "pathology",
        "subtlety",
        "image file path",
        "cropped image file path",
        "ROI mask file path",
    ],
}
KIND_WORDS = {"mass": "Mass", "calc": "Calc"}
SPLIT_WORDS = {"train": "Training", "test": "Test"}
COMBINED_SHAPE = ("IRREGULAR-ARCHITECTURAL_DISTORTION", "irregular, architectural distortion")


class _Writer:
    """Writes the files of one dataset and collects CSV rows, metadata rows and the expected image rows."""

    def __init__(self, out: Path, height: int, width: int, seed: int):
        self.out, self.height, self.width, self.seed = out, height, width, seed
        self.rng = np.random.default_rng(seed)
        self.csv_rows: dict[tuple[str, str], list[dict]] = {key: [] for key in CSV_FILES}
        self.metadata: list[dict] = []
        self.expected: list[dict] = []
        self.layouts = itertools.cycle(("one series", "one series, mask first", "two series"))
        self.benign_words = itertools.cycle(("BENIGN", "BENIGN_WITHOUT_CALLBACK"))
        self.calc_breasts = 0
        self.combined_shape_used = False

    def uid(self, *key: object) -> str:
        return generate_uid(entropy_srcs=["cbis_ddsm", str(self.seed), *map(str, key)])

    def series(self, subject: str, description: str, files: list[tuple[np.ndarray, dict]]) -> tuple[str, str, str]:
        """Write one NBIA series of ``files`` (pixels, writer keywords); return (study uid, series uid, folder)."""
        study, series = self.uid(subject, "study"), self.uid(subject, description, "series")
        study_number, series_number = self.rng.integers(10000, 99999, size=2)
        folder = f"CBIS-DDSM/{subject}/07-20-2016-DDSM-NA-{study_number}/1.000000-{description}-{series_number}"
        (self.out / folder).mkdir(parents=True, exist_ok=True)
        for index, (pixels, keywords) in enumerate(files, start=1):
            write_mammogram_dicom(
                self.out / folder / f"1-{index}.dcm",
                pixels,
                patient_id=subject,
                study_uid=study,
                series_uid=series,
                sop_uid=self.uid(subject, description, index),
                **keywords,
            )
        self.metadata.append(
            {
                "Series UID": series,
                "Collection": "CBIS-DDSM",
                "Subject ID": subject,
                "Study UID": study,
                "Study Description": "",
                "Study Date": "07-20-2016",
                "Series Description": description,
                "Modality": "MG",
                "Number of Images": len(files),
                "File Location": f"./{folder}",
            }
        )
        return study, series, folder

    def breast(self, rows: pd.DataFrame, patient: str, split: str) -> None:
        """Write every view of one lesioned breast for each finding kind it has."""
        first = rows.iloc[0]
        kinds = [kind for kind, column in (("mass", "mass"), ("calc", "calcification")) if first[column] == 1]
        self.calc_breasts += "calc" in kinds
        counts = {"mass": 1, "calc": 2 if self.calc_breasts % 2 else 1}
        words = {c: CBIS_WORDS[c].get(first[c]) for c in CBIS_WORDS}
        expected_shape = first["mass_shape"]
        if first["malignant"] == 1 and "mass" in kinds and not self.combined_shape_used:
            (words["mass_shape"], expected_shape), self.combined_shape_used = COMBINED_SHAPE, True
        main = {
            "pathology": "MALIGNANT" if first["malignant"] == 1 else next(self.benign_words),
            "assessment": int(first["birads"]),
            **words,
        }
        second = {
            **main,
            "pathology": "BENIGN" if first["malignant"] == 1 else "BENIGN_WITHOUT_CALLBACK",
            "assessment": 2,
            "calc_morphology": "N/A",
        }
        for _, row in rows.iterrows():
            native = render_native(row.to_dict(), self.height, self.width, seed=self.seed * 7919 + int(row.name))
            keywords = {
                "laterality": row["laterality"],
                "view": row["view"],
                "photometric": row["photometric"],
                "bits_stored": int(row["bits_stored"]),
                "voi_function": row["voi_function"],
                "transfer_syntax": row["transfer_syntax"],
            }
            image_id = f"{patient}_{WORDS[row['laterality']]}_{row['view']}"
            paths, rois, crops = [], [], []
            for kind in kinds:
                folder = f"{KIND_WORDS[kind]}-{SPLIT_WORDS[split]}_{image_id}"
                study, series, location = self.series(folder, "full mammogram images", [(native, keywords)])
                paths.append(f"{location}/1-1.dcm")
                for number, mask in enumerate(_masks(row, native.shape, counts[kind]), start=1):
                    roi, crop, crop_csv, roi_csv = self.abnormality(f"{folder}_{number}", native, mask, keywords)
                    rois.append(roi)
                    crops.append(crop)
                    csv_paths = (f"{folder}/{study}/{series}/000000.dcm", crop_csv, roi_csv)
                    values = main if number == 1 else second
                    subtlety = int(self.rng.integers(1, 6))
                    self.csv_rows[(kind, split)].append(
                        _csv_row(kind, patient, row, number, values, subtlety, csv_paths)
                    )
            self.expected.append(
                {
                    **row[
                        [
                            "laterality",
                            "view",
                            "birads",
                            "density",
                            "malignant",
                            "mass",
                            "calcification",
                            "mass_margin",
                            "calc_morphology",
                            "calc_distribution",
                            "pathology",
                        ]
                    ].to_dict(),
                    "dataset": "cbis_ddsm",
                    "patient_id": patient,
                    "exam_id": patient,
                    "image_id": image_id,
                    "path": paths[0],
                    "mass_shape": expected_shape,
                    "source_split": split,
                    "roi_path": ";".join(rois),
                    "crop_path": ";".join(crops),
                    **row[list(LESION_COLUMNS)].to_dict(),
                }
            )

    def abnormality(self, subject: str, native: np.ndarray, mask: np.ndarray, keywords: dict) -> tuple[str, ...]:
        """Write the crop and ROI mask of one abnormality; return (mask file, crop file, crop CSV, ROI CSV path)."""
        ys, xs = np.nonzero(mask)
        crop = np.ascontiguousarray(native[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
        crop_keywords = {**keywords, "transfer_syntax": ExplicitVRLittleEndian}  # too small for J2K / JPEG-LS
        mask_keywords = {**crop_keywords, "photometric": "MONOCHROME2", "bits_stored": 8, "voi_function": None}
        crop_file, mask_file = (crop, crop_keywords), (mask.astype(np.uint16) * 255, mask_keywords)
        layout = next(self.layouts)
        if layout == "two series":
            study, crop_series, crop_folder = self.series(subject, "cropped images", [crop_file])
            _, mask_series, mask_folder = self.series(subject, "ROI mask images", [mask_file])
            return (
                f"{mask_folder}/1-1.dcm",
                f"{crop_folder}/1-1.dcm",
                f"{subject}/{study}/{crop_series}/000000.dcm",
                f"{subject}/{study}/{mask_series}/000000.dcm",
            )
        crop_index, mask_index = (1, 0) if layout == "one series, mask first" else (0, 1)
        pair = [mask_file, crop_file] if crop_index else [crop_file, mask_file]
        study, series, folder = self.series(subject, "ROI mask images", pair)
        csv = f"{subject}/{study}/{series}/00000"
        return (
            f"{folder}/1-{mask_index + 1}.dcm",
            f"{folder}/1-{crop_index + 1}.dcm",
            f"{csv}{crop_index}.dcm",
            f"{csv}{mask_index}.dcm",
        )


def _csv_row(kind: str, patient: str, row: pd.Series, number: int, values: dict, subtlety: int, paths: tuple) -> dict:
    """One case-description CSV row of abnormality ``number`` of the image ``row``."""
    descriptors = ("mass_shape", "mass_margin") if kind == "mass" else ("calc_morphology", "calc_distribution")
    return dict(
        zip(
            HEADERS[kind],
            [
                patient,
                "ABCD".index(row["density"]) + 1,
                WORDS[row["laterality"]],
                row["view"],
                number,
                "mass" if kind == "mass" else "calcification",
                *(values[d] for d in descriptors),
                values["assessment"],
                values["pathology"],
                subtlety,
                *paths,
            ],
            strict=True,
        )
    )


def _masks(row: pd.Series, shape: tuple[int, int], parts: int) -> list[np.ndarray]:
    """Boolean lesion masks in native orientation: a disc at the lesion, split into left/right halves if ``parts``=2."""
    height, width = shape
    x = row["lesion_x"] if row["laterality"] == "L" else 1.0 - row["lesion_x"]
    cy, cx, radius = row["lesion_y"] * height, x * width, max(0.7 * row["lesion_size"] * width, 2.0)
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    return [disc] if parts == 1 else [disc & (xx < cx), disc & (xx >= cx)]


@register_format("cbis_ddsm")
def write(truth: pd.DataFrame, out: Path, *, height: int, width: int, seed: int) -> pd.DataFrame:
    """Write the CBIS-DDSM CSVs, DICOM series and metadata.csv under ``out``; return the expected canonical table."""
    writer = _Writer(out, height, width, seed)
    patients = {exam: f"P_{number:05d}" for number, exam in enumerate(sorted(truth["exam_id"].unique()), start=1)}
    for (exam, _), rows in truth[truth["pathology"] != "normal"].groupby(["exam_id", "laterality"], sort=True):
        writer.breast(rows, patients[exam], "test" if rows["split"].iloc[0] == "test" else "train")
    for (kind, split), rows in writer.csv_rows.items():
        table = pd.DataFrame(rows, columns=HEADERS[kind])
        if len(table):
            table.loc[0, "ROI mask file path"] += "\n"  # quoted by the CSV writer, as in the real files
        table.to_csv(out / CSV_FILES[(kind, split)], index=False)
    pd.DataFrame(writer.metadata).to_csv(out / "metadata.csv", index=False)
    expected = pd.DataFrame(writer.expected)
    source_split = expected.pop("source_split")
    expected["split"] = split_patients(expected["patient_id"], source_split, seed=0, val_fraction=0.1)
    return expected
