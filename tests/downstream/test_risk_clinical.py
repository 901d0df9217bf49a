"""Clinical covariates beside the image: encoded (one-hot, imputed with a missing indicator) on training statistics,
the combined model beats image-only and clinical-only, shuffled embeddings do not beat clinical-only, and a moved
risk bundle reproduces the calibrated risks of its run."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import mvmlm
from downstream.risk.covariates import CovariateEncoder, exam_covariates
from downstream.risk.metrics import survival_arrays
from downstream.risk.models import RiskSplit
from downstream.risk.run import fit_predictor
from mvmlm.config import ConfigError
from mvmlm.metrics import harrell_c

from .test_risk import CONFIG

N_EXAMS = 800
# Measured (seed 0, coxnet, test C): image 0.750, clinical (age, density) 0.573, combined 0.761; with shuffled
# embeddings combined 0.567.
COMBINED_OVER_IMAGE, COMBINED_OVER_CLINICAL = 0.005, 0.1


def synthetic_exams(n: int) -> pd.DataFrame:
    """``n`` synthetic EMBED-format exams (seed 0): the hazard depends on density (clinical) and lesions (the image)."""
    from mvmlm.data.synthetic.truth import sample_exams

    rows = sample_exams(n, seed=0)
    found = rows.groupby("exam_id", sort=True).agg(
        age=("age", "first"),
        density=("density", "first"),
        ytc=("years_to_cancer", "first"),
        ytlf=("years_to_last_followup", "first"),
        benign=("pathology", lambda s: (s == "benign").any()),
        malignant=("malignant", "max"),
    )
    return found.astype({"ytc": float, "ytlf": float}).reset_index(drop=True)


@pytest.fixture(scope="module")
def exams() -> pd.DataFrame:
    return synthetic_exams(N_EXAMS)


def splits_of(
    exams: pd.DataFrame, image: np.ndarray, fractions: tuple[float, float] = (0.6, 0.75)
) -> dict[str, RiskSplit]:
    """Train / val / test by position: the first ``fractions[0]`` of the exams, up to ``fractions[1]``, the rest."""
    n = len(exams)
    bounds = [0, int(fractions[0] * n), int(fractions[1] * n), n]
    clinical = exams[["age", "density"]]
    return {
        role: RiskSplit(
            image[a:b],
            exams.ytc.to_numpy()[a:b],
            exams.ytlf.to_numpy()[a:b],
            [str(i) for i in range(a, b)],
            [str(i) for i in range(a, b)],
            clinical.iloc[a:b].reset_index(drop=True),
        )
        for role, a, b in zip(("train", "val", "test"), bounds, bounds[1:], strict=False)
    }


def image_embeddings(exams: pd.DataFrame) -> np.ndarray:
    """Embeddings that see the lesions (not the density), plus noise."""
    rng = np.random.default_rng(0)
    signal = np.c_[exams.benign, exams.malignant, np.zeros((len(exams), 14))]
    return signal + rng.normal(scale=0.5, size=(len(exams), 16))


def _test_c(splits: dict[str, RiskSplit], inputs: str, workdir) -> float:
    predictor = fit_predictor("coxnet", inputs, splits, CONFIG, workdir)
    raw, calibrated = predictor.predict(splits["test"].features, splits["test"].clinical)
    assert (np.diff(calibrated.probs, axis=1) >= 0).all()
    return harrell_c(*survival_arrays(*splits["test"].follow_up), raw.risk)


def test_combined_model_beats_image_only_and_clinical_only(exams, tmp_path):
    splits = splits_of(exams, image_embeddings(exams))
    c = {inputs: _test_c(splits, inputs, tmp_path / inputs) for inputs in ("image", "clinical", "combined")}
    assert c["combined"] > c["image"] + COMBINED_OVER_IMAGE
    assert c["combined"] > c["clinical"] + COMBINED_OVER_CLINICAL


def test_shuffled_embeddings_beside_covariates_do_not_beat_clinical_only(exams, tmp_path):
    image = image_embeddings(exams)[np.random.default_rng(1).permutation(N_EXAMS)]
    splits = splits_of(exams, image)
    assert _test_c(splits, "combined", tmp_path / "a") <= _test_c(splits, "clinical", tmp_path / "b")


def test_covariates_are_one_hot_imputed_with_a_missing_indicator_on_training_statistics():
    train = pd.DataFrame({"age": [40.0, None, 60.0], "density": ["A", "C", None]})
    encoder = CovariateEncoder.fit(train)
    assert encoder.columns() == ["age", "age_missing", "density=A", "density=C", "density_missing"]
    again = CovariateEncoder.from_dict(encoder.to_dict())
    test = pd.DataFrame({"age": [None, 70.0], "density": ["C", "B"]})  # B: not seen in training
    np.testing.assert_array_equal(again.transform(test), [[50.0, 1, 0, 1, 0], [70.0, 0, 0, 0, 0]])


def test_a_covariate_absent_from_the_table_is_a_config_error_naming_it():
    table = pd.DataFrame({"dataset": ["d"], "patient_id": ["p"], "exam_id": ["e"], "age": [50.0]})
    with pytest.raises(ConfigError, match="risk.covariates': bmi not a column of the table t.parquet"):
        exam_covariates(table, table, ["age", "bmi"], "t.parquet")
    found = exam_covariates(table, table, ["age"])
    assert found["age"].tolist() == [50.0]


@pytest.mark.parametrize(("name", "inputs"), [("coxnet", "combined"), ("hazard", "image")])
def test_a_moved_risk_bundle_reproduces_the_calibrated_risks(name, inputs, exams, tmp_path):
    from downstream.risk.bundle import save_risk_bundle
    from mvmlm.config import config_to_dict
    from mvmlm.data.preprocess import PreprocessParams

    splits = splits_of(exams, image_embeddings(exams))
    short = replace(CONFIG, train=replace(CONFIG.train, epochs=3))
    predictor = fit_predictor(name, inputs, splits, short, tmp_path / "work")
    test = splits["test"]
    _, expected = predictor.predict(test.features, test.clinical)
    preprocessing = config_to_dict(PreprocessParams(48, 32))
    save_risk_bundle(tmp_path / "saved", name, predictor, {"pool": "mean"}, preprocessing)
    moved = shutil.copytree(tmp_path / "saved", tmp_path / "moved")
    shutil.rmtree(tmp_path / "saved")
    model = mvmlm.load_model(moved)
    assert model.kind == f"risk-{name}" and model.heads["risk"][-1] == "5_year_risk"
    assert not list(moved.glob("*.pkl")) and model.config["model"]["inputs"] == inputs
    scores = model.predict_risk(test.features, test.clinical)
    np.testing.assert_allclose(scores.probs, expected.probs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores.risk, expected.risk, rtol=0, atol=1e-12)
