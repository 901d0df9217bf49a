import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from mvmlm.data import schema
from mvmlm.data.exams import BreastDataset, ExamDataset, build_breasts, build_exams, encode_label
from mvmlm.data.preprocess import save_cached

SHAPE = (8, 6)


def _row(image_id, laterality, view, exam="e1", patient="p1", **labels):
    return {
        "dataset": "toy",
        "patient_id": patient,
        "exam_id": exam,
        "image_id": image_id,
        "path": f"{image_id}.dcm",
        "laterality": laterality,
        "view": view,
        "split": "train",
        **labels,
    }


@pytest.fixture
def cached_table(tmp_path) -> pd.DataFrame:
    """Exam e1: full left breast, right breast CC only. Exam e2: left MLO only, no right breast."""
    rows = [
        _row("l_cc", "L", "CC", malignant=1, density="C", birads=4, mass=1),
        _row("l_mlo", "L", "MLO", malignant=1, density="C", birads=4, mass=1),
        _row("r_cc", "R", "CC", malignant=0, density="C", birads=1, mass=0),
        _row("x_mlo", "L", "MLO", exam="e2", patient="p2", malignant=pd.NA, density=pd.NA, birads=2),
    ]
    rng = np.random.default_rng(0)
    for row in rows:
        row["cache_path"] = str(save_cached(tmp_path / f"{row['image_id']}.npy", rng.random(SHAPE)))
    return schema.conform(pd.DataFrame(rows))


def test_breast_with_a_missing_view_has_the_right_mask(cached_table):
    breasts = build_breasts(cached_table).set_index(["exam_id", "laterality"])
    assert breasts.loc[("e1", "L"), ["CC_present", "MLO_present"]].tolist() == [True, True]
    assert breasts.loc[("e1", "R"), ["CC_present", "MLO_present"]].tolist() == [True, False]
    assert breasts.loc[("e2", "L"), ["CC_present", "MLO_present"]].tolist() == [False, True]
    assert pd.isna(breasts.loc[("e1", "R"), "MLO_image_id"])
    assert breasts.loc[("e1", "L"), "birads"] == 4 and breasts.loc[("e1", "R"), "malignant"] == 0


def test_exam_mask_marks_missing_views_and_missing_breasts(cached_table):
    exams = build_exams(cached_table).set_index("exam_id")
    slots = ["L_CC_present", "L_MLO_present", "R_CC_present", "R_MLO_present"]
    assert exams.loc["e1", slots].tolist() == [True, True, True, False]
    assert exams.loc["e2", slots].tolist() == [False, True, False, False]
    assert exams.loc["e1", "L_malignant"] == 1 and exams.loc["e1", "R_malignant"] == 0
    assert pd.isna(exams.loc["e2", "R_birads"])


def test_slot_choice_prefers_standard_views_then_smallest_id():
    rows = [
        _row("c", "L", "CC"),
        _row("a", "L", "XCCL"),
        _row("b", "L", "CC"),
        _row("d", "L", "ML"),
        _row("f", "L", "MLO"),
        _row("e", "L", "AT"),
    ]
    table = pd.DataFrame(rows)
    for seed in range(3):  # the input order does not matter
        breast = build_breasts(table.sample(frac=1, random_state=seed)).iloc[0]
        assert (breast["CC_image_id"], breast["MLO_image_id"]) == ("b", "f")
    fallback = build_breasts(pd.DataFrame([_row("a", "L", "XCCL"), _row("d", "L", "ML")])).iloc[0]
    assert (fallback["CC_image_id"], fallback["MLO_image_id"]) == ("a", "d")


def test_views_fitting_no_slot_are_ignored():
    table = pd.DataFrame([_row("a", "L", "CC"), _row("b", "R", "AT")])
    breasts = build_breasts(table)
    assert breasts["laterality"].tolist() == ["L"]


def test_breast_dataset_items_have_zero_images_for_missing_views(cached_table):
    breasts = build_breasts(cached_table)
    dataset = BreastDataset(breasts)
    index = breasts.index[(breasts["exam_id"] == "e1") & (breasts["laterality"] == "R")][0]
    item = dataset[index]
    assert item["images"].shape == (2, 1, *SHAPE) and item["images"].dtype == torch.float32
    assert item["mask"].tolist() == [True, False]
    assert item["images"][1].abs().sum() == 0 and item["images"][0].abs().sum() > 0
    assert item["image_ids"] == ["r_cc", ""] and item["id"] == "toy/p1/e1/R"
    assert item["labels"]["malignant"].item() == 0 and item["labels"]["density"].item() == 2
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch["images"].shape == (3, 2, 1, *SHAPE) and batch["labels"]["birads"].shape == (3,)


def test_exam_dataset_returns_four_views_and_per_side_labels(cached_table):
    dataset = ExamDataset(build_exams(cached_table), labels=["malignant", "density"])
    item = dataset[0]
    assert item["images"].shape == (4, 1, *SHAPE)
    assert item["mask"].tolist() == [True, True, True, False]
    assert item["labels"]["malignant"].tolist() == [1, 0] and item["labels"]["density"].tolist() == [2, 2]
    missing_right = dataset[1]
    assert missing_right["labels"]["malignant"].tolist() == [-1, -1]
    assert missing_right["images"][[0, 2, 3]].abs().sum() == 0


def test_dataset_applies_the_transform_to_present_views_only(cached_table):
    dataset = BreastDataset(build_breasts(cached_table), transform=lambda image: image + 1.0)
    item = dataset[1]  # e1/R: CC only
    assert item["images"][0].min() >= 1.0 and item["images"][1].abs().sum() == 0


def test_dataset_needs_a_preprocessed_table(cached_table):
    with pytest.raises(ValueError, match="CC_cache_path"):
        BreastDataset(build_breasts(cached_table.drop(columns="cache_path")))
    with pytest.raises(ValueError, match="mass_shape"):
        BreastDataset(build_breasts(cached_table), labels=["mass_shape"])


def test_label_encoding():
    assert encode_label("density", "C") == 2 and encode_label("density", pd.NA) == -1
    assert encode_label("birads", 5) == 5 and encode_label("malignant", None) == -1
    assert np.isnan(encode_label("years_to_cancer", pd.NA)) and encode_label("years_to_cancer", 2.5) == 2.5
    with pytest.raises(ValueError, match="'E'"):
        encode_label("density", "E")


def test_synthetic_exams_mask_matches_the_images_written(synthetic_dataset):
    _, truth = synthetic_dataset("vindr")
    exams = build_exams(truth)
    present = {(r.exam_id, r.laterality, r.view) for r in truth.itertuples()}
    assert len(exams) == truth["exam_id"].nunique()
    assert (~exams.filter(like="_present").all(axis=1)).any()  # the generator writes a missing view
    for exam in exams.itertuples():
        for side in "LR":
            for view in ("CC", "MLO"):
                assert getattr(exam, f"{side}_{view}_present") == ((exam.exam_id, side, view) in present)
