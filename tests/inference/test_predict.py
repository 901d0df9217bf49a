"""``mvmlm predict``: DICOM folders in (no table), the evaluation's predictions out; bad files skipped with their
reason; nothing predictable exits 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

import mvmlm
from mvmlm.cli import main as cli

EXAMS = 64


def _bundle_dir(finetune_run: Path) -> Path:
    (saved,) = (finetune_run / "models").iterdir()
    return saved


def test_predict_on_dicom_folders_equals_the_evaluation_on_the_cache(
    finetune_run, text_image_set, synthetic_dataset, tmp_path
):
    from downstream.common.tasks import DataConfig, load_breasts

    root, _ = synthetic_dataset("vindr", exams=EXAMS, seed=0)
    images = tmp_path / "new_site"
    shutil.copytree(root / "images", images)  # the DICOM files alone, no table
    out = tmp_path / "pred"
    assert cli(["predict", "--model", str(_bundle_dir(finetune_run)), "--input", str(images), "--out", str(out),
                "--workers", "2", "batch_size=5", "progress=false"]) == 0  # fmt: skip
    predicted = pd.read_parquet(out / "predictions.parquet")
    assert set(predicted["level"]) == {"breast"}

    expected = pd.read_parquet(finetune_run / "predictions.parquet")
    breasts = load_breasts(DataConfig(table=str(text_image_set(EXAMS, test_fraction=0.35).table)))
    breasts = breasts.set_index("breast_id").loc[expected["id"]]
    sop = {}
    for slot in ("CC", "MLO"):
        present = breasts[f"{slot}_present"]
        sop[slot] = [
            pydicom.dcmread(root / p, stop_before_pixels=True).SOPInstanceUID if ok else None
            for p, ok in zip(breasts[f"{slot}_path"], present, strict=True)
        ]
    key = predicted.set_index(predicted["CC_image_id"].fillna("") + "|" + predicted["MLO_image_id"].fillna(""))
    wanted = [f"{cc or ''}|{mlo or ''}" for cc, mlo in zip(sop["CC"], sop["MLO"], strict=True)]
    got = key.loc[wanted, "prob_mass_mass"].to_numpy()
    np.testing.assert_allclose(got, [s[0] for s in expected["scores"]], atol=1e-5)
    missing = key.loc[wanted, "missing_views"].to_numpy()
    assert ((missing != "") == ~breasts[["CC_present", "MLO_present"]].all(axis=1).to_numpy()).all()


def test_bad_files_are_skipped_with_their_reason_and_the_rest_predicted(finetune_run, synthetic_dataset, tmp_path):
    root, table = synthetic_dataset("vindr", exams=EXAMS, seed=0)
    folder = tmp_path / "mixed"
    folder.mkdir()
    exam = table[table["exam_id"] == table["exam_id"].iloc[0]]
    for path in exam["path"]:
        shutil.copy(root / path, folder / Path(path).name)
    (folder / "notes.txt").write_text("not an image")
    first = folder / Path(exam["path"].iloc[0]).name
    ds = pydicom.dcmread(first)
    ds.Modality = "CT"
    ds.save_as(folder / "ct.dcm")
    ds = pydicom.dcmread(first)
    del ds.ImageLaterality, ds.Laterality
    ds.save_as(folder / "noside.dcm")
    model = mvmlm.load_model(_bundle_dir(finetune_run))
    from mvmlm.inference.predict import predict_paths

    result = predict_paths(model, [str(folder)], workers=0)
    reasons = dict(zip(result.skipped["path"].map(lambda p: Path(p).name), result.skipped["reason"], strict=True))
    assert "not a DICOM file" in reasons["notes.txt"]
    assert "no laterality" in reasons["noside.dcm"]
    assert "second CC image" in reasons.get("ct.dcm", "") or "not a mammogram" in reasons.get("ct.dcm", "")
    assert len(result.predictions) == exam.groupby("laterality").ngroups


def test_nothing_predictable_exits_2_with_one_line(finetune_run, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("x")
    code = cli(["predict", "--model", str(_bundle_dir(finetune_run)), "--input", str(tmp_path / "in"),
                "--out", str(tmp_path / "out"), "workers=0"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: nothing could be predicted")
    assert "not a DICOM file" in (tmp_path / "out" / "skipped.csv").read_text()
