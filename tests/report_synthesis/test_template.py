from __future__ import annotations

from report_synthesis import template_report
from report_synthesis.backends import BackendConfig, Request, create_backend
from report_synthesis.facts import FIELDS, breast_facts
from report_synthesis.postprocess import fact_check

LEFT = "toy/PAT-0001/EX-0001/L"


def test_template_reports_pass_the_fact_check_on_synthetic_exams():
    from mvmlm.data.synthetic.truth import sample_exams

    facts = [f.select(FIELDS) for f in breast_facts(sample_exams(40, seed=3))]
    assert len(facts) >= 70
    failures = {(f.breast_id, s): fact_check(template_report(f, s), f) for f in facts for s in range(4)}
    assert {key: reasons for key, reasons in failures.items() if reasons} == {}


def test_template_report_states_every_known_fact(all_facts):
    report = template_report(all_facts[LEFT], seed=0).lower()
    for fact in (
        "left",
        "cc",
        "mlo",
        "61",
        "heterogeneously dense",
        "bi-rads",
        "4",
        "irregular",
        "spiculated",
        "mass",
        "fine pleomorphic",
        "segmental",
        "calcifications",
        "architectural distortion",
        "malignant",
    ):
        assert fact in report, fact
    assert report.startswith("findings:") and "\nimpression:" in report


def test_equal_facts_give_varied_reports_but_a_seed_gives_one_report(facts):
    texts = {template_report(facts[LEFT], seed) for seed in range(12)}
    assert len(texts) >= 6
    assert template_report(facts[LEFT], 7) == template_report(facts[LEFT], 7)
    for f in facts.values():
        assert fact_check(template_report(f, 7), f) == []


def test_template_backend_answers_each_request_with_its_seed(facts):
    backend = create_backend(BackendConfig(name="template"))
    requests = [Request(f"{LEFT}#{v}", [], seed=v, facts=facts[LEFT]) for v in range(3)]
    generations = backend.generate(requests)
    assert [g.id for g in generations] == [r.id for r in requests]
    assert [g.text for g in generations] == [template_report(facts[LEFT], v) for v in range(3)]
