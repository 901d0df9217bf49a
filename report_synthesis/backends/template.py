"""The model-free backend: radiology sentences written straight from the facts, with seeded paraphrases.

Each fact has several phrasings; the seed picks one per fact, so equal facts do not always give equal
reports. Also the fallback for generations that fail the fact check, and the text source for other
parts of the toolkit (co-attention metadata, the demo): :func:`template_report`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from report_synthesis.backends import BackendConfig, Generation, Request, register_backend
from report_synthesis.facts import BreastFacts
from report_synthesis.prompts import BIRADS_WORDS, DENSITY_WORDS

__all__ = ["TemplateBackend", "template_report"]


def _views(rng: random.Random, facts: BreastFacts) -> str:
    side = facts.side
    if not facts.views:
        return rng.choice([f"Screening mammogram of the {side} breast.", f"{side.capitalize()} breast examination."])
    views = " and ".join(facts.views)
    if len(facts.views) == 1:
        return rng.choice(
            [
                f"Only the {views} view of the {side} breast is available.",
                f"A single {views} view of the {side} breast was obtained.",
            ]
        )
    return rng.choice(
        [
            f"Standard {views} views of the {side} breast were obtained.",
            f"{views} projections of the {side} breast are submitted.",
            f"{side.capitalize()} breast, {views} views.",
        ]
    )


def _age(rng: random.Random, age: int) -> str:
    return rng.choice([f"Patient age: {age} years.", f"The patient is {age} years old.", f"{age}-year-old patient."])


def _density(rng: random.Random, density: str) -> str:
    words = DENSITY_WORDS[density]
    return rng.choice(
        [
            f"The breast is {words} (ACR density {density}).",
            f"Breast composition: {words}, density category {density}.",
            f"The breast tissue is {words} (BI-RADS density {density}).",
        ]
    )


def _mass(rng: random.Random, facts: BreastFacts) -> str:
    if not facts.mass:
        return rng.choice(["No mass is seen.", "There is no suspicious mass.", "No masses are identified."])
    shape, margin = facts.mass_shape, facts.mass_margin
    phrase = f"{shape} mass" if shape else "mass"
    with_margin = f" with {margin} margins" if margin else ""
    options = [f"{'An' if phrase[0] in 'aeiou' else 'A'} {phrase}{with_margin} is present."]
    details = "; ".join(f"{label}: {value}" for label, value in (("shape", shape), ("margin", margin)) if value)
    options.append(f"There is a mass ({details})." if details else "There is a mass.")
    options.append(f"A mass is seen{', ' + shape + ' in shape' if shape else ''}{with_margin}.")
    return rng.choice(options)


def _calcification(rng: random.Random, facts: BreastFacts) -> str:
    if not facts.calcification:
        return rng.choice(
            ["No suspicious calcifications.", "There are no calcifications.", "No calcifications are identified."]
        )
    morph, dist = facts.calc_morphology, facts.calc_distribution
    in_dist = f" in a {dist} distribution" if dist else ""
    options = [f"{(morph + ' calcifications').capitalize() if morph else 'Calcifications'}{in_dist} are present."]
    details = "; ".join(
        f"{label}: {value}" for label, value in (("morphology", morph), ("distribution", dist)) if value
    )
    options.append(f"There are calcifications ({details})." if details else "There are calcifications.")
    options.append(f"Calcifications are seen{', ' + morph + ' in morphology' if morph else ''}{in_dist}.")
    return rng.choice(options)


def _other(rng: random.Random, findings: tuple[str, ...]) -> str:
    if not findings:
        return rng.choice(["No other findings.", "Otherwise unremarkable."])
    listed = ", ".join(findings)
    return rng.choice([f"There is {listed}.", f"Additional finding: {listed}."])


def _impression(rng: random.Random, facts: BreastFacts) -> str:
    side = facts.side
    if facts.birads is not None:
        n, words = facts.birads, BIRADS_WORDS[facts.birads]
        return rng.choice(
            [
                f"IMPRESSION: {side.capitalize()} breast: BI-RADS {n}, {words}.",
                f"IMPRESSION: {words.capitalize()} ({side} breast), BI-RADS category {n}.",
                f"IMPRESSION: BI-RADS {n} ({words}), {side} breast.",
            ]
        )
    present = [name for name, flag in (("mass", facts.mass), ("calcifications", facts.calcification)) if flag]
    if present:
        return f"IMPRESSION: {' and '.join(present).capitalize()} in the {side} breast."
    return f"IMPRESSION: {side.capitalize()} breast, findings as described."


def template_report(facts: BreastFacts, seed: int) -> str:
    """A FINDINGS/IMPRESSION report stating exactly the known facts; ``seed`` picks the phrasings."""
    rng = random.Random(seed)
    sentences = [_views(rng, facts)]
    if facts.age is not None:
        sentences.append(_age(rng, facts.age))
    if facts.density is not None:
        sentences.append(_density(rng, facts.density))
    if facts.mass is not None:
        sentences.append(_mass(rng, facts))
    if facts.calcification is not None:
        sentences.append(_calcification(rng, facts))
    if facts.other_findings is not None:
        sentences.append(_other(rng, facts.other_findings))
    if facts.pathology is not None:
        sentences.append(rng.choice([f"Pathology: {facts.pathology}.", f"Histopathology result: {facts.pathology}."]))
    return f"FINDINGS: {' '.join(sentences)}\n{_impression(rng, facts)}"


@register_backend("template")
class TemplateBackend:
    """No model: :func:`template_report` with each request's seed."""

    name = "template"

    def __init__(self, cfg: BackendConfig):
        self.cfg = cfg

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        return [Generation(r.id, template_report(r.facts, r.seed), "stop") for r in requests]
