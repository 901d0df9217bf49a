"""A co-attention run saves a bundle per fusion; ``mvmlm predict`` on it gives the run's test probabilities (from the
cache table, and from DICOM files with age from PatientAge and density from ``--covariates``); a breast without its
metadata is not predicted, and says why."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

import mvmlm
from mvmlm.cli import main as cli

from ..downstream import test_coattention
from ..downstream.conftest import REPO

embed_cache, tiny_bert = test_coattention.embed_cache, test_coattention.tiny_bert  # the co-attention tests' fixtures

TINY = str(REPO / "configs/coattention/tiny.yaml")


@pytest.fixture(scope="module")
def embed_set(synthetic_dataset, embed_cache) -> tuple[Path, pd.DataFrame, Path]:
    """The synthetic EMBED set of the co-attention tests: DICOM root, canonical table, 32x32 cache table."""
    root, table = synthetic_dataset("embed", exams=test_coattention.EMBED_EXAMS, seed=0)
    return root, table, embed_cache


@pytest.fixture(scope="module")
def coattention_run(embed_cache, tiny_bert, tmp_path_factory) -> Path:
    """A one-epoch tiny co-attention run (fusion coattention) with the tiny BERT of the metadata words."""
    from downstream.coattention.run import main

    work = tmp_path_factory.mktemp("coatt_predict")
    main(["--config", TINY, f"data.table={embed_cache}", f"text.model={tiny_bert}", f"text.cache={work}/text",
          f"out={work}/run", "fusions=[coattention]", "train.epochs=1"])  # fmt: skip
    return work / "run"


def _predict(bundle: Path, inputs: str, out: Path, *extra: str) -> int:
    return cli(["predict", "--model", str(bundle), "--input", inputs, "--out", str(out), "workers=0",
                "progress=false", *extra])  # fmt: skip


def test_predict_on_the_cache_equals_the_runs_test_probabilities(coattention_run, embed_set, tmp_path):
    from mvmlm.data.ids import breast_id

    bundle = Path(shutil.copytree(coattention_run / "models" / "coattention", tmp_path / "moved"))
    assert mvmlm.load_model(bundle).kind == "coattention"
    assert _predict(bundle, str(embed_set[2]), tmp_path / "pred") == 0
    predicted = pd.read_parquet(tmp_path / "pred" / "predictions.parquet")
    predicted.index = [breast_id(*r) for r in predicted[["dataset", "patient_id", "exam_id", "laterality"]].values]
    expected = pd.read_parquet(coattention_run / "predictions.parquet")
    assert len(expected) > 5
    got = predicted.loc[expected["id"], "prob_malignancy_malignancy"].to_numpy()
    np.testing.assert_allclose(got, [s[0] for s in expected["scores"]], atol=1e-5)
    assert np.ptp(got) > 1e-4  # the breasts differ


def test_the_model_card_holds_the_runs_test_auc_and_counts(coattention_run):
    from mvmlm.bundle import format_ci

    card = (coattention_run / "models" / "coattention" / "README.md").read_text()
    row = pd.read_csv(coattention_run / "results.csv").iloc[0]
    assert f"| test AUC | {format_ci(row['auc'], row['auc_low'], row['auc_high'])} |" in card
    assert f"| test | {len(pd.read_parquet(coattention_run / 'predictions.parquet'))} |" in card


def test_predict_on_dicom_reads_age_from_the_header_and_density_from_covariates(
    coattention_run, embed_set, tmp_path, capsys
):
    root, table, cache = embed_set
    folder = tmp_path / "site"
    for path in table["path"]:  # the DICOM files alone
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / path, folder / path)
    bundle = coattention_run / "models" / "coattention"

    assert _predict(bundle, str(folder), tmp_path / "none") == 2  # no density anywhere: nothing predicted
    assert "nothing could be predicted" in capsys.readouterr().err
    reasons = pd.read_csv(tmp_path / "none" / "skipped.csv")["reason"]
    assert reasons.str.contains("breast not predicted: no density").all()

    sop = {p: pydicom.dcmread(root / p, stop_before_pixels=True).SOPInstanceUID for p in table["path"]}
    covariates = tmp_path / "covariates.csv"
    pd.DataFrame({"image_id": table["path"].map(sop), "density": table["density"]}).to_csv(covariates, index=False)
    assert _predict(bundle, str(folder), tmp_path / "dicom", "--covariates", str(covariates)) == 0
    assert _predict(bundle, str(cache), tmp_path / "cache") == 0
    from_dicom = pd.read_parquet(tmp_path / "dicom" / "predictions.parquet")
    from_cache = pd.read_parquet(tmp_path / "cache" / "predictions.parquet")
    to_sop = dict(zip(table["image_id"], table["path"].map(sop), strict=True))
    from_cache["key"] = from_cache["CC_image_id"].map(to_sop).fillna("") + from_cache["MLO_image_id"].map(to_sop)
    from_dicom["key"] = from_dicom["CC_image_id"].fillna("") + from_dicom["MLO_image_id"].fillna("")
    both = from_cache.merge(from_dicom, on="key", suffixes=("_cache", "_dicom"))
    assert len(both) >= 0.8 * len(from_dicom) > 10
    np.testing.assert_allclose(both["prob_malignancy_malignancy_dicom"], both["prob_malignancy_malignancy_cache"],
                               atol=1e-5)  # fmt: skip
