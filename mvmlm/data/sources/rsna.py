"""RSNA Screening Mammography Breast Cancer Detection (Kaggle 2022-23) -> canonical image table.

Native layout (``root``)::

    train.csv        site_id, patient_id, image_id, laterality, view, age, cancer, biopsy, invasive, BIRADS,
                     implant, density, machine_id, difficult_negative_case (one row per image)
    test.csv, sample_submission.csv, test_images/...   unlabelled competition test set (not read)
    train_images/<patient_id>/<image_id>.dcm

Mapping (documented choices):

- ``BIRADS`` is a float screening recall code per image: 0.0 = recalled for follow-up (BI-RADS 0, incomplete),
  1.0 = negative (BI-RADS 1), 2.0 = benign/normal (BI-RADS 2), NaN = not given (site 2 gives only 0 or NaN).
  It maps faithfully to canonical ``birads`` 0 / 1 / 2 / NA; it is NOT a finding-based 4/5 assessment. When the
  views of one breast disagree, the breast takes the most actionable code (0, then 2, then 1).
- ``cancer`` is breast-level -> ``malignant``; ``pathology`` is ``malignant`` for cancer, ``benign`` for a
  biopsied breast without cancer and NA when no biopsy was done (the breast was not worked up).
- ``density`` A-D; site 2 has none (NA). RSNA has no finding labels, descriptors or follow-up (NA).
- Every view code is kept (``AT``, ``LM``, ``ML``, ``LMO`` besides CC/MLO), and repeated images are kept.
- One exam per patient: ``exam_id`` = ``patient_id``. No source split: patient-level train / val / test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mvmlm.data.sources import SourceError, csv_line, read_native_table, register_source
from mvmlm.data.splits import source_less_split

__all__ = ["TRAIN_FILE", "TRAIN_COLUMNS", "TEST_COLUMNS", "read"]

TRAIN_FILE = "train.csv"
#: documented header orders (the writer uses them; reading goes by name)
TRAIN_COLUMNS = (
    "site_id",
    "patient_id",
    "image_id",
    "laterality",
    "view",
    "age",
    "cancer",
    "biopsy",
    "invasive",
    "BIRADS",
    "implant",
    "density",
    "machine_id",
    "difficult_negative_case",
)
TEST_COLUMNS = (
    "site_id",
    "patient_id",
    "image_id",
    "laterality",
    "view",
    "age",
    "implant",
    "machine_id",
    "prediction_id",
)
NEEDED = ("patient_id", "image_id", "laterality", "view", "age", "cancer", "biopsy", "BIRADS", "density")
TEXT = ("patient_id", "image_id", "laterality", "view", "density")  # read as text, so ids stay exact strings
#: BIRADS precedence when the views of a breast disagree (lower rank wins)
BIRADS_RANK = {0: 0, 2: 1, 1: 2}
DENSITIES = ("A", "B", "C", "D")


@register_source("rsna")
def read(root: str | Path, *, seed: int = 0, val_fraction: float = 0.1) -> pd.DataFrame:
    """Read the labelled RSNA training data under ``root`` into the canonical table."""
    root = Path(root)
    path = root / TRAIN_FILE
    train = read_native_table(
        path, NEEDED, what="RSNA train.csv", hint="download the Kaggle competition data", dtype=dict.fromkeys(TEXT, str)
    )
    _check_values(train, path)
    breast = [train["patient_id"], train["laterality"]]
    cancer = train["cancer"].astype(int).groupby(breast).transform("max")
    biopsy = train["biopsy"].fillna(0).astype(int).groupby(breast).transform("max")
    rank = train["BIRADS"].map(BIRADS_RANK).groupby(breast).transform("min")
    code = {r: c for c, r in BIRADS_RANK.items()}
    table = pd.DataFrame(
        {
            "dataset": "rsna",
            "patient_id": train["patient_id"],
            "exam_id": train["patient_id"],
            "image_id": train["image_id"],
            "path": "train_images/" + train["patient_id"] + "/" + train["image_id"] + ".dcm",
            "laterality": train["laterality"],
            "view": train["view"],
            "age": train["age"].groupby(train["patient_id"]).transform("first"),
            "birads": rank.map(code).astype("Int64"),
            "density": train["density"].groupby(breast).transform("first"),
            "malignant": cancer,
            "pathology": np.where(cancer == 1, "malignant", np.where(biopsy == 1, "benign", None)),
        }
    )
    table["split"] = source_less_split(table["patient_id"], seed=seed, val_fraction=val_fraction)
    return table


def _check_values(train: pd.DataFrame, path: Path) -> None:
    """Raise naming the first row (CSV line) whose value is outside the documented vocabulary."""
    checks = {
        "laterality": train["laterality"].isin(["L", "R"]),
        "cancer": train["cancer"].isin([0, 1]),
        "biopsy": train["biopsy"].isin([0, 1]) | train["biopsy"].isna(),
        "BIRADS": train["BIRADS"].isin(list(BIRADS_RANK)) | train["BIRADS"].isna(),
        "density": train["density"].isin(DENSITIES) | train["density"].isna(),
        "age": pd.to_numeric(train["age"], errors="coerce").notna() | train["age"].isna(),
    }
    for column, ok in checks.items():
        if not ok.all():
            raise SourceError(
                f"{path} row {csv_line(~ok)}: column {column!r} has {train.loc[~ok, column].iloc[0]!r}; "
                "see the RSNA data description for its values"
            )
