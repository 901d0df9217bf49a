from __future__ import annotations

import pytest

from report_synthesis.postprocess import clean, fact_check, reason_category

LEFT = "toy/PAT-0001/EX-0001/L"  # BI-RADS 4, density C, irregular spiculated mass, calcifications, distortion, age 61
RIGHT = "toy/PAT-0001/EX-0001/R"  # BI-RADS 1, density C, no mass, no calcifications, age 61
UNKNOWN = "toy/PAT-0002/EX-0002/L"  # only laterality and the CC view are known

GOOD_LEFT = (
    "FINDINGS: The left breast is heterogeneously dense (ACR C). There is an irregular mass with spiculated margins "
    "and associated fine pleomorphic calcifications in a segmental distribution, with architectural distortion.\n"
    "IMPRESSION: Suspicious findings in the left breast. BI-RADS 4."
)


def test_clean_strips_thinking_markdown_fences_and_preamble():
    raw = (
        "<think>the facts say left, BI-RADS 1...</think>\nSure! Here is the report:\n```\n**FINDINGS:**  The left"
        "   breast is\theterogeneously dense.\n\n\n## IMPRESSION\n- BI-RADS 1: negative.\n```"
    )
    assert clean(raw) == "FINDINGS: The left breast is heterogeneously dense.\nIMPRESSION\nBI-RADS 1: negative."
    assert clean("<think>unterminated reasoning") == ""


@pytest.mark.parametrize(
    ("breast", "report"),
    [
        (LEFT, GOOD_LEFT),
        (
            LEFT,
            "Left breast, 61-year-old. Heterogeneously dense tissue, which may obscure small masses. A spiculated "
            "irregular mass is present. Calcifications: fine pleomorphic, segmental. Architectural distortion is "
            "seen. IMPRESSION: BI-RADS category 4A, suspicious.",
        ),
        (
            RIGHT,
            "FINDINGS: Right breast, CC and MLO views. Heterogeneously dense breast (density category C). No "
            "suspicious masses, calcifications, or architectural distortion.\nIMPRESSION: Negative. BI-RADS 1.",
        ),
        (RIGHT, "The right breast shows no mass; calcifications are absent. Impression: BI-RADS 1 (negative)."),
        (
            UNKNOWN,
            "FINDINGS: A single CC view of the left breast was obtained.\nIMPRESSION: Left breast, as described.",
        ),
    ],
)
def test_correct_reports_are_accepted(facts, breast, report):
    assert fact_check(report, facts[breast]) == []


@pytest.mark.parametrize(
    ("breast", "report", "category"),
    [
        (LEFT, GOOD_LEFT.replace("BI-RADS 4", "BI-RADS 5"), "birads"),
        (LEFT, GOOD_LEFT.replace("BI-RADS 4.", "no assessment."), "birads"),
        (LEFT, GOOD_LEFT.replace("left", "right"), "laterality"),
        (LEFT, GOOD_LEFT + " No suspicious findings in the right breast.", "laterality"),
        (LEFT, GOOD_LEFT.replace("Suspicious findings", "Bilateral findings"), "laterality"),
        (LEFT, GOOD_LEFT.replace("There is an irregular mass", "There is no mass, but an irregular area"), "mass"),
        (LEFT, GOOD_LEFT.replace("(ACR C)", "(ACR density B)"), "density"),
        (LEFT, GOOD_LEFT.replace("heterogeneously dense (ACR C)", "extremely dense"), "density"),
        (LEFT, GOOD_LEFT + " Patient is a 45-year-old woman.", "age"),
        (
            LEFT,
            GOOD_LEFT.replace(", with architectural distortion", ", without architectural distortion"),
            "other finding",
        ),
        (RIGHT, "FINDINGS: Right breast. A 1 cm oval mass is seen. IMPRESSION: BI-RADS 1.", "mass"),
        (RIGHT, "FINDINGS: Right breast. Scattered punctate calcifications. IMPRESSION: BI-RADS 1.", "calcification"),
        (RIGHT, "Right breast with focal asymmetry. No mass. No calcifications. BI-RADS 1.", "other finding"),
        (RIGHT, "MRN 8831204. Right breast: no mass, no calcifications. BI-RADS 1.", "identifier"),
        (RIGHT, "Exam of 03/14/2021: right breast, no mass, no calcifications. BI-RADS 1.", "identifier"),
        (RIGHT, "Patient PAT-0001, right breast: no mass, no calcifications. BI-RADS 1.", "identifier"),
        (RIGHT, "Dr. Smith: right breast, no mass, no calcifications. BI-RADS 1.", "identifier"),
        (UNKNOWN, "Left breast. No mass. BI-RADS 1.", "birads"),
        (UNKNOWN, "Left breast, extremely dense.", "density"),
        (UNKNOWN, "Left breast with an irregular mass.", "mass"),
        (UNKNOWN, "", "empty"),
    ],
)
def test_contradicting_or_inventing_reports_are_rejected(facts, breast, report, category):
    reasons = fact_check(report, facts[breast])
    assert category in {reason_category(r) for r in reasons}, reasons


def test_truncated_generation_is_rejected_even_if_correct(facts):
    assert fact_check(GOOD_LEFT, facts[LEFT], finish_reason="length") == ["truncated: max_tokens reached"]
    assert fact_check(GOOD_LEFT, facts[LEFT], finish_reason="stop") == []


def test_unselected_fields_must_not_be_stated(all_facts):
    only_side = all_facts[LEFT].select([])
    reasons = fact_check(GOOD_LEFT, only_side)
    assert {"birads", "density", "mass", "calcification"} <= {reason_category(r) for r in reasons}


@pytest.mark.parametrize(
    ("report", "category"),
    [
        (GOOD_LEFT.replace("irregular mass", "oval mass"), "descriptor"),
        (GOOD_LEFT.replace("spiculated margins", "circumscribed margins"), "descriptor"),
        (GOOD_LEFT.replace("fine pleomorphic calcifications", "calcifications"), "descriptor"),
        (GOOD_LEFT.replace("in a segmental distribution", "in a grouped distribution"), "descriptor"),
        (GOOD_LEFT.replace("There is an irregular mass", "There is a 1.8 cm irregular mass"), "measurement"),
        (GOOD_LEFT.replace("There is an irregular mass", "At 2 o'clock there is an irregular mass"), "location"),
        (GOOD_LEFT.replace("There is an irregular mass", "In the upper outer quadrant, an irregular mass"), "location"),
        (GOOD_LEFT + " Stable compared with the prior study.", "temporal"),
        (GOOD_LEFT + " The previously seen mass has resolved.", "temporal"),
        (GOOD_LEFT.replace("BI-RADS 4", "BI-RADS V"), "birads"),
        (GOOD_LEFT.replace("(ACR C)", "(ACR density 4)"), "density"),
        ("Patient Name: [Patient Name]\n" + GOOD_LEFT, "identifier"),
        (
            GOOD_LEFT.replace("Left breast", "Left breast, LCC and LMLO views").replace("(ACR C)", "(ACR C), LXCCL"),
            "views",
        ),
    ],
)
def test_wrong_descriptors_and_invented_details_are_rejected(facts, report, category):
    reasons = fact_check(report, facts[LEFT])
    assert category in {reason_category(r) for r in reasons}, reasons


@pytest.mark.parametrize(
    "report",
    [
        GOOD_LEFT.replace("with spiculated margins", "with spiculations").replace("fine pleomorphic", "pleomorphic"),
        GOOD_LEFT.replace("irregular mass", "irregularly shaped mass").replace("BI-RADS 4", "BI-RADS IV"),
        GOOD_LEFT.replace("BI-RADS 4", "BI-RADS 4B") + " Dense tissue may obscure small masses.",
        GOOD_LEFT
        + " No suspicious axillary lymph nodes. Recommend 6-month follow-up is not indicated; biopsy advised.",
    ],
)
def test_lexicon_synonyms_and_boilerplate_are_accepted(facts, report):
    assert fact_check(report, facts[LEFT]) == []


def test_identifier_reasons_never_quote_the_identifier(facts):
    reasons = fact_check("Patient PAT-0001, Dr. Smith, 03/14/2021: " + GOOD_LEFT, facts[LEFT])
    assert reasons and not any(s in r for r in reasons for s in ("PAT-0001", "Smith", "03/14"))


def test_stated_facts_must_agree_with_the_table_and_the_text(facts):
    from report_synthesis.extract import extract
    from report_synthesis.structured import check_stated

    truth = facts[LEFT].reportable()
    assert fact_check(GOOD_LEFT, facts[LEFT], stated_facts=truth) == []
    assert fact_check(GOOD_LEFT, facts[LEFT], stated_facts={**truth, "birads": 5}) == [
        "stated facts: birads 5, the facts say 4"
    ]
    assert check_stated({"mass_shape": "irregular"}, facts[LEFT], extract("Left breast, oval mass.")) == [
        "stated facts: mass_shape 'irregular' disagrees with the report text"
    ]
    assert check_stated({"mass_shape": "ill-defined"}, facts[LEFT], extract(GOOD_LEFT))[0].startswith(
        "stated facts: mass_shape"
    )
    assert reason_category(fact_check(GOOD_LEFT, facts[LEFT], stated_facts={"size": "2 cm"})[0]) == "stated facts"
