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
    assert "duplicate CC view" in reasons.get("ct.dcm", "") or "not a mammogram" in reasons.get("ct.dcm", "")
    assert len(result.predictions) == exam.groupby("laterality").ngroups


def test_nothing_predictable_exits_2_with_one_line(finetune_run, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("x")
    code = cli(["predict", "--model", str(_bundle_dir(finetune_run)), "--input", str(tmp_path / "in"),
                "--out", str(tmp_path / "out"), "workers=0"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: nothing could be predicted")
    assert "not a DICOM file" in (tmp_path / "out" / "skipped.csv").read_text()


def test_predict_on_another_formats_dicom_files_equals_the_model_on_their_cache(
    finetune_run, synthetic_dataset, tmp_path
):
    """RSNA-layout DICOM files (JPEG lossless, SIGMOID VOI, extra views, repeats), tables deleted: the bundle's
    probabilities on them equal its probabilities on the same images preprocessed by `mvmlm preprocess`."""
    import torch

    from mvmlm.data.exams import BreastDataset, build_breasts
    from mvmlm.data.preprocess import preprocess_table

    root, table = synthetic_dataset("rsna", exams=16, seed=1)
    images = tmp_path / "rsna_site"
    for path in table["path"]:  # the DICOM files of the (labelled) table alone: no csv tables, no truth
        (images / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / path, images / path)
    model = mvmlm.load_model(shutil.copytree(_bundle_dir(finetune_run), tmp_path / "moved"))
    out = tmp_path / "pred"
    assert cli(["predict", "--model", str(tmp_path / "moved"), "--input", str(images), "--out", str(out),
                "--workers", "2", "batch_size=4", "progress=false"]) == 0  # fmt: skip
    predicted = pd.read_parquet(out / "predictions.parquet").set_index(["exam_id", "laterality"])
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["reason"].str.contains("not used|duplicate", regex=True).all() and len(skipped)

    cached = preprocess_table(table, root, tmp_path / "cache", model.preprocessing, progress=False)
    unused = {Path(p).relative_to(images).as_posix() for p in skipped["path"]}  # the slot rules of DICOM and table
    breasts = build_breasts(cached[~cached["path"].isin(unused)])  # differ (SOP UID vs RSNA id): same images here
    items = list(BreastDataset(breasts, labels=()))
    with torch.no_grad():
        probs = model.predict_views(torch.stack([i["images"] for i in items]), torch.stack([i["mask"] for i in items]))
    study = {
        exam: pydicom.dcmread(root / path, stop_before_pixels=True).StudyInstanceUID
        for exam, path in table.groupby("exam_id")["path"].first().items()
    }
    keys = list(zip(breasts["exam_id"].map(study), breasts["laterality"], strict=True))
    assert len(predicted) == len(keys) == len(set(keys)) > 20
    np.testing.assert_allclose(predicted.loc[keys, "prob_mass_mass"], probs["mass"][:, 1].numpy(), atol=1e-5)
    assert np.ptp(probs["mass"][:, 1].numpy()) > 1e-3  # the breasts' scores differ


def test_the_forward_leaves_a_core_to_each_decoding_worker_and_restores_torch_threads(monkeypatch):
    import os

    import torch

    from mvmlm.inference.views import forward_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3}, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with forward_threads(torch.device("cpu"), 3) as threads:
            assert threads == torch.get_num_threads() == 1
        with forward_threads(torch.device("cpu"), 1) as threads:
            assert threads == 3
        with forward_threads(torch.device("cpu"), 0) as threads:
            assert threads == 4
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)
