"""RSNA adapter on synthetic native-format data: equality with the generator's truth and every trap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from mvmlm.data import schema
from mvmlm.data.sources import SourceError, read_source
from mvmlm.data.sources import main as tables_main
from mvmlm.data.sources.rsna import TEST_COLUMNS, TRAIN_COLUMNS, TRAIN_FILE
from mvmlm.data.synthetic import main as synth_main
from mvmlm.data.synthetic.truth import JPEG2000_LOSSLESS

COMPARED = list(schema.COLUMNS)


@pytest.fixture(scope="module")
def rsna(synthetic_dataset) -> tuple[Path, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    root, expected = synthetic_dataset("rsna")
    return root, expected, read_source("rsna", str(root)), pd.read_csv(root / TRAIN_FILE)


def _by_image(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values("image_id", ignore_index=True)


def _train_csv(tmp_path: Path, rows: list[dict]) -> Path:
    """A minimal train.csv holding ``rows`` (other columns filled with ordinary values)."""
    base = dict(
        site_id=1,
        laterality="L",
        view="CC",
        age=60.0,
        cancer=0,
        biopsy=0,
        invasive=0,
        BIRADS=1.0,
        implant=0,
        density="B",
        machine_id=49,
        difficult_negative_case=False,
    )
    table = pd.DataFrame([{**base, **row} for row in rows], columns=list(TRAIN_COLUMNS))
    table.to_csv(tmp_path / TRAIN_FILE, index=False)
    return tmp_path


def test_adapter_reproduces_the_generator_truth(rsna):
    root, expected, table, _ = rsna
    pd.testing.assert_frame_equal(_by_image(table)[COMPARED], _by_image(expected)[COMPARED])
    assert all((root / p).is_file() for p in table["path"])


def test_native_files_use_rsna_ids_headers_and_types(rsna):
    root, _, table, train = rsna
    assert tuple(train.columns) == TRAIN_COLUMNS
    assert tuple(pd.read_csv(root / "test.csv").columns) == TEST_COLUMNS
    assert list(pd.read_csv(root / "sample_submission.csv").columns) == ["prediction_id", "cancer"]
    assert train["patient_id"].dtype.kind == "i" and train["image_id"].dtype.kind == "i" and train["image_id"].is_unique
    assert train["BIRADS"].dtype.kind == "f" and set(train["BIRADS"].dropna()) <= {0.0, 1.0, 2.0}
    assert table["path"].str.fullmatch(r"train_images/\d+/\d+\.dcm").all()


def test_birads_recall_codes_map_faithfully(rsna):
    _, _, table, train = rsna
    birads = table.set_index("image_id")["birads"]
    for code in (0.0, 1.0, 2.0):
        ids = train.loc[train["BIRADS"] == code, "image_id"].astype(str)
        assert len(ids) and (birads[ids] == int(code)).all()
    assert birads[train.loc[train["BIRADS"].isna(), "image_id"].astype(str)].isna().all()


def test_site_2_rows_have_no_density_and_only_recall_birads(rsna):
    _, _, table, train = rsna
    site2 = table[table["image_id"].isin(train.loc[train["site_id"] == 2, "image_id"].astype(str))]
    assert len(site2) and site2["density"].isna().all()
    assert set(site2["birads"].dropna()) <= {0}
    site1 = table[~table["image_id"].isin(site2["image_id"])]
    assert site1["density"].notna().all()


def test_cancer_is_breast_level_malignancy(rsna):
    _, _, table, train = rsna
    cancer = train.set_index(train["image_id"].astype(str))["cancer"]
    assert (table["malignant"].to_numpy() == cancer[table["image_id"]].to_numpy()).all() and cancer.sum() > 0
    assert set(table.loc[table["malignant"] == 1, "pathology"]) == {"malignant"}
    assert table.groupby(["patient_id", "laterality"])["malignant"].nunique().max() == 1


def test_extra_views_and_repeats_are_kept(rsna):
    _, _, table, _ = rsna
    assert set(table["view"]) - {"CC", "MLO"}  # AT / LM / ML / LMO
    assert table.groupby(["patient_id", "laterality", "view"]).size().max() >= 2


def test_unlabelled_test_patients_are_not_in_the_table(rsna):
    root, _, table, _ = rsna
    test = pd.read_csv(root / "test.csv")
    assert not set(test["patient_id"].astype(str)) & set(table["patient_id"])
    assert (test["prediction_id"] == test["patient_id"].astype(str) + "_" + test["laterality"]).all()


def test_patient_level_split_with_a_test_share(rsna):
    _, _, table, _ = rsna
    assert table.groupby("patient_id")["split"].nunique().max() == 1 and "test" in set(table["split"])


def test_files_include_j2k_and_sigmoid_with_several_windows(rsna):
    root, _, table, _ = rsna
    headers = [pydicom.dcmread(root / p, stop_before_pixels=True) for p in table["path"]]
    assert JPEG2000_LOSSLESS in {h.file_meta.TransferSyntaxUID for h in headers}
    sigmoid = [h for h in headers if h.get("VOILUTFunction") == "SIGMOID"]
    assert sigmoid and all(len(h.WindowCenter) == 3 for h in sigmoid)


def test_conflicting_birads_of_one_breast_take_the_recall_code(tmp_path):
    rows = [
        dict(patient_id=5, image_id=11, BIRADS=1.0),
        dict(patient_id=5, image_id=12, view="MLO", BIRADS=0.0),
        dict(patient_id=5, image_id=13, laterality="R", BIRADS=np.nan),
    ]
    root = _train_csv(tmp_path, rows)
    table = read_source("rsna", str(root)).set_index("image_id")
    assert list(table.loc[["11", "12"], "birads"]) == [0, 0] and pd.isna(table.loc["13", "birads"])
    assert table.loc["11", "path"] == "train_images/5/11.dcm" and pd.isna(table.loc["11", "pathology"])


def test_missing_file_or_column_names_both(tmp_path):
    with pytest.raises(SourceError, match="train.csv"):
        read_source("rsna", str(tmp_path))
    root = _train_csv(tmp_path, [dict(patient_id=5, image_id=11)])
    pd.read_csv(root / TRAIN_FILE).drop(columns="BIRADS").to_csv(root / TRAIN_FILE, index=False)
    with pytest.raises(SourceError, match=r"train\.csv.*BIRADS"):
        read_source("rsna", str(root))


@pytest.mark.parametrize(("column", "value"), [("BIRADS", 4.0), ("density", "E"), ("cancer", 2), ("laterality", "B")])
def test_values_outside_the_vocabulary_name_the_row(tmp_path, column, value):
    root = _train_csv(tmp_path, [dict(patient_id=5, image_id=11), dict(patient_id=5, image_id=12, **{column: value})])
    with pytest.raises(SourceError, match=rf"train\.csv row 3: column '{column}'"):
        read_source("rsna", str(root))


def test_synth_data_and_tables_commands(tmp_path):
    root, out = tmp_path / "rsna", tmp_path / "table.parquet"
    expected = synth_main(
        ["--format", "rsna", "--out", str(root), "--exams", "8", "--seed", "2", "height=64", "width=48"]
    )
    tables_main(["--source", "rsna", "--root", str(root), "--out", str(out)])
    pd.testing.assert_frame_equal(_by_image(schema.read_table(out))[COMPARED], _by_image(expected)[COMPARED])
