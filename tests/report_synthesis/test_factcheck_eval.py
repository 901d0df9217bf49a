"""The fact check over the whole labelled evaluation set (report_synthesis/eval): the figures the issue asks for."""

from __future__ import annotations

import pytest

from report_synthesis.eval import CATEGORIES, CRITICAL, load_eval_set, score
from report_synthesis.facts import FIELDS
from report_synthesis.postprocess import REASON_CATEGORIES, clean, fact_check, reason_category

#: reason categories of the checker -> error categories of the set
REASON_TO_CATEGORY = {
    "laterality": "side",
    "mass": "presence",
    "calcification": "presence",
    "other finding": "presence",
}


@pytest.fixture(scope="module")
def reports():
    return load_eval_set()


@pytest.fixture(scope="module")
def result(reports):
    return score(lambda text, facts: fact_check(clean(text), facts), reports)


def test_the_set_is_large_and_covers_every_field_dataset_and_category(reports):
    assert len(reports) >= 150
    assert sum(r.faithful for r in reports) >= 60
    assert {r.facts.dataset for r in reports} == {"vindr", "cbis_ddsm", "embed", "cmmd", "rsna"}
    for name in FIELDS:
        assert any(getattr(r.facts, name) not in (None, False, ()) for r in reports), name
    assert {r.category for r in reports if not r.faithful} == set(CATEGORIES)


def test_no_unfaithful_report_of_a_critical_category_is_accepted(result):
    assert {c: result.accepted[c] for c in CRITICAL if result.accepted[c]} == {}


def test_at_most_two_percent_of_the_other_unfaithful_reports_are_accepted(result):
    for category in set(CATEGORIES) - set(CRITICAL):
        assert result.rate(category) <= 0.02, (category, [r.index for r in result.accepted_unfaithful])


def test_at_most_five_percent_of_faithful_reports_are_rejected(result):
    rejected = {r.index: fact_check(clean(r.text), r.facts) for r in result.rejected_faithful}
    assert result.rate("faithful") <= 0.05, rejected


def test_unfaithful_reports_are_rejected_for_their_own_error(reports):
    missed = {}
    for r in reports:
        if not r.faithful:
            reasons = fact_check(clean(r.text), r.facts)
            assert {reason_category(x) for x in reasons} <= set(REASON_CATEGORIES), reasons
            if r.category not in {REASON_TO_CATEGORY.get(c, c) for c in map(reason_category, reasons)}:
                missed[r.index] = (r.category, reasons)
    assert missed == {}
