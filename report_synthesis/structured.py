"""Structured generation: the model answers ``{"report": ..., "stated_facts": {...}}`` under a JSON schema.

Off by default (``backend.vllm.structured`` / ``backend.openai.structured``). The schema is enforced by the
backend's structured-output support (vLLM's ``StructuredOutputsParams(json=...)``, the OpenAI ``response_format``
``json_schema``), so the answer always parses; :func:`check_stated` then rejects a generation whose
``stated_facts`` disagree with the table or with what the fact check reads in its own report text.
"""

from __future__ import annotations

import json

from report_synthesis.backends import Generation
from report_synthesis.extract import Stated, descriptor_groups
from report_synthesis.facts import FIELDS, BreastFacts

__all__ = ["SCHEMA", "INSTRUCTION", "check_stated", "parse", "with_instruction"]

_TYPES = {
    "laterality": {"type": "string", "enum": ["L", "R"]},
    "views": {"type": ["array", "null"], "items": {"type": "string"}},
    "age": {"type": ["integer", "null"]},
    "density": {"type": ["string", "null"], "enum": ["A", "B", "C", "D", None]},
    "birads": {"type": ["integer", "null"], "minimum": 0, "maximum": 6},
    "mass": {"type": ["boolean", "null"]},
    "calcification": {"type": ["boolean", "null"]},
    "other_findings": {"type": ["array", "null"], "items": {"type": "string"}},
}
_KEYS = ("laterality", *FIELDS)
_DESCRIPTORS = ("mass_shape", "mass_margin", "calc_morphology", "calc_distribution")
#: JSON schema of a structured answer (every key required, ``null`` = not stated: what strict modes demand)
SCHEMA = {
    "type": "object",
    "properties": {
        "report": {"type": "string"},
        "stated_facts": {
            "type": "object",
            "properties": {key: _TYPES.get(key, {"type": ["string", "null"]}) for key in _KEYS},
            "required": list(_KEYS),
            "additionalProperties": False,
        },
    },
    "required": ["report", "stated_facts"],
    "additionalProperties": False,
}
INSTRUCTION = (
    'Answer with one JSON object: {"report": the report text, "stated_facts": the facts your report states, '
    f"under the keys {', '.join(_KEYS)}, with null for what it does not state}}."
)


def with_instruction(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """``messages`` with :data:`INSTRUCTION` appended to the last user message."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return [{**m, "content": f"{m['content']}\n\n{INSTRUCTION}"} if i == last else m for i, m in enumerate(messages)]


def parse(request_id: str, text: str, finish_reason: str | None) -> Generation:
    """A structured answer as a Generation (report text + ``stated_facts``), or one with an error."""
    try:
        answer = json.loads(text)
        report, stated = answer["report"], answer["stated_facts"]
        if not isinstance(report, str) or not isinstance(stated, dict):
            raise TypeError("report must be a string and stated_facts an object")
    except (ValueError, KeyError, TypeError) as exc:
        return Generation(request_id, error=f"structured output: not a report/stated_facts object ({exc})")
    return Generation(request_id, report, finish_reason, stated_facts=stated)


def _norm(key: str, value: object) -> object:
    if isinstance(value, list | tuple):
        return frozenset(str(v).strip().lower() for v in value)
    if isinstance(value, str):
        text = value.strip().lower()
        return frozenset(descriptor_groups(text)) or text if key in _DESCRIPTORS else text
    return value


def _against_text(key: str, said: object, text: Stated) -> bool:
    """Whether the report text, as the fact check reads it, agrees with ``said`` (silence agrees)."""
    if key == "laterality":
        return {"L": "left", "R": "right"}.get(said) in text.sides
    found = {"birads": text.birads, "density": text.density, "age": text.ages}.get(key)
    if found is not None:
        return not found or said in found
    if key in ("mass", "calcification"):
        return text.asserted(key) == said
    if key in _DESCRIPTORS:
        return descriptor_groups(str(said).lower()) <= text.descriptors
    if key == "other_findings":
        return all(text.asserted(str(f).lower()) for f in said if str(f).lower() in text.findings)
    return True


def check_stated(stated: dict, facts: BreastFacts, text: Stated) -> list[str]:
    """Reasons (category ``stated facts``) why ``stated`` disagrees with the facts or with the report ``text``."""
    unknown = sorted(set(stated) - set(_KEYS))
    if unknown:
        return [f"stated facts: unknown key(s) {unknown}"]
    truth = facts.reportable()
    reasons = []
    for key in _KEYS:
        said = stated.get(key)
        if said is None:
            continue
        if _norm(key, said) != _norm(key, truth.get(key)):
            reasons.append(f"stated facts: {key} {said!r}, the facts say {truth.get(key, 'unknown')!r}")
        elif not _against_text(key, said, text):
            reasons.append(f"stated facts: {key} {said!r} disagrees with the report text")
    return reasons
