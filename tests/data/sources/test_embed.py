"""EMBED Open Data adapter on synthetic native-format data: equality with the generator's truth and every trap."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from mvmlm.data import schema
from mvmlm.data.dicom import read_mammogram
from mvmlm.data.sources import SourceError, read_source
from mvmlm.data.sources.embed import CLINICAL, METADATA, follow_up
from mvmlm.data.synthetic.embed import CANCER_AT_EXAM_EVERY, _screening_cohort
from mvmlm.data.synthetic.truth import sample_exams

COMPARED = [*schema.COLUMNS, "screening"]


@pytest.fixture(scope="module")
def embed(synthetic_dataset) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    root, expected = synthetic_dataset("embed")
    return root, expected, read_source("embed", str(root))


def _by_image(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values("image_id", ignore_index=True)[COMPARED]


def _raw(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / name, dtype=str, keep_default_na=False, na_values=[""])


def _copy(root: Path, tmp_path: Path) -> Path:
    shutil.copytree(root, tmp_path / "embed")
    return tmp_path / "embed"


def test_adapter_reproduces_the_generator_truth(embed):
    _, expected, table = embed
    pd.testing.assert_frame_equal(_by_image(table), _by_image(expected))
    assert table["years_to_cancer"].notna().any() and table["years_to_cancer"].isna().any()
    assert (table["screening"]).any() and (~table["screening"]).any()


def test_the_written_cohort_is_screening_like_one_in_ten_cancers_at_the_exam_kept():
    truth = sample_exams(300, seed=3)
    cancer_now = truth.groupby("exam_id")["malignant"].max().eq(1)
    kept = set(_screening_cohort(truth))
    assert set(cancer_now.index[~cancer_now]) <= kept  # every exam without a cancer found at it
    assert len(kept & set(cancer_now.index[cancer_now])) == -(-cancer_now.sum() // CANCER_AT_EXAM_EVERY)
    assert cancer_now.mean() > 0.25 and cancer_now[list(kept)].mean() < 0.1


def test_cview_and_spot_images_are_dropped(embed):
    root, _, table = embed
    metadata = _raw(root, METADATA)
    dropped = metadata[(metadata["FinalImageType"] == "cview") | (metadata["spot_mag"] == "1")]
    assert (metadata["FinalImageType"] == "cview").any() and (metadata["spot_mag"] == "1").any()
    assert not set(dropped["anon_dicom_path"].str[2:]) & set(table["path"])
    assert len(table) == len(metadata) - len(dropped)


def test_sop_uid_of_every_file_matches_its_path(embed):
    root, _, table = embed
    for path, image_id in zip(table["path"], table["image_id"], strict=True):
        assert pydicom.dcmread(root / path, stop_before_pixels=True).SOPInstanceUID == image_id == Path(path).stem


def test_side_b_and_nan_rows_label_both_breasts(embed):
    root, _, table = embed
    clinical = _raw(root, CLINICAL)
    for side in ("B", None):
        rows = clinical[clinical["side"] == side] if side else clinical[clinical["side"].isna()]
        imaged = table[table["exam_id"].isin(rows["acc_anon"])]
        assert len(imaged) >= 1 and set(imaged["laterality"]) == {"L", "R"}
        assert (imaged["pathology"] == "normal").all() and (imaged["birads"] == 1).all()
    assert "African American  or Black" in set(clinical["ETHNICITY_DESC"])


def test_a_one_sided_finding_does_not_label_the_other_breast(embed, tmp_path):
    root = _copy(embed[0], tmp_path)
    clinical = _raw(root, CLINICAL)
    cancer = pd.to_numeric(clinical["path_severity"]) == 0
    lesion = clinical[cancer & clinical["acc_anon"].isin(embed[2]["exam_id"])].iloc[0]
    exam = clinical["acc_anon"] == lesion["acc_anon"]
    clinical[~(exam & (clinical["side"] != lesion["side"]))].to_csv(root / CLINICAL, index=False)
    table = read_source("embed", str(root))
    images = table[table["exam_id"] == lesion["acc_anon"]]
    assert set(images["laterality"]) == {lesion["side"]} and (images["malignant"] == 1).all()


def test_codes_map_to_birads_density_and_lexicon_words(embed, tmp_path):
    root = _copy(embed[0], tmp_path)
    clinical = _raw(root, CLINICAL)
    mass = clinical[clinical["massshape"].notna() & clinical["acc_anon"].isin(embed[2]["exam_id"])].iloc[0]
    rows = clinical["acc_anon"] == mass["acc_anon"]
    clinical.loc[rows, "tissueden"] = "5.0"
    clinical.loc[rows & (clinical["side"] == mass["side"]), ["asses", "massshape", "massmargin"]] = ["M", "R", "I"]
    clinical.to_csv(root / CLINICAL, index=False)
    table = read_source("embed", str(root))
    exam = table[table["exam_id"] == mass["acc_anon"]]
    breast = exam[exam["laterality"] == mass["side"]]
    assert exam["density"].isna().all() and (breast["birads"] == 5).all()
    assert (breast["mass_shape"] == "round").all() and (breast["mass_margin"] == "indistinct").all()
    clinical.loc[rows, "asses"] = "X"
    clinical.to_csv(root / CLINICAL, index=False)
    assert read_source("embed", str(root)).query("exam_id == @mass.acc_anon")["birads"].isna().all()


def test_follow_up_uses_later_exams_mirai_convention():
    exams = pd.DataFrame(
        {
            "empi_anon": ["a", "a", "a", "a", "b", "b"],
            "date": pd.to_datetime(
                ["2010-01-01", "2011-01-01", "2012-01-01", "2013-01-01", "2010-01-01", "2014-01-01"]
            ),
            "cancer": [False, False, True, False, False, False],
        }
    )
    result = follow_up(exams)
    np.testing.assert_allclose(result["years_to_cancer"], [730 / 365.25, 365 / 365.25, 0.0, np.nan, np.nan, np.nan])
    np.testing.assert_allclose(
        result["years_to_last_followup"], [730 / 365.25, 365 / 365.25, 0, np.nan, 1461 / 365.25, 0]
    )


def test_unknown_asses_code_names_the_row(embed, tmp_path):
    root = _copy(embed[0], tmp_path)
    clinical = _raw(root, CLINICAL)
    clinical.loc[2, "asses"] = "Z"
    clinical.to_csv(root / CLINICAL, index=False)
    with pytest.raises(SourceError, match=r"EMBED_OpenData_clinical\.csv row 3: unknown asses code 'Z'"):
        read_source("embed", str(root))


def test_missing_table_column_or_image_names_it(embed, tmp_path):
    root = _copy(embed[0], tmp_path)
    metadata = _raw(root, METADATA)
    metadata.drop(columns="ImageLateralityFinal").to_csv(root / METADATA, index=False)
    with pytest.raises(SourceError, match=r"EMBED_OpenData_metadata\.csv: missing column.*ImageLateralityFinal"):
        read_source("embed", str(root))
    metadata.to_csv(root / METADATA, index=False)
    (root / metadata["anon_dicom_path"].iloc[0]).unlink()
    with pytest.raises(SourceError, match=r"EMBED_OpenData_metadata\.csv row 1: image .*\.dcm not found"):
        read_source("embed", str(root))
    (root / CLINICAL).unlink()
    with pytest.raises(SourceError, match=r"EMBED_OpenData_clinical\.csv: EMBED table not found"):
        read_source("embed", str(root))


def test_images_decode_in_canonical_orientation_with_header_side_and_view(embed):
    root, expected, _ = embed
    for path, side, view in zip(expected["path"], expected["laterality"], expected["view"], strict=True):
        image, meta = read_mammogram(root / path)
        assert meta.flipped == (side == "R") and meta.laterality == side and meta.view == view
        assert image.dtype == np.float32 and 0.0 <= image.min() < image.max() <= 1.0
