from __future__ import annotations

import dataclasses
import json

import pytest

from mvmlm.config import ConfigError
from report_synthesis.facts import DEFAULT_FIELDS, BreastFacts, breast_facts
from report_synthesis.prompts import facts_text


def test_one_record_per_breast_with_its_views_and_breast_level_values(all_facts):
    assert sorted(all_facts) == [
        "toy/PAT-0001/EX-0001/L",
        "toy/PAT-0001/EX-0001/R",
        "toy/PAT-0002/EX-0002/L",
        "toy/PAT-0002/EX-0002/R",
        "toy/PAT-0003/EX-0003/L",
        "toy/PAT-0003/EX-0003/R",
    ]
    left = all_facts["toy/PAT-0001/EX-0001/L"]
    assert (left.views, left.age, left.density, left.birads) == (("CC", "MLO"), 61, "C", 4)
    assert (left.mass, left.mass_shape, left.mass_margin) == (True, "irregular", "spiculated")
    assert (left.calcification, left.calc_morphology, left.calc_distribution) == (True, "fine pleomorphic", "segmental")
    assert left.other_findings == ("architectural distortion",)
    assert (left.split, left.side) == ("train", "left")


def test_unknown_values_stay_unknown_and_are_not_written_into_the_prompt(facts):
    unknown = facts["toy/PAT-0002/EX-0002/L"]
    assert unknown.views == ("CC",)
    assert (unknown.age, unknown.density, unknown.birads, unknown.mass, unknown.calcification) == (None,) * 5
    assert unknown.other_findings is None
    assert facts_text(unknown) == "- Breast: left\n- Views: CC"


def test_empty_other_findings_means_known_none(facts):
    assert facts["toy/PAT-0002/EX-0002/R"].other_findings == ()
    assert "- Other findings: none" in facts_text(facts["toy/PAT-0002/EX-0002/R"])


def test_pathology_is_left_out_by_default_and_can_be_selected(all_facts, facts):
    assert "pathology" not in DEFAULT_FIELDS
    assert facts["toy/PAT-0001/EX-0001/L"].pathology is None
    assert all_facts["toy/PAT-0001/EX-0001/L"].pathology == "malignant"
    narrow = all_facts["toy/PAT-0001/EX-0001/L"].select(["birads"])
    assert (narrow.birads, narrow.density, narrow.mass, narrow.views) == (4, None, None, None)


def test_joined_lexicon_descriptors_are_normalised_and_distortion_becomes_another_finding(facts):
    cbis = facts["toy/PAT-0003/EX-0003/L"]
    assert (cbis.mass_shape, cbis.mass_margin) == ("irregular", "spiculated")
    assert cbis.other_findings == ("architectural distortion",)
    calcs = facts["toy/PAT-0003/EX-0003/R"]
    assert (calcs.calc_morphology, calcs.calc_distribution) == ("punctate", "clustered")


def test_descriptors_of_an_absent_finding_are_dropped(toy):
    table = toy
    table.loc[table.laterality.eq("R") & table.exam_id.eq("EX-0002"), "mass"] = 0
    benign = {f.breast_id: f for f in breast_facts(table)}["toy/PAT-0002/EX-0002/R"].select(DEFAULT_FIELDS)
    assert (benign.mass, benign.mass_shape, benign.mass_margin) == (False, None, None)


def test_unknown_field_name_is_a_config_error(facts):
    with pytest.raises(ConfigError, match="biopsy_date"):
        facts["toy/PAT-0001/EX-0001/L"].select(["birads", "biopsy_date"])


def test_table_without_id_columns_is_rejected(toy):
    with pytest.raises(KeyError, match="laterality"):
        breast_facts(toy.drop(columns=["laterality"]))


def test_joined_descriptors_split_into_lexicon_words_and_other_findings(toy):
    toy.loc[toy.exam_id == "EX-0001", "mass_shape"] = "irregular, architectural distortion"  # the CBIS adapter's form
    toy.loc[toy.exam_id == "EX-0003", "calc_morphology"] = "coarse popcorn-like"  # a hyphen inside a lexicon word
    by_id = {f.breast_id: f for f in breast_facts(toy)}
    left = by_id["toy/PAT-0001/EX-0001/L"]
    assert left.mass_shape == "irregular" and left.other_findings == ("architectural distortion",)
    assert by_id["toy/PAT-0003/EX-0003/R"].calc_morphology == "coarse popcorn-like"


def test_facts_round_trip_through_their_json_and_ids(all_facts):
    for facts in all_facts.values():
        ids = {"dataset": facts.dataset, "patient_id": facts.patient_id, "exam_id": facts.exam_id}
        restored = BreastFacts.from_dict(ids | json.loads(facts.to_json()))
        assert restored == dataclasses.replace(facts, split=None)
    with pytest.raises(KeyError, match="size"):
        BreastFacts.from_dict({"dataset": "d", "patient_id": "p", "exam_id": "e", "laterality": "L", "size": 2})
