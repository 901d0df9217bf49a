from __future__ import annotations

from report_synthesis.prompts import FewShotExample, PromptConfig, build_messages, prompt_hash

LEFT = "toy/PAT-0001/EX-0001/L"


def test_messages_are_system_then_few_shot_then_facts_between_prefix_and_suffix(facts):
    cfg = PromptConfig(
        prefix="FACTS FOLLOW",
        suffix="NOW WRITE",
        few_shot=[FewShotExample(facts="- Breast: right", report="FINDINGS: ... BI-RADS 1.")],
    )
    messages = build_messages(facts[LEFT], cfg)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "FACTS FOLLOW\n\n- Breast: right\n\nNOW WRITE"
    assert messages[2]["content"] == "FINDINGS: ... BI-RADS 1."
    user = messages[-1]["content"]
    assert user.startswith("FACTS FOLLOW\n\n- Breast: left\n") and user.endswith("\n\nNOW WRITE")
    for line in (
        "- BI-RADS assessment: 4 (suspicious)",
        "- Breast density: C (heterogeneously dense)",
        "- Mass: present; shape: irregular; margin: spiculated",
        "- Age: 61 years",
        "- Calcifications: present; morphology: fine pleomorphic; distribution: segmental",
    ):
        assert line in user


def test_identifiers_never_reach_the_model(all_facts):
    for facts in all_facts.values():
        text = " ".join(m["content"] for m in build_messages(facts, PromptConfig()))
        assert "PAT-" not in text and "EX-" not in text and "toy" not in text


def test_prompt_hash_is_stable_and_changes_with_the_prompt_or_the_fields():
    base = prompt_hash(PromptConfig(), ["birads", "mass"])
    assert base == prompt_hash(PromptConfig(), ["birads", "mass"]) and len(base) == 12
    assert base != prompt_hash(PromptConfig(), ["birads"])
    assert base != prompt_hash(PromptConfig(system="Be brief."), ["birads", "mass"])
    assert base != prompt_hash(PromptConfig(few_shot=[FewShotExample(facts="x", report="y")]), ["birads", "mass"])
