"""Clean a generation and check it against the facts: a report must not contradict or add to the table.

:func:`fact_check` returns rejection reasons as ``"<category>: <detail>"`` strings (empty list = accepted).
Categories: laterality, views, age, density, birads, mass, calcification, other finding (presence, asserted vs
negated), descriptor (BI-RADS lexicon groups with synonyms, both ways: nothing stated that the facts do not hold,
nothing the facts hold left out), pathology, measurement, location, temporal (comparisons and history), identifier
(ids, dates, names, placeholders), empty, truncated. What a text states is read by
:func:`report_synthesis.extract.extract`. Rules are deliberately strict: a rejected generation is retried and
finally replaced by the template report, so a false rejection costs variety, a false acceptance costs truth.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from report_synthesis.extract import RuleContext, Stated, descriptor_groups, extract
from report_synthesis.facts import OTHER_FINDINGS, BreastFacts
from report_synthesis.structured import check_stated

__all__ = ["REASON_CATEGORIES", "clean", "compare", "fact_check", "reason_category"]

#: Every category a rejection reason of :func:`fact_check` can have (the part before the first ``:``).
REASON_CATEGORIES = (
    "empty",
    "truncated",
    "identifier",
    "laterality",
    "views",
    "birads",
    "density",
    "age",
    "mass",
    "calcification",
    "other finding",
    "descriptor",
    "pathology",
    "measurement",
    "location",
    "temporal",
    "stated facts",
)

_THINK = re.compile(r"<(think|thinking|reasoning)>.*?(</\1>|\Z)", re.S | re.I)
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok)\b[^\n]*\n|(?:here\s+is|here's|below\s+is)[^\n]*:\s*\n?)", re.I
)
_FENCE = re.compile(r"^\s*```[a-z]*\s*$", re.M)
_MARKDOWN = re.compile(r"(\*\*|__|\*|`|^#{1,6}\s*|^\s*[-*+]\s+|^\s*>\s?)", re.M)


def clean(text: str) -> str:
    """Strip thinking tags, code fences, markdown and chatty preambles; normalise whitespace per line."""
    text = _THINK.sub("", text or "")
    text = _FENCE.sub("", text)
    text = _PREAMBLE.sub("", text.lstrip(), count=1)
    text = _MARKDOWN.sub("", text)
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def reason_category(reason: str) -> str:
    """The part of a rejection reason before the first ``:`` (for counting)."""
    return reason.split(":", 1)[0]


def _presence(category: str, truth: bool | None, stated: Stated, name: str, label: str = "") -> list[str]:
    what = f"{category}: {label + ' ' if label else ''}"
    if truth is None:
        return [f"{what}mentioned although unknown"] if stated.asserted(name) else []
    if truth and not stated.asserted(name):
        return [f"{what}present but {'denied' if stated.negated(name) else 'not mentioned'}"]
    if not truth and stated.asserted(name):
        return [f"{what}invented (the facts say none)"]
    return []


def _other_findings(facts: BreastFacts, stated: Stated) -> list[str]:
    listed = facts.other_findings or ()
    reasons = []
    for name in (*OTHER_FINDINGS, "asymmetry"):
        if name in listed:
            reasons += _presence("other finding", True, stated, name, name)
        elif stated.asserted(name) and not (name == "asymmetry" and any("asymmetry" in f for f in listed)):
            reasons.append(
                f"other finding: {name} {'mentioned although unknown' if facts.other_findings is None else 'invented'}"
            )
    return reasons


def _descriptors(facts: BreastFacts, stated: Stated, text: str) -> list[str]:
    values = [
        value
        for flag, names in (
            (facts.mass, ("mass_shape", "mass_margin")),
            (facts.calcification, ("calc_morphology", "calc_distribution")),
        )
        if flag
        for value in (getattr(facts, n) for n in names)
        if value
    ]
    known = set().union(*(descriptor_groups(v) for v in values)) if values else set()
    reasons = [
        f"descriptor: states {g!r}, the facts say {', '.join(values) or 'none'}"
        for g in sorted(stated.descriptors - known)
    ]
    for value in values:
        groups = descriptor_groups(value)
        if groups - stated.descriptors if groups else value.lower() not in text.lower():
            reasons.append(f"descriptor: {value!r} not stated")
    return reasons


def _identifiers(facts: BreastFacts, stated: Stated, text: str) -> list[str]:
    """Identifier reasons name the kind found, never the text (reasons are stored in corpora and audits)."""
    reasons = [f"identifier: {kind}" for kind in stated.identifiers]
    lowered = text.lower()
    for name, value in (("patient", facts.patient_id), ("exam", facts.exam_id)):
        if len(value) >= 4 and value.lower() in lowered:
            reasons.append(f"identifier: contains the {name} id")
    return reasons


def _known(category: str, truth, stated: set, unknown_ok: bool = False) -> list[str]:
    """A single-valued fact: stated values must equal the truth; none may be stated when it is unknown."""
    if truth is None:
        return [] if not stated or unknown_ok else [f"{category}: states {sorted(stated)} although unknown"]
    if stated - {truth}:
        return [f"{category}: states {sorted(stated)}, the facts say {truth}"]
    return []


def compare(stated: Stated, facts: BreastFacts, text: str) -> list[str]:
    """Rejection reasons for a report that states ``stated`` (read from ``text``) for ``facts``."""
    reasons = _identifiers(facts, stated, text)
    other = "right" if facts.side == "left" else "left"
    if other in stated.sides or stated.bilateral:
        reasons.append(f"laterality: mentions the {other} side or both breasts, the facts say {facts.side}")
    if facts.side not in stated.sides:
        reasons.append(f"laterality: the {facts.side} side is not named")
    if stated.views - set(facts.views or ()):
        reasons.append(f"views: states {sorted(stated.views)}, the facts say {list(facts.views or ['unknown'])}")
    reasons += _known("birads", facts.birads, stated.birads)
    if facts.birads is not None and not stated.birads:
        reasons.append(f"birads: category {facts.birads} not stated")
    reasons += _known("density", facts.density, stated.density)
    if stated.ages and facts.age is None:
        reasons.append("age: stated although unknown")
    elif stated.ages - {facts.age}:
        reasons.append(f"age: states {sorted(stated.ages)}, the facts say {facts.age}")
    for name in ("mass", "calcification"):
        reasons += _presence(name, getattr(facts, name), stated, name)
    reasons += _other_findings(facts, stated)
    reasons += _descriptors(facts, stated, text)
    reasons += _known("pathology", facts.pathology, stated.pathology)
    for category, found in (
        ("measurement", stated.measurements),
        ("location", stated.locations),
        ("temporal", stated.temporal),
    ):
        if found:
            reasons.append(f"{category}: {', '.join(repr(f) for f in dict.fromkeys(found))} (not among the facts)")
    return reasons


def fact_check(
    text: str,
    facts: BreastFacts,
    finish_reason: str | None = None,
    context: Callable[[str], RuleContext] = RuleContext,
    stated_facts: dict | None = None,
) -> list[str]:
    """Why the cleaned ``text`` may not stand as the report of ``facts`` (empty list = accepted).

    ``stated_facts`` (a structured answer's own account of its report) must agree with the facts and the text.
    """
    if not text.strip():
        return ["empty: no report text"]
    if finish_reason == "length":
        return ["truncated: max_tokens reached"]
    stated = extract(text, context)
    reasons = compare(stated, facts, text)
    return reasons if stated_facts is None else reasons + check_stated(stated_facts, facts, stated)
