"""Synthetic ground truth and phantom rendering: determinism, label rules, required variety, planted signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest

from mvmlm.data import schema
from mvmlm.data.synthetic.phantom import render_mammogram, render_native
from mvmlm.data.synthetic.truth import JPEG2000_LOSSLESS, JPEG_LS_LOSSLESS, VIEW_SHIFT, sample_exams

H, W = 96, 64


@pytest.fixture(scope="module")
def truth() -> pd.DataFrame:
    return sample_exams(150, seed=0)


def _row(**changes) -> dict:
    """A normal left CC truth row (12 bits) with ``changes`` applied."""
    row = dict(
        view="CC",
        laterality="L",
        density="B",
        malignant=0,
        mass=0,
        calcification=0,
        lesion_x=np.nan,
        lesion_y=np.nan,
        lesion_size=np.nan,
        calc_distribution=None,
        bits_stored=12,
    )
    return {**row, **changes}


def _lesion(malignant: int, mass: int, calcification: int, distribution: str | None = None) -> dict:
    return _row(
        malignant=malignant,
        mass=mass,
        calcification=calcification,
        lesion_x=0.35,
        lesion_y=0.5,
        lesion_size=0.14,
        calc_distribution=distribution,
    )


def _lesion_window(image: np.ndarray, radius: float) -> np.ndarray:
    """Pixels of ``image`` within ``radius`` (fraction of width) of the _lesion centre (0.35, 0.5)."""
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    return image[np.hypot(yy - 0.5 * H, xx - 0.35 * W) <= radius * W]


def test_truth_is_deterministic_per_seed():
    pd.testing.assert_frame_equal(sample_exams(12, seed=3), sample_exams(12, seed=3))
    labels = ["density", "pathology", "lesion_x"]
    assert not sample_exams(12, seed=3)[labels].equals(sample_exams(12, seed=4)[labels])


def test_truth_is_a_valid_canonical_table_with_breast_level_labels(truth):
    assert schema.validate(truth) == []
    assert (truth["dataset"] == "synthetic").all() and set(truth["view"]) == {"CC", "MLO"}
    assert truth.groupby("patient_id")["split"].nunique().max() == 1 and set(truth["split"]) == {"train", "val", "test"}


def test_truth_labels_follow_the_lesion_rules(truth):
    malignant, benign, normal = (truth[truth["pathology"] == p] for p in ("malignant", "benign", "normal"))
    assert (malignant["malignant"] == 1).all() and (truth["malignant"] == 1).sum() == len(malignant)
    assert set(malignant.loc[malignant["mass"] == 1, "mass_margin"]) == {"spiculated"}
    assert set(benign.loc[benign["mass"] == 1, "mass_margin"]) == {"circumscribed"}
    assert set(benign.loc[benign["mass"] == 1, "mass_shape"]) <= {"oval", "round"}
    malignant_calc = set(malignant.loc[malignant["calcification"] == 1, "calc_morphology"])
    assert malignant_calc <= {"fine pleomorphic", "fine linear branching"} and malignant_calc
    assert (truth["calc_morphology"].notna() == (truth["calcification"] == 1)).all()
    assert (truth["calc_distribution"].notna() == (truth["calcification"] == 1)).all()
    assert (truth["mass_shape"].notna() == (truth["mass"] == 1)).all()
    assert set(normal["birads"]) == {1} and set(benign["birads"]) == {2, 3} and set(malignant["birads"]) == {4, 5}
    assert ((normal["mass"] == 0) & (normal["calcification"] == 0) & normal["lesion_x"].isna()).all()
    lesioned = truth[truth["pathology"] != "normal"]
    assert ((lesioned["mass"] + lesioned["calcification"]) >= 1).all() and lesioned["lesion_x"].notna().all()


def test_follow_up_uses_the_mirai_convention_and_density_raises_risk(truth):
    exams = truth.groupby("exam_id").first()
    cancer_now = truth.groupby("exam_id")["malignant"].max() == 1  # a cancer on this exam: years_to_cancer 0
    assert cancer_now.any() and (exams.loc[cancer_now, "years_to_cancer"] == 0).all()
    later = exams[~cancer_now]
    seen = later["years_to_cancer"].notna()
    assert (later.loc[seen, "years_to_cancer"] == later.loc[seen, "years_to_last_followup"]).all()
    assert (later["years_to_last_followup"] > 0).all()
    big = sample_exams(1500, seed=1).groupby("exam_id").first()
    big = big[big["malignant"] == 0]
    rate = big["years_to_cancer"].notna().groupby(big["density"]).mean()
    assert rate["D"] > rate["A"] + 0.1


def test_every_dataset_of_eight_exams_has_the_required_dicom_variety():
    for n, seed in [(8, 0), (8, 1), (9, 5), (20, 2)]:
        t = sample_exams(n, seed)
        assert "MONOCHROME1" in set(t["photometric"]) and "SIGMOID" in set(t["voi_function"])
        assert {JPEG2000_LOSSLESS, JPEG_LS_LOSSLESS} <= set(t["transfer_syntax"])
        assert t.groupby("exam_id").size().min() < 4
        assert {"malignant", "benign"} <= set(t["pathology"]) and ((t["mass"] == 1) & (t["calcification"] == 1)).any()


def test_the_same_lesion_appears_in_cc_and_mlo_shifted_by_the_view(truth):
    lesioned = truth[truth["lesion_x"].notna()]
    pairs = lesioned.pivot_table(
        index=["exam_id", "laterality"], columns="view", values=["lesion_x", "lesion_y", "lesion_size"]
    ).dropna()
    assert len(pairs) > 20
    shift = np.subtract(VIEW_SHIFT["MLO"], VIEW_SHIFT["CC"])
    np.testing.assert_allclose(pairs["lesion_x"]["MLO"] - pairs["lesion_x"]["CC"], shift[0], atol=2e-4)
    np.testing.assert_allclose(pairs["lesion_y"]["MLO"] - pairs["lesion_y"]["CC"], shift[1], atol=2e-4)
    assert (pairs["lesion_size"]["MLO"] == pairs["lesion_size"]["CC"]).all()


def test_render_is_deterministic_in_range_and_chest_wall_left():
    for bits in (12, 16):
        image = render_mammogram(_row(bits_stored=bits), H, W, seed=7)
        assert image.dtype == np.uint16 and image.shape == (H, W) and int(image.max()) <= 2**bits - 1
        assert image.max() > 2 ** (bits - 1)  # uses the range, not a sliver of it
    np.testing.assert_array_equal(render_mammogram(_row(), H, W, 7), render_mammogram(_row(), H, W, 7))
    assert not np.array_equal(render_mammogram(_row(), H, W, 7), render_mammogram(_row(), H, W, 8))
    image = render_mammogram(_row(), H, W, 7)
    assert image[:, : W // 4].mean() > 3 * image[:, -W // 8 :].mean()  # breast at the left edge, air at the right


def test_native_render_mirrors_right_breasts_only():
    left, right = _row(), _row(laterality="R")
    np.testing.assert_array_equal(render_native(left, H, W, 7), render_mammogram(left, H, W, 7))
    np.testing.assert_array_equal(render_native(right, H, W, 7), np.fliplr(render_mammogram(right, H, W, 7)))


def test_density_a_to_d_brightens_the_breast():
    means = [np.mean([render_mammogram(_row(density=d), H, W, s).mean() for s in range(4)]) for d in "ABCD"]
    assert means == sorted(means) and means[3] > 1.3 * means[0]


def test_mlo_has_a_pectoral_muscle_in_the_top_left_corner():
    corner = (slice(0, H // 10), slice(0, W // 10))
    cc, mlo = render_mammogram(_row(), H, W, 3), render_mammogram(_row(view="MLO"), H, W, 3)
    assert mlo[corner].mean() > 0.6 * 4095 and mlo[corner].mean() > cc[corner].mean() + 500


def test_a_mass_brightens_its_position_and_only_there():
    plain = render_mammogram(_row(), H, W, 5).astype(float)
    mass = render_mammogram(_lesion(1, 1, 0), H, W, 5).astype(float)
    assert _lesion_window(mass - plain, 0.05).mean() > 0.2 * 4095
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    far = np.hypot(yy - 0.5 * H, xx - 0.35 * W) > 0.25 * W
    assert np.abs(mass - plain)[far].mean() < 0.02 * 4095  # only noise elsewhere


def test_malignant_masses_are_spiculated_and_benign_ones_circumscribed():
    plain = render_mammogram(_row(), H, W, 5).astype(float)

    def halo(malignant: int) -> float:  # brightening just outside the mass core (spicules)
        diff = render_mammogram(_lesion(malignant, 1, 0), H, W, 5).astype(float) - plain
        ring = _lesion_window(diff, 0.14).sum() - _lesion_window(diff, 0.09).sum()
        return ring / 4095

    assert halo(1) > 0.8 and abs(halo(0)) < 0.4  # noise alone gives about +-0.15


def test_calcifications_are_bright_specks_more_numerous_when_malignant():
    plain = render_mammogram(_row(), H, W, 5)

    def specks(malignant: int, distribution: str) -> int:
        image = render_mammogram(_lesion(malignant, 0, 1, distribution), H, W, 5)
        return int((_lesion_window(image, 0.12) > plain.max()).sum())

    assert specks(0, "grouped") >= 2
    assert specks(1, "segmental") > specks(0, "grouped")


def test_written_vindr_files_carry_the_required_dicom_variety(synthetic_dataset):
    root, expected = synthetic_dataset("vindr")
    headers = [pydicom.dcmread(root / p, stop_before_pixels=True) for p in expected["path"]]
    assert "MONOCHROME1" in {h.PhotometricInterpretation for h in headers}
    assert "SIGMOID" in {h.get("VOILUTFunction") for h in headers}
    assert {JPEG2000_LOSSLESS, JPEG_LS_LOSSLESS} <= {h.file_meta.TransferSyntaxUID for h in headers}
    assert expected.groupby("exam_id").size().min() < 4


@pytest.mark.parametrize("fmt", ["vindr", "cmmd"])
def test_lesion_mask_covers_the_planted_mass_in_the_cached_image(synthetic_dataset, fmt):
    """The side table's lesion, carried through the preprocess crop and resize, sits on the bright planted mass."""
    from mvmlm.data.dicom import read_mammogram
    from mvmlm.data.preprocess import PreprocessParams, preprocess_image
    from mvmlm.data.synthetic.lesions import preprocessed_lesion_mask, read_lesions

    root, expected = synthetic_dataset(fmt)
    lesions = read_lesions(root)
    assert len(lesions) == len(expected)
    params = PreprocessParams(height=80, width=48)
    masses = expected[(expected["mass"] == 1)]
    contrasts = []
    for row in masses.itertuples():
        image, _ = read_mammogram(root / row.path)
        mask = preprocessed_lesion_mask(image, lesions.loc[(row.dataset, row.image_id)], params)
        cached = preprocess_image(image, params)
        ring = np.zeros_like(mask)
        ys, xs = np.nonzero(mask)
        ring[max(ys.min() - 6, 0) : ys.max() + 7, max(xs.min() - 6, 0) : xs.max() + 7] = True
        ring &= ~mask & (cached > 0)
        contrasts.append(cached[mask].mean() - cached[ring].mean())
    assert len(contrasts) >= 3 and np.median(contrasts) > 0.05


def test_lesion_mask_is_empty_without_a_lesion():
    from mvmlm.data.synthetic.lesions import lesion_mask

    assert not lesion_mask({"lesion_x": np.nan, "lesion_y": np.nan, "lesion_size": np.nan}, (20, 10)).any()
    assert lesion_mask({"lesion_x": 0.5, "lesion_y": 0.5, "lesion_size": 0.4}, (20, 10)).sum() == 12
