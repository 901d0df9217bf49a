"""CBIS-DDSM adapter on synthetic native-format data: equality with the generator's truth and every trap."""

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
from mvmlm.data.sources.cbis_ddsm import CSV_FILES, lexicon_words

COMPARED = [*schema.COLUMNS, "roi_path", "crop_path"]
CALC_TRAIN, MASS_TRAIN = CSV_FILES[("calc", "train")], CSV_FILES[("mass", "train")]


@pytest.fixture(scope="module")
def cbis(synthetic_dataset) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    root, expected = synthetic_dataset("cbis_ddsm")
    return root, expected, read_source("cbis_ddsm", str(root))


def _by_image(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values("image_id", ignore_index=True)[COMPARED]


def _raw(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / name, dtype=str, keep_default_na=False)


def _copy(root: Path, tmp_path: Path) -> Path:
    shutil.copytree(root, tmp_path / "cbis")
    return tmp_path / "cbis"


def test_adapter_reproduces_the_generator_truth(cbis):
    root, expected, table = cbis
    pd.testing.assert_frame_equal(_by_image(table), _by_image(expected))
    assert set(table["pathology"]) == {"benign", "malignant"}  # only lesioned images exist
    assert all((root / p).is_file() for p in table["path"])


def test_native_csvs_keep_both_density_spellings_na_and_combined_words(cbis):
    root, _, table = cbis
    mass, calc = _raw(root, MASS_TRAIN), _raw(root, CALC_TRAIN)
    assert "breast_density" in mass.columns and "breast density" in calc.columns
    assert "N/A" in set(calc["calc type"]) and "N/A" not in set(table["calc_morphology"].dropna())
    shapes = pd.concat([_raw(root, CSV_FILES[("mass", s)]) for s in ("train", "test")])["mass shape"]
    assert "IRREGULAR-ARCHITECTURAL_DISTORTION" in set(shapes)
    assert "irregular, architectural distortion" in set(table["mass_shape"])


def test_quoted_path_with_trailing_newline_is_stripped(cbis):
    root, _, _ = cbis
    assert '.dcm\n"' in (root / CALC_TRAIN).read_text()
    assert _raw(root, CALC_TRAIN)["ROI mask file path"].iloc[0].endswith("\n")


def test_several_abnormalities_of_an_image_are_aggregated(cbis):
    root, _, table = cbis
    calc = _raw(root, CALC_TRAIN)
    second = calc[calc["abnormality id"] == "2"]
    assert len(second) >= 1 and set(second["pathology"]) <= {"BENIGN", "BENIGN_WITHOUT_CALLBACK"}
    row = second.iloc[0]
    image_id = f"{row['patient_id']}_{row['left or right breast']}_{row['image view']}"
    image = table.set_index("image_id").loc[image_id]
    assert len(image["roi_path"].split(";")) == len(image["crop_path"].split(";")) >= 2
    first = calc[(calc["patient_id"] == row["patient_id"]) & (calc["abnormality id"] == "1")].iloc[0]
    assert image["malignant"] == int(first["pathology"] == "MALIGNANT")


def test_benign_without_callback_is_benign_and_density_zero_is_missing(cbis, tmp_path):
    root = _copy(cbis[0], tmp_path)
    masses = pd.concat([_raw(root, CSV_FILES[("mass", s)]) for s in ("train", "test")])
    with_mass = set(zip(masses["patient_id"], masses["left or right breast"], strict=True))
    calc = _raw(root, CALC_TRAIN)
    keys = pd.Series(list(zip(calc["patient_id"], calc["left or right breast"], strict=True)))
    malignant_calc_only = keys[(calc["pathology"] == "MALIGNANT") & ~keys.isin(with_mass)]
    assert len(malignant_calc_only) >= 1
    patient, side = malignant_calc_only.iloc[0]
    rows = keys == (patient, side)
    calc.loc[rows, "pathology"] = "BENIGN_WITHOUT_CALLBACK"
    calc.loc[rows, "breast density"] = "0"
    calc.to_csv(root / CALC_TRAIN, index=False)
    table = read_source("cbis_ddsm", str(root))
    breast = table[(table["patient_id"] == patient) & (table["laterality"] == side[0])]
    assert len(breast) >= 1 and (breast["pathology"] == "benign").all() and (breast["malignant"] == 0).all()
    assert breast["density"].isna().all() and (breast["calcification"] == 1).all()
    other = table[table["patient_id"] != patient]
    pd.testing.assert_frame_equal(_by_image(other), _by_image(cbis[2][cbis[2]["patient_id"] != patient]))


def test_full_images_map_through_the_series_uid_with_or_without_metadata_csv(cbis, tmp_path):
    root, expected, _ = cbis
    copy = _copy(root, tmp_path)
    (copy / "metadata.csv").unlink()
    pd.testing.assert_frame_equal(_by_image(read_source("cbis_ddsm", str(copy))), _by_image(expected))
    image_path = _raw(root, MASS_TRAIN)["image file path"].iloc[0]
    assert not (root / image_path).exists()  # the CSV path is not the download layout
    full = expected[expected["path"].str.contains(image_path.split("/")[0] + "/")]["path"].iloc[0]
    assert pydicom.dcmread(root / full, stop_before_pixels=True).SeriesInstanceUID == image_path.split("/")[-2]


def test_swapped_crop_and_roi_paths_still_find_the_mask(cbis, tmp_path):
    root, expected, _ = cbis
    copy = _copy(root, tmp_path)
    for name in CSV_FILES.values():
        csv = _raw(copy, name)
        csv[["cropped image file path", "ROI mask file path"]] = csv[["ROI mask file path", "cropped image file path"]]
        csv.to_csv(copy / name, index=False)
    pd.testing.assert_frame_equal(_by_image(read_source("cbis_ddsm", str(copy))), _by_image(expected))


def test_roi_masks_are_binary_full_size_images_and_crops_are_smaller(cbis):
    root, _, table = cbis
    row = table.iloc[0]
    full = pydicom.dcmread(root / row["path"]).pixel_array
    for mask_path, crop_path in zip(row["roi_path"].split(";"), row["crop_path"].split(";"), strict=True):
        mask = pydicom.dcmread(root / mask_path).pixel_array
        crop = pydicom.dcmread(root / crop_path).pixel_array
        assert mask.shape == full.shape and set(np.unique(mask)) == {0, 255}
        assert crop.size < full.size and crop.shape == (
            np.ptp(np.nonzero(mask)[0]) + 1,
            np.ptp(np.nonzero(mask)[1]) + 1,
        )


def test_source_test_split_is_kept_and_val_comes_from_training(cbis):
    root, _, table = cbis
    test_patients = set(_raw(root, CSV_FILES[("mass", "test")])["patient_id"]) | set(
        _raw(root, CSV_FILES[("calc", "test")])["patient_id"]
    )
    assert test_patients and set(table.loc[table["split"] == "test", "patient_id"]) == test_patients
    assert set(table.loc[~table["patient_id"].isin(test_patients), "split"]) <= {"train", "val"}


def test_lexicon_words():
    assert lexicon_words("IRREGULAR-ARCHITECTURAL_DISTORTION") == "irregular, architectural distortion"
    assert lexicon_words("ILL_DEFINED") == "indistinct" and lexicon_words("CLUSTERED") == "grouped"
    assert lexicon_words("LUCENT_CENTER-LUCENT_CENTERED") == "lucent-centered"
    assert lexicon_words(" N/A ") is None and lexicon_words("") is None


def test_missing_csv_or_column_names_file_and_column(cbis, tmp_path):
    root = _copy(cbis[0], tmp_path)
    original = (root / MASS_TRAIN).read_bytes()
    _raw(root, MASS_TRAIN).drop(columns="mass margins").to_csv(root / MASS_TRAIN, index=False)
    with pytest.raises(SourceError, match=r"mass_case_description_train_set\.csv: missing column.*mass margins"):
        read_source("cbis_ddsm", str(root))
    (root / MASS_TRAIN).write_bytes(original)
    (root / CALC_TRAIN).unlink()
    with pytest.raises(SourceError, match=r"calc_case_description_train_set\.csv: .*not found"):
        read_source("cbis_ddsm", str(root))


def test_series_missing_from_the_download_names_the_csv_row(cbis, tmp_path):
    root = _copy(cbis[0], tmp_path)
    mass = _raw(root, MASS_TRAIN)
    mass.loc[1, "image file path"] = "Mass-Training_P_09999_LEFT_CC/1.2.3/1.2.3.4/000000.dcm"
    mass.to_csv(root / MASS_TRAIN, index=False)
    with pytest.raises(SourceError, match=r"mass_case_description_train_set\.csv row 2: .*1\.2\.3\.4.*matches 0"):
        read_source("cbis_ddsm", str(root))


def test_images_decode_in_canonical_orientation_with_header_side_and_view(cbis):
    root, expected, _ = cbis
    for path, side, view in zip(expected["path"], expected["laterality"], expected["view"], strict=True):
        image, meta = read_mammogram(root / path)
        assert meta.flipped == (side == "R") and meta.laterality == side and meta.view == view
        assert image.dtype == np.float32 and 0.0 <= image.min() < image.max() <= 1.0
