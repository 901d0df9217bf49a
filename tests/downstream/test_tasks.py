"""Tasks: label extraction with regrouped classes, patient-level splits, stratified patient fractions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from downstream.common.tasks import check_patient_splits, get_task, get_tasks, sample_fraction


def _cohort(n_patients: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two breasts per patient; about 10 % of patients have one positive breast."""
    rng = np.random.default_rng(seed)
    patients = np.repeat([f"P{i:04d}" for i in range(n_patients)], 2)
    positive = np.repeat(rng.random(n_patients) < 0.1, 2) & np.tile([True, False], n_patients)
    labels = positive.astype(int)
    labels[rng.choice(labels.size, 7, replace=False)] = -1  # a few unlabelled breasts
    return patients, labels


def test_birads_classes_regroup_and_leave_out_other_values():
    task = get_task("birads", ["1", "2,3", "4, 5"])
    frame = pd.DataFrame({"birads": pd.array([1, 2, 3, 4, 5, 0, None], dtype="Int64")})
    assert task.labels(frame).tolist() == [0, 1, 1, 2, 2, -1, -1]
    assert task.num_classes == 3 and not task.binary


def test_density_labels_and_bad_task_specs():
    frame = pd.DataFrame({"density": pd.array(["A", "D", None, "C"], dtype="string")})
    assert get_task("density").labels(frame).tolist() == [0, 3, -1, 2]
    with pytest.raises(ValueError, match="unknown task 'cancer'"):
        get_task("cancer")
    with pytest.raises(ValueError, match="disjoint"):
        get_task("birads", ["1,2", "2,3"])
    with pytest.raises(ValueError, match="not in tasks"):
        get_tasks(["mass"], {"birads": ["1", "2"]})
    with pytest.raises(KeyError, match="no column 'malignant'"):
        get_task("malignancy").labels(frame)


def test_fraction_is_drawn_by_patient_and_keeps_every_class():
    patients, labels = _cohort()
    rows = sample_fraction(patients, labels, 0.01, seed=3)
    drawn = set(patients[rows])
    assert (labels[rows] >= 0).all()
    assert {0, 1} <= set(labels[rows].tolist())  # 1 % still holds a positive patient
    # every labelled breast of a drawn patient comes along, no other breast does
    expected = np.flatnonzero(np.isin(patients, list(drawn)) & (labels >= 0))
    assert rows.tolist() == expected.tolist()


def test_fraction_is_stratified_and_sized_per_stratum():
    patients, labels = _cohort()
    rows = sample_fraction(patients, labels, 0.1, seed=0)
    frame = pd.DataFrame({"patient": patients, "label": labels})
    stratum = frame[frame.label >= 0].groupby("patient").label.max()
    drawn = stratum[stratum.index.isin(set(patients[rows]))]
    for cls in (0, 1):
        assert (drawn == cls).sum() == max(1, round(0.1 * (stratum == cls).sum()))


def test_fraction_is_reproducible_per_seed_and_independent_of_row_order():
    patients, labels = _cohort()
    first = sample_fraction(patients, labels, 0.1, seed=1)
    assert first.tolist() == sample_fraction(patients, labels, 0.1, seed=1).tolist()
    assert set(patients[first]) != set(patients[sample_fraction(patients, labels, 0.1, seed=2)])
    order = np.random.default_rng(0).permutation(len(patients))
    shuffled = sample_fraction(patients[order], labels[order], 0.1, seed=1)
    assert set(patients[order][shuffled]) == set(patients[first])


def test_full_fraction_takes_every_labelled_row_and_bad_fractions_raise():
    patients, labels = _cohort()
    assert sample_fraction(patients, labels, 1.0, seed=0).tolist() == np.flatnonzero(labels >= 0).tolist()
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            sample_fraction(patients, labels, bad, seed=0)
    with pytest.raises(ValueError, match="no labelled rows"):
        sample_fraction(patients, np.full(len(patients), -1), 0.5, seed=0)


def test_a_patient_in_two_splits_is_refused():
    table = pd.DataFrame(
        {"dataset": ["d"] * 4, "patient_id": ["1", "1", "2", "2"], "split": ["train", "test", "val", "val"]}
    )
    with pytest.raises(ValueError, match="d/1"):
        check_patient_splits(table, "t.parquet")
    check_patient_splits(table.assign(split=["train", "train", "val", "val"]))
