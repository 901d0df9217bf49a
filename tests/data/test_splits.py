from __future__ import annotations

import os

import pandas as pd

from mvmlm.data.splits import DEFAULT_TEST_FRACTION, patient_split, source_less_split


def test_patients_never_span_two_splits_and_result_is_order_independent():
    patients = pd.Series([f"p{i // 4}" for i in range(400)])
    split = patient_split(patients, seed=3, val_fraction=0.2, test_fraction=0.1)
    assert (pd.DataFrame({"p": patients, "s": split}).groupby("p").s.nunique() == 1).all()
    counts = split.groupby(patients).first().value_counts()
    assert counts["val"] == 20 and counts["test"] == 10 and counts["train"] == 70
    shuffled = patients.sample(frac=1, random_state=0)
    again = patient_split(shuffled, seed=3, val_fraction=0.2, test_fraction=0.1)
    assert (again.reindex(patients.index) == split).all()
    assert not (patient_split(patients, seed=4, val_fraction=0.2, test_fraction=0.1) == split).all()


def test_fixed_source_split_is_kept():
    patients = pd.Series(["a", "a", "b", "c", "d", "e"])
    fixed = pd.Series(["test", "test", None, None, None, None])
    split = patient_split(patients, seed=0, val_fraction=0.25, fixed=fixed)
    assert list(split[:2]) == ["test", "test"]
    assert set(split[2:]) <= {"train", "val"} and (split[2:] == "val").sum() == 1


def test_source_less_split_holds_out_the_default_test_fraction():
    patients = pd.Series([f"p{i // 2}" for i in range(200)])
    split = source_less_split(patients, seed=1, val_fraction=0.1)
    counts = split.groupby(patients).first().value_counts()
    assert counts["test"] == DEFAULT_TEST_FRACTION * 100 and counts["val"] == 10
    assert split.equals(patient_split(patients, seed=1, val_fraction=0.1, test_fraction=DEFAULT_TEST_FRACTION))


def test_a_few_training_patients_still_give_a_validation_patient():
    patients = pd.Series(["a", "a", "b", "c", "c"])
    split = patient_split(patients, seed=0, val_fraction=0.1)
    per_patient = split.groupby(patients).first()
    assert (per_patient == "val").sum() == 1 and (per_patient == "train").sum() == 2


def test_vindr_like_fixed_test_split_keeps_one_val_patient_of_three():
    patients = pd.Series(["t1", "t2", "a", "b", "c"])
    fixed = pd.Series(["test", "test", None, None, None])
    split = patient_split(patients, seed=5, val_fraction=0.1, fixed=fixed)
    assert list(split[:2]) == ["test", "test"] and sorted(split[2:]) == ["train", "train", "val"]


def test_a_small_test_share_holds_out_one_patient_and_leaves_one_for_training():
    patients = pd.Series(["a", "b", "c"])
    split = patient_split(patients, seed=0, val_fraction=0.1, test_fraction=0.1)
    assert sorted(split) == ["test", "train", "val"]


def test_a_single_patient_stays_in_training():
    split = patient_split(pd.Series(["a", "a"]), seed=0, val_fraction=0.1, test_fraction=0.2)
    assert (split == "train").all()


def test_no_validation_share_means_no_validation_patient():
    split = patient_split(pd.Series(["a", "b", "c"]), seed=0, val_fraction=0.0)
    assert (split == "train").all()


def test_split_command_keeps_test_redraws_the_rest_and_keeps_cache_paths_valid(synthetic_dataset, tmp_path):
    from mvmlm.cli import main as mvmlm
    from mvmlm.data import schema
    from mvmlm.data.preprocess import read_cached_table

    _, truth = synthetic_dataset("vindr", exams=16)
    cache = tmp_path / "cache"
    cache.mkdir()
    table = truth.assign(cache_path=[f"images/{i}.npy" for i in truth.image_id])
    schema.write_table(table, cache / "table.parquet")
    out = tmp_path / "elsewhere" / "resplit.parquet"
    assert mvmlm(["split", "--table", str(cache / "table.parquet"), "--out", str(out), "val_fraction=0.5"]) == 0
    resplit = read_cached_table(out)
    found = dict(zip(resplit["image_id"], map(os.path.normpath, resplit["cache_path"]), strict=True))
    assert found == {i: str(cache.resolve() / p) for i, p in zip(table["image_id"], table["cache_path"], strict=True)}
    test = table["split"] == "test"
    assert (resplit.loc[test, "split"] == "test").all() and not (resplit.loc[~test, "split"] == "test").any()
    assert resplit.groupby("patient_id")["split"].nunique().max() == 1
    trainval = resplit.loc[~test].drop_duplicates("patient_id")["split"].value_counts()
    assert abs(trainval["val"] - trainval["train"]) <= 1  # half of the non-test patients
    again = tmp_path / "again.parquet"
    mvmlm(["split", "--table", str(cache / "table.parquet"), "--out", str(again), "val_fraction=0.5"])
    assert schema.read_table(again)["split"].equals(schema.read_table(out)["split"])


def test_split_command_refuses_to_overwrite_its_input(synthetic_dataset, tmp_path, capsys):
    from mvmlm.cli import main as mvmlm
    from mvmlm.data import schema

    _, truth = synthetic_dataset("vindr", exams=4)
    schema.write_table(truth, tmp_path / "t.parquet")
    assert mvmlm(["split", "--table", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "t.parquet")]) == 2
    assert "is the input table" in capsys.readouterr().err
