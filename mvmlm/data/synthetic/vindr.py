"""Synthetic exams in the VinDr-Mammo (PhysioNet 1.0.0) layout.

``images/<study_id>/<image_id>.dicom`` with 32-character hex ids, ``breast-level_annotations.csv`` (one row per
image) and ``finding_annotations.csv`` (one row per box, or one ``['No Finding']`` row per image without one), in
the documented column order. A breast with both a mass and calcifications gets one box labelled with the
CSV-quoted two-item list; a few normal breasts carry a non-BI-RADS ``Skin Thickening`` box; the first lesion box
reaches past the image edge (as real boxes do). ``finding_birads`` is the breast's BI-RADS when 3-5, else empty
(VinDr's vocabulary). Truth test exams are ``test``, the rest ``training``. LINEAR files of even exams carry two
window values, as IMS Giotto files do.

VinDr has no patient ids (a study is the patient), no age in its tables and no pathology, so the expected table
has study ids as patient ids and NA age, malignant and pathology.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.uid import generate_uid

from mvmlm.data.sources import vindr as source
from mvmlm.data.synthetic import register_format
from mvmlm.data.synthetic.dicom_writer import write_mammogram_dicom
from mvmlm.data.synthetic.lesions import LESION_COLUMNS
from mvmlm.data.synthetic.phantom import render_native

__all__ = ["write"]

OTHER_FINDING = "Skin Thickening"
P_OTHER_FINDING, P_OUTSIDE = 0.1, 0.1
SKIN = (0.8, 0.5, 0.1)  # (x, y, size) of a Skin Thickening box, canonical image fractions


def _hex(seed: int, *key: object) -> str:
    return hashlib.md5("/".join(map(str, ("vindr", seed, *key))).encode()).hexdigest()


def _box(row: pd.Series, rng: np.random.Generator, height: int, width: int, outside: bool) -> list[float]:
    """[xmin, ymin, xmax, ymax] around the lesion (or, without one, the skin at the nipple) in native pixels."""
    x, y, size = (row["lesion_x"], row["lesion_y"], row["lesion_size"]) if pd.notna(row["lesion_x"]) else SKIN
    cx, cy = (1.0 - x if row["laterality"] == "R" else x) * width, y * height
    half = 0.6 * size * width
    box = [cx - half, cy - half, cx + half, cy + half] + rng.normal(0.0, 0.5, 4)
    if outside:  # stretched to past the chest-wall edge
        if row["laterality"] == "L":
            box[0] = -rng.uniform(0.5, 3.0)
        else:
            box[2] = width + rng.uniform(0.5, 3.0)
    return [round(float(v), 2) for v in box]


def _findings(row: pd.Series, other: bool, rng: np.random.Generator) -> list[str]:
    """VinDr categories of the breast's findings (a two-item list in either order)."""
    found = [source.CATEGORY_OF[name] for name in ("mass", "calcification") if row[name] == 1]
    found = found[::-1] if rng.random() < 0.5 else found
    return found or ([OTHER_FINDING] if other else [])


@register_format("vindr")
def write(truth: pd.DataFrame, out: Path, *, height: int, width: int, seed: int) -> pd.DataFrame:
    """Write VinDr-style DICOMs and annotation CSVs under ``out``; return the expected canonical table."""
    rng = np.random.default_rng(seed)
    exams = {exam: index for index, exam in enumerate(sorted(truth["exam_id"].unique()))}
    other_breasts = {key for key in truth.groupby(["exam_id", "laterality"]).groups if rng.random() < P_OTHER_FINDING}
    breast_rows, finding_rows, expected = [], [], []
    outside_done = False
    for index, row in truth.reset_index(drop=True).iterrows():
        exam = exams[row["exam_id"]]
        study = _hex(seed, "study", row["exam_id"])
        series = _hex(seed, "series", row["exam_id"], row["laterality"] if exam % 7 == 3 else "")
        image = _hex(seed, "image", row["image_id"])
        split = "test" if row["split"] == "test" else "training"
        top = (1 << int(row["bits_stored"])) - 1
        giotto = row["voi_function"] == "LINEAR" and exam % 2 == 0
        (out / "images" / study).mkdir(parents=True, exist_ok=True)
        path = write_mammogram_dicom(
            out / "images" / study / f"{image}.dicom",
            render_native(row, height, width, seed=seed * 100_003 + index),
            laterality=row["laterality"],
            view=row["view"],
            patient_id=study,
            study_uid=generate_uid(entropy_srcs=[study]),
            series_uid=generate_uid(entropy_srcs=[series]),
            sop_uid=generate_uid(entropy_srcs=[image]),
            photometric=row["photometric"],
            bits_stored=int(row["bits_stored"]),
            voi_function=row["voi_function"],
            window=([top / 2, top * 0.45], [top + 1.0, top * 0.7]) if giotto else None,
            transfer_syntax=row["transfer_syntax"],
            age=row["age"],
        )
        common = {
            "study_id": study,
            "series_id": series,
            "image_id": image,
            "laterality": row["laterality"],
            "view_position": row["view"],
            "height": height,
            "width": width,
            "breast_birads": f"BI-RADS {row['birads']}",
            "breast_density": f"DENSITY {row['density']}",
        }
        breast_rows.append({**common, "split": split})
        findings = _findings(row, (row["exam_id"], row["laterality"]) in other_breasts, rng)
        boxes = []
        if findings:
            outside = not outside_done or rng.random() < P_OUTSIDE
            outside_done = True
            box = _box(row, rng, height, width, outside)
            birads = f"BI-RADS {row['birads']}" if row["birads"] >= 3 and findings[0] != OTHER_FINDING else None
            finding_rows.append(
                {
                    **common,
                    "finding_categories": str(findings),
                    "finding_birads": birads,
                    **dict(zip(source.BOX, box, strict=True)),
                    "split": split,
                }
            )
            clipped = dict(zip(source.BOX, np.clip(box, 0, [width, height, width, height]).tolist(), strict=True))
            boxes = [{"finding": name, **clipped} for name in findings]
        else:
            finding_rows.append({**common, "finding_categories": "['No Finding']", "split": split})
        expected.append(
            {
                "dataset": "vindr",
                "patient_id": study,
                "exam_id": study,
                "image_id": image,
                "path": path.relative_to(out).as_posix(),
                "laterality": row["laterality"],
                "view": row["view"],
                "source_split": split,
                "birads": row["birads"],
                "density": row["density"],
                "mass": row["mass"],
                "calcification": row["calcification"],
                "boxes": boxes,
                **row[list(LESION_COLUMNS)].to_dict(),
            }
        )
    pd.DataFrame(breast_rows, columns=list(source.BREAST_COLUMNS)).to_csv(out / source.BREAST_FILE, index=False)
    pd.DataFrame(finding_rows, columns=list(source.FINDING_COLUMNS)).to_csv(out / source.FINDING_FILE, index=False)
    table = pd.DataFrame(expected)
    table["split"] = source.split_studies(table["patient_id"], table.pop("source_split"), seed=0, val_fraction=0.1)
    return table  # split: the adapter's defaults
