"""Synthetic exams in the RSNA Screening Mammography (Kaggle) layout.

``train.csv`` (documented column order, integer ids, float ``BIRADS``/``age``), ``train_images/<patient_id>/
<image_id>.dcm``, and an unlabelled ``test.csv`` / ``sample_submission.csv`` / ``test_images`` for one more
patient. Quirks planted: site 2 (machines 21/29/48) has no density and BIRADS only 0 or NaN; some site-1 breasts
have no BIRADS and some patients no age; a few breasts get an extra view (AT / LM / ML / LMO) or a repeated image;
SIGMOID files carry three window values. JPEG-LS files are written as JPEG Lossless SV1 (.70, RSNA's second
syntax) when python-gdcm is installed, else kept as JPEG-LS.

Truth BI-RADS -> RSNA recall code: 1 -> 1.0 (negative), 2 -> 2.0 (benign), 3-5 -> 0.0 (recalled). Biopsy is done
for cancers and for benign BI-RADS 3 breasts.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.uid import JPEGLosslessSV1, JPEGLSLossless, generate_uid

from mvmlm.data.sources.rsna import TEST_COLUMNS, TRAIN_COLUMNS
from mvmlm.data.splits import source_less_split
from mvmlm.data.synthetic import register_format
from mvmlm.data.synthetic.dicom_writer import write_mammogram_dicom
from mvmlm.data.synthetic.lesions import LESION_COLUMNS
from mvmlm.data.synthetic.phantom import render_native

__all__ = ["write"]

MACHINES = {1: (49, 93, 170, 190, 197, 210, 216), 2: (21, 29, 48)}
EXTRA_VIEWS = ("AT", "LM", "ML", "LMO")
P_SITE2, P_NO_BIRADS, P_NO_AGE, P_EXTRA, P_REPEAT = 0.45, 0.2, 0.04, 0.04, 0.04
JLL = JPEGLosslessSV1 if importlib.util.find_spec("gdcm") else JPEGLSLossless


def _recall_code(birads: int, site: int, rng: np.random.Generator) -> float:
    code = 1.0 if birads == 1 else 2.0 if birads == 2 else 0.0
    hidden = (site == 2 and code != 0.0) or (site == 1 and rng.random() < P_NO_BIRADS)
    return np.nan if hidden else code


def _ids(rng: np.random.Generator, n: int, low: int, high: int) -> list[int]:
    """``n`` distinct random integers in [low, high), in draw order."""
    drawn = rng.integers(low, high, 2 * n + 8)
    _, first = np.unique(drawn, return_index=True)
    return [int(v) for v in drawn[np.sort(first)][:n]]


def _images(truth: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Truth rows plus extra views / repeats (each a copy of a breast's first image with a new view or id)."""
    firsts = truth.groupby(["exam_id", "laterality"], sort=False).head(1)
    draw = rng.random((len(firsts), 2))
    if len(truth.exam_id.unique()) >= 8:  # every quirk present
        draw[0, 0] = draw[1, 1] = 0.0
    extra = firsts[draw[:, 0] < P_EXTRA].assign(view=lambda d: rng.choice(EXTRA_VIEWS, len(d)))
    repeat = firsts[draw[:, 1] < P_REPEAT]
    rows = pd.concat([truth, extra, repeat]).reset_index(drop=True)
    order = {exam: i for i, exam in enumerate(truth["exam_id"].unique())}
    return rows.sort_values("exam_id", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def _breasts(truth: pd.DataFrame, sites: pd.Series, rng: np.random.Generator) -> pd.DataFrame:
    """Breast-level RSNA labels: cancer, biopsy, invasive, BIRADS recall code, density, difficult negative."""
    breasts = truth.groupby(["exam_id", "laterality"], sort=False).first().reset_index()
    site = breasts["exam_id"].map(sites)
    benign = breasts["pathology"] == "benign"
    cancer = breasts["malignant"].astype(int)
    return pd.DataFrame(
        {
            "exam_id": breasts["exam_id"],
            "laterality": breasts["laterality"],
            "cancer": cancer,
            "biopsy": (cancer.astype(bool) | (benign & (breasts["birads"] == 3))).astype(int),
            "invasive": (cancer.astype(bool) & (rng.random(len(breasts)) < 0.7)).astype(int),
            "BIRADS": [_recall_code(b, s, rng) for b, s in zip(breasts["birads"], site, strict=True)],
            "density": breasts["density"].where(site == 1).astype(object),
            "difficult_negative_case": benign.to_numpy(),
        }
    )


def _write_images(rows: pd.DataFrame, out: Path, folder: str, *, height: int, width: int, seed: int) -> list[str]:
    """Render and write each row to ``<folder>/<patient_id>/<image_id>.dcm``; return the relative paths."""
    paths = []
    for index, row in rows.iterrows():
        top = (1 << int(row["bits_stored"])) - 1
        sigmoid = row["voi_function"] == "SIGMOID"
        key = ["rsna", str(seed), str(row["image_id"])]
        (out / folder / row["patient_id"]).mkdir(parents=True, exist_ok=True)
        path = write_mammogram_dicom(
            out / folder / row["patient_id"] / f"{row['image_id']}.dcm",
            render_native(row, height, width, seed=seed * 100_019 + index),
            laterality=row["laterality"],
            view=row["view"],
            patient_id=row["patient_id"],
            study_uid=generate_uid(entropy_srcs=["rsna", str(seed), row["patient_id"]]),
            series_uid=generate_uid(entropy_srcs=[*key, "series"]),
            sop_uid=generate_uid(entropy_srcs=key),
            photometric=row["photometric"],
            bits_stored=int(row["bits_stored"]),
            voi_function=row["voi_function"],
            window=([top / 2, top * 0.55, top * 0.45], [top + 1.0, top * 0.8, top * 0.6]) if sigmoid else None,
            transfer_syntax=JLL if row["transfer_syntax"] == JPEGLSLossless else row["transfer_syntax"],
            age=None if pd.isna(row["age"]) else row["age"],
        )
        paths.append(path.relative_to(out).as_posix())
    return paths


def _native(rows: pd.DataFrame, patients: dict, sites: dict, ages: dict, rng: np.random.Generator) -> pd.DataFrame:
    """Replace generic ids by RSNA integer ids (as strings) and add site, machine, implant and age."""
    native = rows.copy()
    native["site_id"] = native["exam_id"].map(sites)
    machine = {exam: rng.choice(MACHINES[site]) for exam, site in sites.items()}
    implant = {exam: int(rng.random() < 0.03) for exam in sites}
    native["machine_id"] = native["exam_id"].map(machine).astype(int)
    native["implant"] = native["exam_id"].map(implant)
    native["age"] = native["exam_id"].map(ages)
    native["patient_id"] = native["exam_id"].map(patients).astype(str)
    native["image_id"] = [str(i) for i in _ids(rng, len(native), 10**6, 2**31 - 1)]
    return native


@register_format("rsna")
def write(truth: pd.DataFrame, out: Path, *, height: int, width: int, seed: int) -> pd.DataFrame:
    """Write RSNA-style DICOMs, train.csv, test.csv and sample_submission.csv; return the expected table."""
    rng = np.random.default_rng(seed)
    exams = list(truth["exam_id"].unique())
    test_exam = "test-" + exams[0]
    patients = dict(zip([*exams, test_exam], _ids(rng, len(exams) + 1, 10_000, 65_535), strict=True))
    sites = {exam: 2 if rng.random() < P_SITE2 else 1 for exam in patients}
    truth_ages = [*truth.groupby("exam_id", sort=False)["age"].first(), 60.0]
    ages = {exam: age if rng.random() >= P_NO_AGE else np.nan for exam, age in zip(patients, truth_ages, strict=True)}
    breasts = _breasts(truth, pd.Series(sites), rng)
    train = _native(_images(truth, rng), patients, sites, ages, rng)
    train = train.drop(columns=["density"]).merge(breasts, on=["exam_id", "laterality"], how="left", sort=False)
    paths = _write_images(train, out, "train_images", height=height, width=width, seed=seed)
    train[list(TRAIN_COLUMNS)].to_csv(out / "train.csv", index=False)

    test = _native(truth[truth["exam_id"] == exams[0]].assign(exam_id=test_exam), patients, sites, ages, rng)
    _write_images(test, out, "test_images", height=height, width=width, seed=seed + 1)
    test["prediction_id"] = test["patient_id"] + "_" + test["laterality"]
    test[list(TEST_COLUMNS)].to_csv(out / "test.csv", index=False)
    submission = pd.DataFrame({"prediction_id": test["prediction_id"].unique(), "cancer": 0.0})
    submission.to_csv(out / "sample_submission.csv", index=False)

    pathology = np.where(train["cancer"] == 1, "malignant", np.where(train["biopsy"] == 1, "benign", None))
    expected = pd.DataFrame(
        {
            "dataset": "rsna",
            "patient_id": train["patient_id"],
            "exam_id": train["patient_id"],
            "image_id": train["image_id"],
            "path": paths,
            "laterality": train["laterality"],
            "view": train["view"],
            "age": train["age"],
            "birads": train["BIRADS"],
            "density": train["density"],
            "malignant": train["cancer"],
            "pathology": pathology,
            **{name: train[name] for name in LESION_COLUMNS},
        }
    )
    expected["split"] = source_less_split(expected["patient_id"], seed=0, val_fraction=0.1)  # the adapter's defaults
    return expected
