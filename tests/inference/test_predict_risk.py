"""``mvmlm predict`` with a moved risk bundle on DICOM files: one ``level=exam`` row per exam with the calibrated
1..5-year risks the risk command wrote for the same images (to 1e-5), the covariates used and the model version;
covariates from PatientAge and a ``--covariates`` CSV; an exam missing a covariate is refused with its reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from mvmlm.cli import main as cli

from .exam_uids import study_uids

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs/risk/tiny.yaml")
EXAMS = 24
YEARS = [f"{k}_year_risk" for k in range(1, 6)]


@pytest.fixture(scope="module")
def risk_run(synthetic_dataset, tmp_path_factory) -> Path:
    """coxnet and hazard on image, clinical (age, density) and combined inputs, on a 48x32 synthetic EMBED cache.

    The encoder is the tiny random ConvNeXt: the tiny random ResNet has near-constant feature channels, whose float32
    rounding (which depends on how many images torch convolves at once: 6e-8) its overfit coxnet magnified to
    1.4e-5 in the calibrated risks; with the ConvNeXt the DICOM path agrees to 1e-14."""
    from downstream.risk.run import main as risk
    from mvmlm.data.preprocess import PreprocessParams, cache_folder, preprocess_table

    root, table = synthetic_dataset("embed", exams=EXAMS, seed=0)
    cache = tmp_path_factory.mktemp("risk_predict_cache")
    preprocess_table(table, root, cache, PreprocessParams(48, 32), progress=False)
    out = tmp_path_factory.mktemp("risk_predict") / "run"
    risk(
        [
            "--config", TINY, f"data.table={cache_folder(cache, PreprocessParams(48, 32)) / 'table.parquet'}",
            f"out={out}", "data.val_split=train", "risk.covariates=[age,density]",
            "risk.inputs=[image,clinical,combined]", "plots=false", "bootstrap=0", "encoder.name=timm:test_convnext",
        ]
    )  # fmt: skip
    return out


def _covariates_csv(table: pd.DataFrame, uids: dict[str, str], path: Path, exams: list[str] | None = None) -> Path:
    """The table's exam-level age and density keyed by StudyInstanceUID (``exams``: only those)."""
    found = table.groupby("exam_id")[["age", "density"]].first().reset_index()
    if exams is not None:
        found = found[found.exam_id.isin(exams)]
    found.assign(exam_id=found.exam_id.map(uids)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def site(risk_run, synthetic_dataset, tmp_path_factory):
    """The DICOM files of the set alone (no tables), its covariates CSV and exam id -> StudyInstanceUID."""
    root, table = synthetic_dataset("embed", exams=EXAMS, seed=0)
    folder = tmp_path_factory.mktemp("new_site")
    images = Path(shutil.copytree(root / "images", folder / "images"))
    uids = study_uids(root, table)
    return images, _covariates_csv(table, uids, folder / "covariates.csv"), uids, table


def _predict(model: Path, images: Path, out: Path, *extra: str) -> int:
    """The exit code of ``mvmlm predict`` (in this process, no decoding workers)."""
    return cli(["predict", "--model", str(model), "--input", str(images), "--out", str(out), "--workers", "0",
                "progress=false", *extra])  # fmt: skip


def _expected(run: Path, model: str, uids: dict[str, str]) -> pd.DataFrame:
    """The run's calibrated test-split risks of ``model``, indexed by StudyInstanceUID."""
    expected = pd.read_csv(run / f"risk_{model}.csv")
    exam = expected.pop("patient_exam_id").str.split("\t").str[1]
    return expected.set_index(exam.map(uids).to_numpy())


@pytest.mark.parametrize("model", ["coxnet_combined", "hazard"])
def test_a_moved_risk_bundle_predicts_the_runs_risks_from_dicom_files(model, risk_run, site, tmp_path):
    images, covariates, uids, _ = site
    bundle = Path(shutil.copytree(risk_run / "models" / model, tmp_path / "moved"))
    out = tmp_path / "pred"
    assert _predict(bundle, images, out, "--covariates", str(covariates), "--format", "mirai", "batch_size=3") == 0
    predicted = pd.read_parquet(out / "predictions.parquet")
    assert set(predicted["level"]) == {"exam"} and predicted["exam_id"].is_unique
    expected = _expected(risk_run, model, uids)
    assert len(expected) >= 3 and set(expected.index) <= set(predicted["exam_id"])
    rows = predicted.set_index("exam_id").loc[expected.index]
    np.testing.assert_allclose(rows[YEARS].to_numpy(), expected[YEARS].to_numpy(), rtol=0, atol=1e-5)
    assert rows["model_version"].str.fullmatch(rf"risk-{model.split('_')[0]}@[0-9a-f]{{12}}").all()
    if model == "coxnet_combined":  # the covariates used, from the CSV
        assert {"covariate_age", "covariate_density"} <= set(rows.columns) and rows["covariate_density"].notna().all()
    mirai = pd.read_csv(out / "predictions_mirai.csv")
    assert list(mirai.columns) == ["patient_exam_id", *YEARS] and len(mirai) == len(predicted)
    assert mirai["patient_exam_id"].str.contains("\t").all()


def test_a_risk_bundle_refuses_the_exams_missing_a_covariate_and_reads_age_from_the_dicom_header(
    risk_run, site, tmp_path
):
    images, _, uids, table = site
    given = sorted(uids)[: len(uids) // 2]  # density for half of the exams only; age from PatientAge
    csv = table.groupby("exam_id")["density"].first().loc[given].reset_index()
    csv.assign(exam_id=csv.exam_id.map(uids)).to_csv(tmp_path / "density.csv", index=False)
    out = tmp_path / "pred"
    clinical = risk_run / "models" / "coxnet_clinical"
    assert _predict(clinical, images, out, "--covariates", str(tmp_path / "density.csv")) == 0
    predicted = pd.read_csv(out / "predictions.csv", dtype={"exam_id": str})
    assert set(predicted["exam_id"]) == {uids[e] for e in given}
    header_age = {
        pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID: float(
            pydicom.dcmread(p, stop_before_pixels=True).PatientAge[:3]
        )
        for p in images.rglob("*.dcm")
    }
    assert predicted["covariate_age"].tolist() == [header_age[e] for e in predicted["exam_id"]]
    skipped = pd.read_csv(out / "skipped.csv")
    refused = skipped[skipped.reason.str.contains("covariate 'density' missing")]
    assert len(refused) >= 2 * (len(uids) - len(given))  # every used image of each refused exam
    # no covariate at all for density: nothing can be predicted -> exit 2 with one line
    assert _predict(clinical, images, tmp_path / "none") == 2


def test_an_unknown_format_is_refused_and_only_risk_bundles_write_mirai(risk_run, site, tmp_path):
    from downstream.risk.bundle import RiskBundle
    from mvmlm.bundle import Bundle

    assert "mirai" in RiskBundle.formats and "mirai" not in Bundle.formats
    images, *_ = site
    assert _predict(risk_run / "models" / "hazard", images, tmp_path, "--format", "csv") == 2
