"""``mvmlm predict`` with a moved four-view bundle on DICOM files: the run's ``predictions_<split>.csv`` per breast
and the view attention per exam (``level=exam`` rows), to 1e-5."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mvmlm.cli import main as cli

from .exam_uids import study_uids

REPO = Path(__file__).resolve().parents[2]
EXAMS = 64
SPLITS = ("val", "test")


@pytest.fixture(scope="module")
def multiview_run(text_image_set, tmp_path_factory) -> Path:
    """A one-epoch four-view classifier on the 64x48 synthetic VinDr cache (its val and test splits scored)."""
    from downstream.multiview.run import main as multiview

    table = text_image_set(EXAMS, test_fraction=0.35).table
    out = tmp_path_factory.mktemp("multiview") / "run"
    multiview(
        [
            "--config", str(REPO / "configs/multiview/tiny.yaml"), f"data.table={table}", f"out={out}",
            "data.label_from=birads_4_5", "data.image_size=[64,48]", "train.epochs=1", "eval.bootstrap=0",
            "eval.plots=false", f"eval.splits={list(SPLITS)}", "optim.lr=2e-2",  # a high rate: scores spread
        ]
    )  # fmt: skip
    return out


def test_a_moved_multiview_bundle_predicts_the_runs_scores_on_dicom_files(multiview_run, synthetic_dataset, tmp_path):
    from downstream.multiview.data import class_names
    from downstream.multiview.train import load_classifier
    from mvmlm.inference.predict import _slug

    bundle = Path(shutil.copytree(multiview_run / "best", tmp_path / "moved"))
    root, table = synthetic_dataset("vindr", exams=EXAMS, seed=0)
    images = Path(shutil.copytree(root / "images", tmp_path / "new_site"))  # the DICOM files alone, no table
    out = tmp_path / "pred"
    assert cli(["predict", "--model", str(bundle), "--input", str(images), "--out", str(out),
                "--workers", "2", "batch_size=3", "progress=false"]) == 0  # fmt: skip
    predicted = pd.read_parquet(out / "predictions.parquet")
    assert set(predicted["level"]) == {"exam", "breast"}

    expected = pd.concat([pd.read_csv(multiview_run / f"predictions_{s}.csv") for s in SPLITS], ignore_index=True)
    expected["exam_id"] = expected["exam_id"].astype(str).map(study_uids(root, table))
    assert expected["exam_id"].notna().all() and len(expected) > 10

    exams = predicted[predicted["level"] == "exam"].set_index("exam_id").loc[expected["exam_id"]]
    views = [c.removeprefix("attention_") for c in expected.columns if c.startswith("attention_")]
    np.testing.assert_allclose(
        exams[[f"attention_{v}" for v in views]].to_numpy(), expected[[f"attention_{v}" for v in views]], atol=1e-5
    )
    complete = (expected["pattern"] == "complete").to_numpy()
    assert ((exams["missing_views"] == "").to_numpy() == complete).all() and not complete.all()

    breasts = predicted[predicted["level"] == "breast"].set_index(["exam_id", "laterality"])
    cfg = load_classifier(bundle)[1]
    compared = 0
    for side in ("L", "R"):
        keys = [(exam, side) for exam in expected["exam_id"]]
        imaged = np.array([key in breasts.index for key in keys])  # a breast without images has no row
        here, rows = expected[imaged], breasts.loc[[k for k, i in zip(keys, imaged, strict=True) if i]]
        for task, classes in class_names(cfg.task).items():
            for k, name in enumerate(classes):
                got = rows[f"prob_{task}_{_slug(name)}"].to_numpy()
                np.testing.assert_allclose(got, here[f"{task}_{side}_p{k}"].to_numpy(), atol=1e-5)
                compared += len(got)
    assert compared > 100
