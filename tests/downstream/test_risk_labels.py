"""The labelling rules of the README's risk section on hand-made follow-up: a case is a cancer (in either breast)
diagnosed before k years, a control is known cancer-free for at least k years, anything else is censored; a
cancer at exactly k years belongs to the next horizon; exams after a diagnosis have no follow-up and are left out;
splits are per patient."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from downstream.risk.calibration import horizon_labels
from downstream.risk.metrics import mirai_labels, survival_arrays
from downstream.risk.run import exam_follow_up

from .test_risk import TINY
from .test_risk import embed_cache as embed_cache  # the synthetic EMBED cache fixture

YEARS = range(1, 6)
CASE, CONTROL, CENSORED = "case", "control", "censored"


def _outcome(years_to_cancer: float, years_to_last_followup: float, k: int) -> str:
    """The k-year outcome by the calibration's rule, checked against Mirai's targets of the same exam (Mirai's mask
    also hides a case's years after its cancer, so only "Mirai knows the year -> labelled here" holds both ways)."""
    label, weight = horizon_labels(*survival_arrays([years_to_cancer], [years_to_last_followup]), k)
    mirai = mirai_labels([years_to_cancer], [years_to_last_followup], max_followup=5)
    given = (years_to_cancer, years_to_last_followup, k)
    assert weight[0] > 0 or not mirai.y_mask[0, k - 1], given
    if weight[0] > 0:
        assert mirai.y_seq[0, k - 1] == label[0], given
    return CENSORED if weight[0] == 0 else CASE if label[0] else CONTROL


@pytest.mark.parametrize("k", YEARS)
def test_a_cancer_just_before_k_years_is_a_k_year_case_and_one_at_k_years_is_not(k):
    assert _outcome(k - 0.01, k - 0.01, k) == CASE
    assert _outcome(k, k, k) == CONTROL  # known cancer-free for k years
    if k < 5:
        assert _outcome(k, k, k + 1) == CASE
    assert _outcome(0.0, 0.0, k) == CASE  # found at this exam


@pytest.mark.parametrize("k", YEARS)
def test_cancer_free_follow_up_of_k_years_is_a_control_and_shorter_is_censored(k):
    assert _outcome(np.nan, k, k) == CONTROL
    assert _outcome(np.nan, k - 0.01, k) == CENSORED
    assert _outcome(np.nan, 9.0, k) == CONTROL


def test_a_cancer_after_five_years_makes_a_five_year_control():
    assert [_outcome(6.5, 6.5, k) for k in YEARS] == [CONTROL] * 5
    assert _outcome(5.0, 5.0, 5) == CONTROL
    assert not mirai_labels([6.5], [6.5]).positive[0]


def _exams(left: dict[str, float], right: dict[str, float]) -> pd.DataFrame:
    row = {"dataset": "d", "patient_id": "p1", "exam_id": "e1"}
    for side, values in (("L", left), ("R", right)):
        row |= {f"{side}_{name}": values.get(name, np.nan) for name in ("years_to_cancer", "years_to_last_followup")}
    return pd.DataFrame([row])


def test_a_cancer_in_either_breast_makes_the_exam_a_case_and_disagreeing_breasts_are_an_error():
    found = exam_follow_up(_exams({"years_to_last_followup": 2.5}, {"years_to_cancer": 2.5}))
    assert found.years_to_cancer.item() == 2.5 and _outcome(*found.iloc[0], 3) == CASE
    found = exam_follow_up(_exams({}, {"years_to_cancer": 1.5, "years_to_last_followup": 1.5}))  # one breast imaged
    assert found.iloc[0].tolist() == [1.5, 1.5]
    with pytest.raises(ValueError, match="exam d/p1/e1: years_to_cancer differs between breasts"):
        exam_follow_up(_exams({"years_to_cancer": 1.0}, {"years_to_cancer": 2.0}))


def test_exams_after_a_cancer_diagnosis_have_no_follow_up():
    from mvmlm.data.sources.embed import follow_up

    exams = pd.DataFrame(
        {
            "empi_anon": ["a", "a", "a", "b", "b"],
            "date": pd.to_datetime(["2010-01-01", "2012-01-01", "2013-01-01", "2010-01-01", "2014-01-01"]),
            "cancer": [False, True, False, False, False],
        }
    )
    found = follow_up(exams)
    days = 365.25
    np.testing.assert_allclose(found.years_to_cancer[:2], [730 / days, 0.0])
    np.testing.assert_allclose(found.years_to_last_followup[:2], [730 / days, 0.0])  # a case: to the diagnosis
    assert found.iloc[2].isna().all()  # after the diagnosis: neither a case nor a control
    assert found.years_to_cancer[3:].isna().all()
    np.testing.assert_allclose(found.years_to_last_followup[3:], [1461 / days, 0.0])


def test_the_risk_command_leaves_out_exams_without_follow_up_and_refuses_a_patient_in_two_splits(embed_cache, tmp_path):
    from downstream.risk import COMMAND
    from downstream.risk.run import load_risk_splits
    from mvmlm.data import schema
    from mvmlm.data.leakage import SplitError

    table = schema.read_table(embed_cache)
    test = table[table.split == "test"]
    gone = test.exam_id.iloc[0]
    after = table.assign(
        years_to_cancer=table.years_to_cancer.mask(table.exam_id == gone),
        years_to_last_followup=table.years_to_last_followup.mask(table.exam_id == gone),
    )
    path = embed_cache.parent / "after_diagnosis.parquet"
    schema.write_table(after, path)
    args = ["--config", TINY, f"data.table={path}", f"out={tmp_path}", "data.val_split=train"]
    splits = load_risk_splits(COMMAND.parse(args))
    kept = [e.split("\t")[1] for s in splits.values() for e in s.exam_ids]
    assert gone not in kept and set(test.exam_id) - {gone} <= set(kept)

    patient = test.patient_id.iloc[0]
    moved = table.assign(split=table.split.where(~((table.patient_id == patient) & (table.exam_id == gone)), "train"))
    if moved[moved.patient_id == patient].split.nunique() == 1:  # one exam per patient: split its two breasts
        first = moved.index[moved.patient_id == patient][0]
        moved.loc[first, "split"] = "val"
    schema.write_table(moved, path)
    with pytest.raises(SplitError, match=f"{patient}"):
        load_risk_splits(COMMAND.parse(args))
