"""Risk models learn a planted hazard (and not shuffled features); the hazard head trains on the engine (its NaN
guard names exams); the command runs end to end on synthetic EMBED."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from downstream.risk.config import CoxnetConfig, HazardConfig, RiskConfig, RiskData, RiskModelsConfig
from downstream.risk.metrics import survival_arrays
from downstream.risk.models import AdditiveHazardHead, RiskSplit, fit_risk_model, masked_bce
from mvmlm.config import OptimConfig, TrainConfig
from mvmlm.metrics import harrell_c
from mvmlm.registry import UnknownNameError
from mvmlm.training import NonFiniteLossError

from .conftest import REPO

TINY = str(REPO / "configs/risk/tiny.yaml")
N_EXAMS = 400
# Measured (seed 0): coxnet C ~0.74, hazard head C ~0.72 on the planted features; ~0.48 on shuffled ones.
PLANTED_MIN_C, SHUFFLED_MAX_C = 0.65, 0.58
CONFIG = RiskConfig(
    data=RiskData(table="unused", batch_size=64),
    risk=RiskModelsConfig(coxnet=CoxnetConfig(n_alphas=10), hazard=HazardConfig(hidden=0)),
    optim=OptimConfig(lr=1e-2, weight_decay=1e-4, schedule="constant", grad_clip=0.0),
    train=TrainConfig(epochs=50, device="cpu", progress=False),
)


@pytest.fixture(scope="module")
def planted() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exam features carrying what the synthetic hazard depends on (density, benign lesion, cancer now) plus noise."""
    from mvmlm.data.synthetic.truth import DENSITIES, sample_exams

    rows = sample_exams(N_EXAMS, seed=0)
    exams = rows.groupby("exam_id", sort=True).agg(
        density=("density", "first"),
        ytc=("years_to_cancer", "first"),
        ytlf=("years_to_last_followup", "first"),
        benign=("pathology", lambda s: (s == "benign").any()),
        malignant=("malignant", "max"),
    )
    rng = np.random.default_rng(0)
    signal = np.c_[np.searchsorted(DENSITIES, exams.density.astype(str)), exams.benign, exams.malignant]
    features = np.c_[signal, np.zeros((N_EXAMS, 13))] + rng.normal(scale=0.5, size=(N_EXAMS, 16))
    return features, exams.ytc.to_numpy(float), exams.ytlf.to_numpy(float)


def _splits(features: np.ndarray, ytc: np.ndarray, ytlf: np.ndarray) -> list[RiskSplit]:
    bounds = [0, int(0.6 * N_EXAMS), int(0.75 * N_EXAMS), N_EXAMS]
    return [
        RiskSplit(features[a:b], ytc[a:b], ytlf[a:b], [str(i) for i in range(a, b)], [str(i) for i in range(a, b)])
        for a, b in zip(bounds, bounds[1:], strict=False)
    ]


def _test_c(name: str, features: np.ndarray, ytc: np.ndarray, ytlf: np.ndarray, workdir) -> float:
    train, val, test = _splits(features, ytc, ytlf)
    scores = fit_risk_model(name, train, val, CONFIG, workdir).predict(test.features)
    assert scores.probs.shape == (len(test), 5)
    assert (np.diff(scores.probs, axis=1) >= -1e-9).all()  # cumulative risk never decreases
    return harrell_c(*survival_arrays(*test.follow_up), scores.risk)


@pytest.mark.parametrize("name", ["coxnet", "hazard"])
def test_risk_model_learns_planted_hazard(name, planted, tmp_path):
    assert _test_c(name, *planted, tmp_path) > PLANTED_MIN_C


@pytest.mark.parametrize("name", ["coxnet", "hazard"])
def test_risk_model_on_shuffled_features_is_near_chance(name, planted, tmp_path):
    features, ytc, ytlf = planted
    shuffled = features[np.random.default_rng(1).permutation(N_EXAMS)]
    assert _test_c(name, shuffled, ytc, ytlf, tmp_path) < SHUFFLED_MAX_C


def test_hazard_head_trains_on_the_engine_keeping_the_lowest_validation_loss(planted, tmp_path):
    import json

    fit_risk_model("hazard", *_splits(*planted)[:2], CONFIG, tmp_path)
    evaluations = [json.loads(line) for line in (tmp_path / "val_log.jsonl").read_text().splitlines()]
    best = min(evaluations, key=lambda e: e["val/loss"])
    assert len(evaluations) == 50 and best["best"] and best["step"] < evaluations[-1]["step"]
    assert (tmp_path / "best" / "model.safetensors").is_file() and not (tmp_path / "checkpoints").exists()


def test_hazard_head_without_validation_labels_keeps_its_final_weights(planted, tmp_path):
    from dataclasses import replace

    features, ytc, ytlf = planted
    train, val, test = _splits(features, ytc, ytlf)
    unlabelled = replace(val, years_to_cancer=np.full(len(val), np.nan), years_to_last_followup=np.full(len(val), 0.5))
    short = replace(CONFIG, train=replace(CONFIG.train, epochs=5))
    kept = fit_risk_model("hazard", train, unlabelled, short, tmp_path / "unlabelled").predict(test.features)
    # the same training validated once, after its last step: its best are the final weights
    once = replace(short, train=replace(short.train, eval_every=10_000))
    final = fit_risk_model("hazard", train, val, once, tmp_path / "final").predict(test.features)
    assert not (tmp_path / "unlabelled" / "best").exists()
    np.testing.assert_array_equal(kept.probs, final.probs)


def test_hazard_head_names_the_exams_of_a_non_finite_loss(planted, tmp_path):
    features, ytc, ytlf = planted
    train, val, _ = _splits(features.copy(), ytc, ytlf)
    train.features[5, 0] = np.nan  # the scaler passes it through: only exam 5 gets a NaN risk
    with pytest.raises(NonFiniteLossError, match=r"Batch ids: .*\b5\b"):
        fit_risk_model("hazard", train, val, CONFIG, tmp_path)


def test_additive_hazard_head_is_monotone_and_masked_bce_ignores_unknown_years():
    torch.manual_seed(0)
    head = AdditiveHazardHead(8, max_followup=5, hidden=4, dropout=0.0)
    logits = head(torch.randn(6, 8))
    assert logits.shape == (6, 5) and (logits.diff(dim=1) >= 0).all()
    y = torch.zeros(1, 5)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0]])
    low, high = torch.full((1, 5), -5.0), torch.tensor([[-5.0, -5.0, 9.0, 9.0, 9.0]])
    assert masked_bce(high, y, mask) == pytest.approx(float(masked_bce(low, y, mask)))


def test_risk_model_needs_training_cancers(planted, tmp_path):
    features, _, ytlf = planted
    train, val, _ = _splits(features, np.full(N_EXAMS, np.nan), ytlf)
    with pytest.raises(ValueError, match="no cancer"):
        fit_risk_model("coxnet", train, val, CONFIG, tmp_path)
    with pytest.raises(UnknownNameError, match="unknown risk model 'mirai'; known: coxnet, hazard"):
        fit_risk_model("mirai", train, val, CONFIG, tmp_path)


@pytest.fixture(scope="module")
def embed_cache(synthetic_dataset, tmp_path_factory):
    from mvmlm.data.preprocess import PreprocessParams, cache_folder, preprocess_table

    root, table = synthetic_dataset("embed", exams=38, seed=0)  # 24 exams kept: the writer drops most cancers-now
    out = tmp_path_factory.mktemp("risk_cache")
    preprocess_table(table, root, out, PreprocessParams(48, 32), progress=False)
    return cache_folder(out, PreprocessParams(48, 32)) / "table.parquet"


def test_risk_command_writes_mirai_csv_table_and_plots(embed_cache, tmp_path):
    from downstream.risk.run import main

    out = tmp_path / "run"
    result = main(["--config", TINY, f"data.table={embed_cache}", f"out={out}", "data.val_split=train"])
    assert set(result["models"]) == {"coxnet", "hazard"}
    assert {"harrell_c", "uno_c", "td_auc_2y", "td_auc_5y", "mirai_auc_1y", "mirai_auc_5y"} <= set(
        result["models"]["coxnet"]
    )
    csv = pd.read_csv(out / "risk_hazard.csv")
    assert list(csv.columns) == ["patient_exam_id", *[f"{k}_year_risk" for k in range(1, 6)]]
    assert len(csv) == result["counts"]["test"]["exams"] and csv.patient_exam_id.str.contains("\t").all()
    # one row in the three-way, the discrimination and the calibration table each
    assert (out / "metrics.json").is_file() and (out / "results.md").read_text().count("| coxnet |") == 3
    assert {"cal_slope_5y_raw", "cal_slope_5y_calibrated", "oe_2y_calibrated", "ibs_raw"} <= set(
        result["models"]["hazard"]
    )
    deciles = pd.read_csv(out / "calibration_coxnet.csv")
    assert set(deciles.risk) == {"raw", "calibrated"} and set(deciles.year) == {1, 2, 3, 4, 5}
    assert (out / "plots" / "calibration_coxnet.png").is_file()
    assert (out / "plots" / "km_quartiles_hazard.png").is_file()
    assert (out / "hazard" / "val_log.jsonl").is_file()


def test_risk_command_compares_image_clinical_and_combined_and_saves_bundles_that_reproduce_it(embed_cache, tmp_path):
    import shutil

    import mvmlm
    from downstream.risk import COMMAND
    from downstream.risk.run import load_risk_splits, main

    args = ["--config", TINY, f"data.table={embed_cache}", "data.val_split=train", "models=[coxnet]"]
    args += ["risk.covariates=[age,density]", "risk.inputs=[image,clinical,combined]", "plots=false"]
    result = main([*args, f"out={tmp_path / 'run'}"])
    assert set(result["models"]) == {"coxnet", "coxnet_clinical", "coxnet_combined"}
    (difference,) = result["differences"].values()
    assert {"harrell_c", "uno_c", "td_auc_2y", "td_auc_5y"} == set(difference)
    for metric in difference:  # the paired difference is taken between the two models of the table
        found = {i: result["models"][f"coxnet_{i}"][metric]["value"] for i in ("combined", "clinical")}
        assert difference[metric]["value"] == pytest.approx(found["combined"] - found["clinical"])
    table = pd.read_csv(tmp_path / "run" / "comparison.csv")
    assert table.inputs.tolist() == ["image", "clinical", "combined", "combined - clinical"]
    assert table.harrell_c.tolist()[-1] == pytest.approx(difference["harrell_c"]["value"])
    for column in ("uno_c", "td_auc_5y", "cal_slope_5y_raw", "cal_intercept_5y_calibrated", "ibs_calibrated_high"):
        assert table[column][:3].notna().all(), column
    assert "coxnet: combined - clinical" in (tmp_path / "run" / "comparison.md").read_text()
    expected = pd.read_csv(tmp_path / "run" / "risk_coxnet_combined.csv")
    moved = shutil.copytree(tmp_path / "run" / "models" / "coxnet_combined", tmp_path / "moved")
    shutil.rmtree(tmp_path / "run")
    model = mvmlm.load_model(moved)
    assert [c["name"] for c in model.config["covariates"]["covariates"]] == ["age", "density"]
    test = load_risk_splits(COMMAND.parse([*args, f"out={tmp_path / 'again'}"]))["test"]
    assert test.exam_ids == expected.patient_exam_id.tolist()
    probs = model.predict_risk(test.features, test.clinical).probs
    np.testing.assert_allclose(probs, expected.drop(columns="patient_exam_id").to_numpy(), rtol=0, atol=1e-9)


def test_risk_command_rejects_unknown_model_and_table_without_follow_up(embed_cache, tmp_path):
    from downstream.risk.run import main
    from mvmlm.config import ConfigError
    from mvmlm.data import schema

    with pytest.raises(ConfigError, match="mirai"):
        main(["--config", TINY, f"data.table={embed_cache}", f"out={tmp_path}/a", "models=[mirai]"])
    with pytest.raises(ConfigError, match="risk.covariates': empty, but risk.inputs asks for clinical"):
        main(["--config", TINY, f"data.table={embed_cache}", f"out={tmp_path}/c", "risk.inputs=[image,combined]"])
    with pytest.raises(ConfigError, match="risk.calibration': 'beta'; known: isotonic, platt, none"):
        main(["--config", TINY, f"data.table={embed_cache}", f"out={tmp_path}/d", "risk.calibration=beta"])
    with pytest.raises(ConfigError, match="risk.covariates': bmi not a column of the table"):
        main(["--config", TINY, f"data.table={embed_cache}", f"out={tmp_path}/e", "risk.covariates=[bmi]"])
    table = schema.read_table(embed_cache).assign(years_to_cancer=pd.NA, years_to_last_followup=pd.NA)
    bare = embed_cache.parent / "bare.parquet"
    schema.write_table(table, bare)
    with pytest.raises(ValueError, match="no years_to_cancer / years_to_last_followup"):
        main(["--config", TINY, f"data.table={bare}", f"out={tmp_path}/b"])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("risk.hazard.lr=0.1", "optim.lr"),
        ("risk.hazard.epochs=3", "train.epochs"),
        ("risk.hazard.seed=1", "train.seed"),
    ],
)
def test_old_hazard_keys_name_their_new_place(old, new):
    from downstream.risk import COMMAND
    from mvmlm.config import ConfigError

    with pytest.raises(ConfigError, match=new.replace(".", r"\.")) as error:
        COMMAND.parse(["--config", TINY, "data.table=t.parquet", old])
    assert "\n" not in str(error.value)
