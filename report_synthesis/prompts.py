"""The chat prompt: system instructions, optional few-shot examples, and the facts between a prefix and a suffix.

The prompt hash (over the prompt version, the texts, the few-shot examples and the selected fields) is
stored with every report, so a corpus never mixes outputs of different prompts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from mvmlm.config import MISSING
from report_synthesis.facts import BreastFacts

__all__ = ["PROMPT_VERSION", "FewShotExample", "PromptConfig", "facts_text", "build_messages", "prompt_hash"]

#: Bump when :func:`facts_text` or :func:`build_messages` change what the model sees.
PROMPT_VERSION = 1

DENSITY_WORDS = {
    "A": "almost entirely fatty",
    "B": "scattered areas of fibroglandular density",
    "C": "heterogeneously dense",
    "D": "extremely dense",
}
BIRADS_WORDS = {
    0: "incomplete, needs additional imaging evaluation",
    1: "negative",
    2: "benign",
    3: "probably benign",
    4: "suspicious",
    5: "highly suggestive of malignancy",
    6: "known biopsy-proven malignancy",
}

SYSTEM = (
    "You are a breast radiologist writing a concise screening mammography report for one breast, in standard "
    "radiology style: a FINDINGS section, then an IMPRESSION section that gives the assessment as 'BI-RADS <n>'. "
    "State every listed fact and nothing else: do not add findings, sizes, locations, comparisons or history, and "
    "do not mention anything that is not listed. Always name the side of the breast. Never write names, "
    "identifiers or dates. Answer with the report text only: no preamble, no markdown, no commentary."
)
PREFIX = "Write the mammography report for this breast from the following facts:"
SUFFIX = "Report (FINDINGS, then IMPRESSION):"


@dataclass
class FewShotExample:
    facts: str = MISSING  # the facts block as the model sees it (see facts_text)
    report: str = MISSING  # the answer to imitate


@dataclass
class PromptConfig:
    system: str = SYSTEM
    prefix: str = PREFIX
    suffix: str = SUFFIX
    few_shot: list[FewShotExample] = field(default_factory=list)


def _finding(name: str, present: bool | None, details: Sequence[tuple[str, str | None]]) -> str | None:
    if present is None:
        return None
    if not present:
        return f"{name}: none"
    extra = "".join(f"; {label}: {value}" for label, value in details if value)
    return f"{name}: present{extra}"


def facts_text(facts: BreastFacts) -> str:
    """The known facts as ``- key: value`` lines (unknown facts are left out)."""
    lines = [f"Breast: {facts.side}"]
    if facts.views:
        lines.append(f"Views: {', '.join(facts.views)}")
    if facts.age is not None:
        lines.append(f"Age: {facts.age} years")
    if facts.density is not None:
        lines.append(f"Breast density: {facts.density} ({DENSITY_WORDS[facts.density]})")
    if facts.birads is not None:
        lines.append(f"BI-RADS assessment: {facts.birads} ({BIRADS_WORDS[facts.birads]})")
    lines.append(_finding("Mass", facts.mass, [("shape", facts.mass_shape), ("margin", facts.mass_margin)]))
    lines.append(
        _finding(
            "Calcifications",
            facts.calcification,
            [("morphology", facts.calc_morphology), ("distribution", facts.calc_distribution)],
        )
    )
    if facts.other_findings is not None:
        lines.append(f"Other findings: {', '.join(facts.other_findings) or 'none'}")
    if facts.pathology is not None:
        lines.append(f"Pathology: {facts.pathology}")
    return "\n".join(f"- {line}" for line in lines if line)


def _user(cfg: PromptConfig, facts_block: str) -> str:
    return "\n\n".join(part for part in (cfg.prefix.strip(), facts_block.strip(), cfg.suffix.strip()) if part)


def build_messages(facts: BreastFacts, cfg: PromptConfig) -> list[dict[str, str]]:
    """OpenAI-style chat messages: system, few-shot user/assistant pairs, then this breast's facts."""
    messages = [{"role": "system", "content": cfg.system.strip()}] if cfg.system.strip() else []
    for example in cfg.few_shot:
        messages.append({"role": "user", "content": _user(cfg, example.facts)})
        messages.append({"role": "assistant", "content": example.report.strip()})
    messages.append({"role": "user", "content": _user(cfg, facts_text(facts))})
    return messages


def prompt_hash(cfg: PromptConfig, fields: Sequence[str]) -> str:
    """12 hex digits identifying the prompt version, texts, few-shot examples and selected fields."""
    payload = {"version": PROMPT_VERSION, "prompt": asdict(cfg), "fields": list(fields)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
