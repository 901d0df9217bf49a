"""Lesion crops: CBIS-DDSM ROI masks and VinDr boxes -> canonical boxes -> crops cached in the image cache folder."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from mvmlm.config import ConfigError
from mvmlm.data import dicom
from mvmlm.data.preprocess import NotCachedError, load_cached
from mvmlm.data.roi import (
    RoiParams,
    cache_crops,
    lesion_boxes,
    lesion_crop,
    read_crop_table,
    square_box,
    union_box,
)
from mvmlm.data.sources import cbis_ddsm
from mvmlm.data.synthetic.truth import sample_exams

from .test_preprocess_failures import _crashing_reader

SMALL = dict(size=32, min_side=16)


@pytest.fixture(scope="module")
def cbis(synthetic_dataset):
    root, _ = synthetic_dataset("cbis_ddsm", exams=8, seed=0)
    return root, cbis_ddsm.read(root)


def _truth_centres(table: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """image_id -> planted lesion centre (row, col) as fractions, canonical orientation (the writer's numbering)."""
    truth = sample_exams(8, 0)
    patients = {exam: f"P_{n:05d}" for n, exam in enumerate(sorted(truth["exam_id"].unique()), start=1)}
    side = {"L": "LEFT", "R": "RIGHT"}
    return {
        f"{patients[r.exam_id]}_{side[r.laterality]}_{r.view}": (r.lesion_y, r.lesion_x)
        for r in truth.itertuples()
        if r.pathology != "normal"
    }


def test_cbis_mask_boxes_hold_the_planted_lesion_in_both_orientations(cbis):
    root, table = cbis
    centres = _truth_centres(table)
    flips = set()
    for _, row in table.iterrows():
        image, meta = dicom.read_mammogram(root / row["path"])
        flips.add(meta.flipped)
        top, bottom, left, right = union_box(lesion_boxes(row, root, image.shape, meta.flipped))
        y, x = centres[row["image_id"]][0] * image.shape[0], centres[row["image_id"]][1] * image.shape[1]
        assert top <= y < bottom and left <= x < right, row["image_id"]
        assert (bottom - top) * (right - left) < 0.1 * image.size  # a lesion box, not the whole image
    assert flips == {True, False}  # right breasts are mirrored: their masks must follow the full image


def test_lesion_crop_is_brighter_than_the_breast_around_it(cbis):
    root, table = cbis
    row = table.iloc[0]
    crop = lesion_crop(row, root, RoiParams(**SMALL))
    image, _ = dicom.read_mammogram(root / row["path"])
    assert crop.shape == (32, 32) and crop.dtype == np.float32
    assert crop.mean() > image[image > 0.05].mean()  # the planted mass is denser than the average tissue


def test_cbis_crop_files_can_be_the_crop_source(cbis):
    root, table = cbis
    crop = lesion_crop(table.iloc[0], root, RoiParams(**SMALL, source="crop"))
    assert crop.shape == (32, 32) and crop.max() > 0


def test_vindr_boxes_are_mirrored_with_the_image_and_clipped():
    row = pd.Series(
        {
            "dataset": "vindr",
            "image_id": "x",
            "boxes": [
                {"finding": "Mass", "xmin": -5.0, "ymin": 90.0, "xmax": 10.0, "ymax": 130.0},  # crosses two edges
                {"finding": "Mass", "xmin": 200.0, "ymin": 10.0, "xmax": 220.0, "ymax": 20.0},  # wholly outside
            ],
        }
    )
    assert lesion_boxes(row, ".", (100, 80), flipped=False) == [(90, 100, 0, 10)]
    assert lesion_boxes(row, ".", (100, 80), flipped=True) == [(90, 100, 70, 80)]
    assert lesion_boxes(row.drop("boxes"), ".", (100, 80), flipped=False) == []


def test_square_box_adds_margin_and_stays_inside_the_image():
    assert square_box((40, 50, 40, 44), margin=0.5, min_side=4, shape=(100, 100)) == (35, 55, 32, 52)
    assert square_box((0, 10, 95, 100), margin=0.5, min_side=4, shape=(100, 100)) == (0, 20, 80, 100)
    assert square_box((0, 10, 0, 10), margin=0.0, min_side=64, shape=(50, 100)) == (0, 50, 0, 64)


def test_cache_skips_images_without_roi_and_records_them(cbis, tmp_path):
    root, table = cbis
    table = table.copy()
    table.loc[0, "roi_path"] = ""
    cached = cache_crops(table, root, tmp_path / "a", RoiParams(**SMALL), progress=False)
    failures = pd.read_csv(tmp_path / "a" / "roi_failures.csv")
    assert failures["image_id"].tolist() == [table.loc[0, "image_id"]] and "no lesion ROI" in failures["error"][0]
    assert len(cached) == len(table) - 1
    assert load_cached(cached["cache_path"][0]).shape == (32, 32)
    whole = cache_crops(table, root, tmp_path / "b", RoiParams(**SMALL, missing="whole"), progress=False)
    assert len(whole) == len(table)


def test_crop_table_lies_beside_the_image_table_with_relative_paths(cbis, tmp_path):
    root, table = cbis
    cached = cache_crops(table, root, tmp_path / "cache", RoiParams(**SMALL), progress=False)
    stored = pd.read_parquet(tmp_path / "cache" / "roi_table.parquet")
    assert stored["cache_path"].str.startswith("crops/").all()
    read = read_crop_table(tmp_path / "cache" / "table.parquet")
    assert read["cache_path"].tolist() == cached["cache_path"].tolist()


def test_a_cache_without_crops_names_the_preprocess_option(tmp_path):
    with pytest.raises(NotCachedError, match="roi.enabled=true"):
        read_crop_table(tmp_path / "table.parquet")


def test_cache_reuses_existing_crops(cbis, tmp_path, monkeypatch):
    root, table = cbis
    params = RoiParams(**SMALL)
    first = cache_crops(table.head(2), root, tmp_path, params, progress=False)

    def fail(*args, **kwargs):
        raise AssertionError("a cached crop was recomputed")

    monkeypatch.setattr("mvmlm.data.roi.lesion_crop", fail)
    again = cache_crops(table.head(2), root, tmp_path, params, progress=False)
    assert again["cache_path"].tolist() == first["cache_path"].tolist()


def test_bad_parameters_are_refused():
    with pytest.raises(ConfigError, match="source"):
        RoiParams(source="boxes")
    with pytest.raises(ConfigError, match="margin"):
        RoiParams(margin=-1)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_crashing_or_hanging_decoder_fails_one_crop_and_the_rest_are_cached(cbis, tmp_path, monkeypatch, workers):
    root, table = cbis
    names = ["abort-1", "segv-1", "hang-1"]
    bad = pd.concat([table.iloc[:1]] * len(names), ignore_index=True)
    bad = bad.assign(image_id=names, patient_id="bad", path=[f"{name}.dcm" for name in names])
    monkeypatch.setattr(dicom, "read_mammogram", _crashing_reader)  # the forked workers inherit it
    start = time.monotonic()
    cached = cache_crops(pd.concat([table, bad]), root, tmp_path, RoiParams(**SMALL), workers=workers, timeout=1.5,
                         progress=False)  # fmt: skip
    assert time.monotonic() - start < 15
    errors = pd.read_csv(tmp_path / "roi_failures.csv").set_index("image_id")["error"].to_dict()
    assert errors == {
        "abort-1": "decoder crashed: signal 6 (SIGABRT)",
        "segv-1": "decoder crashed: signal 11 (SIGSEGV)",
        "hang-1": "timed out after 1.5 s",
    }
    assert sorted(cached["image_id"]) == sorted(table["image_id"])
