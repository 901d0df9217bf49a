"""Clean a generation and check it against the facts: a report must not contradict or add to the table.

:func:`fact_check` returns rejection reasons as ``"<category>: <detail>"`` strings (empty list = accepted):
laterality, BI-RADS category, density, age, finding presence (mass, calcification, other findings),
identifiers and dates, truncation. Rules are deliberately strict: a rejected generation is retried and
finally replaced by the template report, so a false rejection costs variety, a false acceptance costs truth.
"""

from __future__ import annotations

import re

from report_synthesis.facts import OTHER_FINDINGS, BreastFacts

__all__ = ["clean", "fact_check", "reason_category"]

_THINK = re.compile(r"<(think|thinking|reasoning)>.*?(</\1>|\Z)", re.S | re.I)
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok)\b[^\n]*\n|(?:here\s+is|here's|below\s+is)[^\n]*:\s*\n?)", re.I
)
_FENCE = re.compile(r"^\s*```[a-z]*\s*$", re.M)
_MARKDOWN = re.compile(r"(\*\*|__|\*|`|^#{1,6}\s*|^\s*[-*+]\s+|^\s*>\s?)", re.M)

_SENTENCE = re.compile(r"[.;]+(?:\s|$)|\n")
_NEGATION = re.compile(r"\b(?:no|not|without|negative for|absence of|absent|free of|none|neither|nor)\b", re.I)
_SCOPE_END = re.compile(r"\b(?:but|however|although|though|whereas|yet|except|there (?:is|are))\b", re.I)
_POST_NEGATION = re.compile(
    r"^\W*(?:\w+\W+){0,3}?(?:absent|none|not (?:seen|identified|present|visualized|demonstrated))\b", re.I
)
_BOILERPLATE = re.compile(
    r"\b(?:may|can|could|might)\s+(?:obscure|hide|mask)\s+(?:small\s+)?(?:masses|lesions)\b", re.I
)

_FINDINGS = {
    "mass": re.compile(r"\bmass(?:es)?\b", re.I),
    "calcification": re.compile(r"\b(?:micro)?calcific\w*|\bcalcified\b", re.I),
}
_OTHER = {name: re.compile(r"\b" + name.replace(" ", r"\s+") + r"\b", re.I) for name in OTHER_FINDINGS}
_OTHER["asymmetry"] = re.compile(r"\basymmetr\w*", re.I)  # any kind of asymmetry

_SIDES = {"left": re.compile(r"\bleft\b", re.I), "right": re.compile(r"\bright\b", re.I)}
_BILATERAL = re.compile(r"\b(bilateral(?:ly)?|both breasts)\b", re.I)
_BIRADS = re.compile(
    r"\b(?:BI-?\s?RADS|category)\b[^0-9A-Za-z]{0,3}(?:(?:category|assessment|score)[^0-9A-Za-z]{0,3})?([0-6])(?![0-9])",
    re.I,
)
_DENSITY_BEFORE = re.compile(r"\b(?:density|composition)\W*$", re.I)  # "density category 3" is not BI-RADS
_DENSITY_LETTER = re.compile(r"(?i:\b(?:density|composition|ACR)(?:\s+(?:category|type|grade))?)\s*[:(]?\s*([A-D])\b")
_DENSITY_WORDS = {
    "A": re.compile(r"\b(?:almost entirely|predominantly|entirely) fat(?:ty)?\b|\bfatty replaced\b", re.I),
    "B": re.compile(r"\bscattered (?:areas of )?fibroglandular\b", re.I),
    "C": re.compile(r"\bheterogeneously dense\b", re.I),
    "D": re.compile(r"\bextremely dense\b", re.I),
}
_AGE = re.compile(
    r"\b(\d{1,3})\s*(?:-|\s)?(?:years?|yrs?)(?:\s*-?\s*old|\s+of\s+age)\b|\bage[d]?\s*:?\s*(\d{1,3})\b|\b(\d{1,3})\s*y/?o\b",
    re.I,
)
_IDENTIFIERS = {
    "date": re.compile(
        r"\b\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}\b|\b(?:19|20)\d{2}\b|"
        r"\b(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sept?(?:ember)?|"
        r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\b\.?\s+\d{1,2}\b",
        re.I,
    ),
    "long number": re.compile(r"\d{5,}"),
    "id label": re.compile(
        r"\b(?:mrn|accession|medical record|patient (?:id|name)|date of birth|dob|ssn|id\s*(?:no|number|#|:))", re.I
    ),
    "name": re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr)\.?\s+[A-Z][a-z]+"),
    "contact": re.compile(r"\S+@\S+\.\w+|\b\d{3}[-.\s]\d{3}[-.\s]\d{4}\b"),
}


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


def _claims(sentences: list[str], term: re.Pattern) -> tuple[bool, bool]:
    """Whether ``sentences`` assert and whether they negate the finding matched by ``term`` (NegEx-style scopes)."""
    asserted = negated = False
    for sentence in sentences:
        for match in term.finditer(sentence):
            before = _SCOPE_END.split(sentence[: match.start()])[-1]
            after = sentence[match.end() :]
            if _NEGATION.search(before) or _POST_NEGATION.search(after):
                negated = True
            else:
                asserted = True
    return asserted, negated


def _presence(category: str, truth: bool | None, sentences: list[str], term: re.Pattern, label: str = "") -> list[str]:
    asserted, negated = _claims(sentences, term)
    what = f"{category}: {label + ' ' if label else ''}"
    if truth is None:
        return [f"{what}mentioned although unknown"] if asserted else []
    if truth and not asserted:
        return [f"{what}present but {'denied' if negated else 'not mentioned'}"]
    if not truth and asserted:
        return [f"{what}invented (the facts say none)"]
    return []


def _other_findings(facts: BreastFacts, sentences: list[str]) -> list[str]:
    listed = facts.other_findings or ()
    reasons = []
    for name, term in _OTHER.items():
        if name in listed:
            reasons += _presence("other finding", True, sentences, term, name)
        elif not (name == "asymmetry" and any("asymmetry" in f for f in listed)) and _claims(sentences, term)[0]:
            reasons.append(f"other finding: {name} invented")
    return reasons


def _identifiers(facts: BreastFacts, text: str) -> list[str]:
    reasons = [f"identifier: {kind} {m.group(0)!r}" for kind, rx in _IDENTIFIERS.items() if (m := rx.search(text))]
    lowered = text.lower()
    for value in (facts.patient_id, facts.exam_id):
        if len(value) >= 4 and value.lower() in lowered:
            reasons.append(f"identifier: contains the id {value!r}")
    return reasons


def _numbers(facts: BreastFacts, text: str) -> list[str]:
    reasons = []
    stated = {
        int(m.group(1))
        for m in _BIRADS.finditer(text)
        if not _DENSITY_BEFORE.search(text[max(0, m.start() - 40) : m.start()])
    }
    if facts.birads is None and stated:
        reasons.append(f"birads: states {sorted(stated)} although unknown")
    elif facts.birads is not None and stated - {facts.birads}:
        reasons.append(f"birads: states {sorted(stated)}, the facts say {facts.birads}")
    elif facts.birads is not None and not stated:
        reasons.append(f"birads: category {facts.birads} not stated")
    densities = set(_DENSITY_LETTER.findall(text))
    densities |= {letter for letter, rx in _DENSITY_WORDS.items() if rx.search(text)}
    if densities and facts.density is None:
        reasons.append(f"density: states {sorted(densities)} although unknown")
    elif densities - {facts.density, None}:
        reasons.append(f"density: states {sorted(densities)}, the facts say {facts.density}")
    ages = {int(next(g for g in m.groups() if g)) for m in _AGE.finditer(text)}
    if ages and facts.age is None:
        reasons.append("age: stated although unknown")
    elif ages - {facts.age, None}:
        reasons.append(f"age: states {sorted(ages)}, the facts say {facts.age}")
    return reasons


def fact_check(text: str, facts: BreastFacts, finish_reason: str | None = None) -> list[str]:
    """Why ``text`` may not stand as the report of ``facts`` (empty list = accepted)."""
    if not text.strip():
        return ["empty: no report text"]
    if finish_reason == "length":
        return ["truncated: max_tokens reached"]
    reasons = _identifiers(facts, text)
    other = "right" if facts.side == "left" else "left"
    if _SIDES[other].search(text) or _BILATERAL.search(text):
        reasons.append(f"laterality: mentions the {other} side or both breasts, the facts say {facts.side}")
    if not _SIDES[facts.side].search(text):
        reasons.append(f"laterality: the {facts.side} side is not named")
    reasons += _numbers(facts, text)
    sentences = _SENTENCE.split(_BOILERPLATE.sub("", text))
    for name, term in _FINDINGS.items():
        reasons += _presence(name, getattr(facts, name), sentences, term)
    reasons += _other_findings(facts, sentences)
    return reasons
