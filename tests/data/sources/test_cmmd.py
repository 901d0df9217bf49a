"""CMMD adapter on synthetic native-format data: equality with the generator's truth, TOMPEI-CMMD, every trap."""

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
from mvmlm.data.sources import main as tables_main
from mvmlm.data.sources.cmmd import SHEET, TOMPEI_FILE, TOMPEI_SHEET

COMPARED = list(schema.COLUMNS)


@pytest.fixture(scope="module")
def cmmd(synthetic_dataset) -> tuple[Path, pd.DataFrame]:
    return synthetic_dataset("cmmd")


def _by_image(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values("image_id", ignore_index=True)[COMPARED]


def _copy(root: Path, tmp_path: Path) -> Path:
    shutil.copytree(root, tmp_path / "cmmd")
    return tmp_path / "cmmd"


def test_adapter_with_tompei_reproduces_the_generator_truth(cmmd):
    root, expected = cmmd
    table = read_source("cmmd", str(root), extra=TOMPEI_FILE)
    pd.testing.assert_frame_equal(_by_image(table), _by_image(expected))
    assert expected["birads"].notna().all() and expected["density"].notna().all()


def test_without_tompei_labels_stay_on_the_recorded_side_and_birads_density_are_missing(cmmd):
    root, expected = cmmd
    table = _by_image(read_source("cmmd", str(root)))
    assert table["birads"].isna().all() and table["density"].isna().all()
    differs = table["pathology"] != _by_image(expected)["pathology"]
    swapped = table.loc[differs, "patient_id"].unique()
    assert len(swapped) == 1  # the one patient whose sheet row sits on the wrong side
    patient = table[table["patient_id"] == swapped[0]].groupby("laterality")["pathology"].first()
    truth = expected[expected["patient_id"] == swapped[0]].groupby("laterality")["pathology"].first()
    assert patient["L"] == truth["R"] and patient["R"] == truth["L"] and "normal" in set(truth)
    same = [c for c in COMPARED if c not in ("birads", "density", "malignant", "mass", "calcification", "pathology")]
    pd.testing.assert_frame_equal(table[same], _by_image(expected)[same])


def test_breasts_without_a_sheet_row_are_normal_and_some_patients_have_one_breast(cmmd):
    root, expected = cmmd
    sheet = pd.read_excel(root / SHEET)
    assert list(sheet.columns) == ["ID1", "LeftRight", "Age", "number", "abnormality", "classification", "subtype"]
    assert set(sheet["abnormality"]) <= {"mass", "calcification", "both"} and len(sheet) >= 3
    table = read_source("cmmd", str(root), extra=TOMPEI_FILE)
    rows = set(zip(sheet["ID1"], sheet["LeftRight"], strict=True))
    unlisted = table[[(p, s) not in rows for p, s in zip(table["patient_id"], table["laterality"], strict=True)]]
    unlisted = unlisted[unlisted["patient_id"] != _swapped_patient(root)]
    assert len(unlisted) >= 2 and (unlisted["pathology"] == "normal").all()
    assert (unlisted[["malignant", "mass", "calcification"]] == 0).all().all()
    sides = table.groupby("patient_id")["laterality"].nunique()
    assert (sides == 1).any() and (sides == 2).any()


def _swapped_patient(root: Path) -> str:
    tompei = pd.read_excel(root / TOMPEI_FILE, sheet_name=TOMPEI_SHEET, header=None, skiprows=2)
    classes = {(p, s): c for p, s, c in zip(tompei[0], tompei[1], tompei[3], strict=True)}
    sheet = pd.read_excel(root / SHEET)
    wrong = [p for p, s in zip(sheet["ID1"], sheet["LeftRight"], strict=True) if classes[(p, s)] == "Normal"]
    assert len(wrong) == 1
    return wrong[0]


def test_files_are_8bit_sigmoid_with_the_view_only_in_view_code_sequence(cmmd):
    root, expected = cmmd
    for path in expected["path"]:
        ds = pydicom.dcmread(root / path, stop_before_pixels=True)
        assert "ViewPosition" not in ds and ds.ViewCodeSequence[0].CodeValue in ("399162004", "399368009")
        assert ds.BitsStored == 8 and ds.VOILUTFunction == "SIGMOID" and float(ds.WindowCenter) == 128.0
        assert ds.ImageLaterality in ("L", "R") and ds.PatientID == Path(path).parts[1]
    assert set(expected["view"]) == {"CC", "MLO"}


def test_split_is_patient_level_and_depends_on_the_seed(cmmd):
    root, _ = cmmd
    table = read_source("cmmd", str(root))
    assert (table.groupby("patient_id")["split"].nunique() == 1).all()
    other = read_source("cmmd", str(root), seed=5)
    assert (other["path"] == table["path"]).all() and set(other["split"]) <= {"train", "val", "test"}


def test_tables_command_passes_the_tompei_file(cmmd, tmp_path):
    root, expected = cmmd
    out = tmp_path / "cmmd.parquet"
    tables_main(["--source", "cmmd", "--root", str(root), "--out", str(out), f"extra={TOMPEI_FILE}"])
    pd.testing.assert_frame_equal(_by_image(schema.read_table(out)), _by_image(expected))


def test_missing_sheet_or_column_names_file_and_column(cmmd, tmp_path):
    root = _copy(cmmd[0], tmp_path)
    sheet = pd.read_excel(root / SHEET)
    sheet.drop(columns="classification").to_excel(root / SHEET, index=False)
    with pytest.raises(SourceError, match=r"CMMD_clinicaldata_revision\.xlsx.*classification"):
        read_source("cmmd", str(root))
    (root / SHEET).unlink()
    with pytest.raises(SourceError, match=r"CMMD_clinicaldata_revision\.xlsx: .*not found"):
        read_source("cmmd", str(root))


def test_unexpected_sheet_value_names_the_row(cmmd, tmp_path):
    root = _copy(cmmd[0], tmp_path)
    sheet = pd.read_excel(root / SHEET)
    sheet.loc[1, "abnormality"] = "asymmetry"
    sheet.to_excel(root / SHEET, index=False)
    with pytest.raises(SourceError, match=r"row 3: .*'asymmetry'"):
        read_source("cmmd", str(root))


def test_tompei_without_birads_column_or_sheet_is_an_error(cmmd, tmp_path):
    root = _copy(cmmd[0], tmp_path)
    short = pd.read_excel(root / TOMPEI_FILE, sheet_name=TOMPEI_SHEET, header=None).iloc[:, :10]
    short.to_excel(root / "short.xlsx", sheet_name=TOMPEI_SHEET, index=False, header=False)
    with pytest.raises(SourceError, match=r"short\.xlsx.*BI-RADS"):
        read_source("cmmd", str(root), extra="short.xlsx")
    short.to_excel(root / "other.xlsx", sheet_name="Sheet1", index=False, header=False)
    with pytest.raises(SourceError, match=r"other\.xlsx: no sheet 'Imaging Diagnosis Details Sheet'"):
        read_source("cmmd", str(root), extra="other.xlsx")


def test_dicom_without_laterality_names_the_file(cmmd, tmp_path):
    root = _copy(cmmd[0], tmp_path)
    path = root / cmmd[1]["path"].iloc[0]
    ds = pydicom.dcmread(path)
    del ds.ImageLaterality, ds.Laterality
    ds.save_as(path)
    with pytest.raises(SourceError, match=rf"{path.name}: no laterality"):
        read_source("cmmd", str(root))


def test_images_decode_in_canonical_orientation_with_header_side_and_view(cmmd):
    root, expected = cmmd
    for path, side, view in zip(expected["path"], expected["laterality"], expected["view"], strict=True):
        image, meta = read_mammogram(root / path)
        assert meta.flipped == (side == "R") and meta.laterality == side and meta.view == view
        assert image.dtype == np.float32 and 0.0 <= image.min() < image.max() <= 1.0
