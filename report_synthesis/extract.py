"""What a report text states: side, views, age, density, BI-RADS, findings with their lexicon descriptors,
pathology, and the claims a report must never make (measurements, locations, comparisons, identifiers).

:func:`extract` reads a cleaned report into a :class:`Stated`; :mod:`report_synthesis.postprocess` compares it
with the facts. Whether a mention is asserted, negated or hypothetical ("may obscure small masses", "to exclude
a mass") is decided by a context (NegEx-style trigger words with clause scopes, :class:`RuleContext`); medspaCy's
ConText was measured against it on the evaluation set and lost (see benchmarks/factcheck.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from report_synthesis.facts import OTHER_FINDINGS

__all__ = ["ASSERTED", "NEGATED", "HYPOTHETICAL", "RuleContext", "Stated", "descriptor_groups", "extract"]

ASSERTED, NEGATED, HYPOTHETICAL = "asserted", "negated", "hypothetical"
_I = re.I

# ---------------------------------------------------------------- context (negation, hypothetical)
_CLAUSE_END = re.compile(r"[.;!?]+(?=\s|$)|\n")
_NEGATION = re.compile(
    r"\b(?:no|not|without|negative for|absence of|absent|free of|none|neither|nor|rather than)\b", _I
)
_HYPOTHETICAL = re.compile(
    r"\b(?:may|might|could|can|would|if|whether|possible|possibly|rule out|to exclude|exclude|evaluate for|"
    r"cannot be excluded|concern for)\b",
    _I,
)
_SCOPE_END = re.compile(r"\b(?:but|however|although|though|whereas|yet|except|there (?:is|are)|with)\b|,\s*and\b", _I)
_POST_NEGATION = re.compile(
    r"^\W*(?:\w+\W+){0,3}?(?:absent|none|not (?:seen|identified|present|visualized|demonstrated|noted))\b", _I
)


class RuleContext:
    """Trigger words with clause scopes: a pre-trigger governs the rest of its clause up to a scope end."""

    def __init__(self, text: str):
        self.text = text
        self.bounds = [0, *(m.end() for m in _CLAUSE_END.finditer(text)), len(text)]

    def status(self, start: int, end: int) -> str:
        """``asserted``, ``negated`` or ``hypothetical`` for the mention ``text[start:end]``."""
        left = max(b for b in self.bounds if b <= start)
        right = min(b for b in self.bounds if b >= end)
        before = _SCOPE_END.split(self.text[left:start])[-1]
        if _NEGATION.search(before) or _POST_NEGATION.search(self.text[end:right]):
            return NEGATED
        if _HYPOTHETICAL.search(before):
            return HYPOTHETICAL
        return ASSERTED


# ---------------------------------------------------------------- BI-RADS lexicon
#: canonical descriptor group -> pattern of its words and synonyms (longest alternatives first in the scan)
_LEXICON: dict[str, str] = {
    # mass shape
    "oval": r"oval|ovoid|elliptical|(?:macro)?lobulated",
    "round": r"round(?:ed)?|spherical",
    "irregular": r"irregular(?:ly[- ]shaped|ly)?",
    # mass margin
    "circumscribed": r"(?:well|sharply)[- ](?:circumscribed|defined|marginated)|circumscribed|smooth(?:ly marginated)?",
    "obscured": r"(?:partially )?obscured",
    "microlobulated": r"micro[- ]?lobulated|microlobulations?",
    "indistinct": r"indistinct|ill[- ]defined|poorly[- ](?:defined|circumscribed|marginated)",
    "spiculated": r"spiculated|spiculations?|stellate",
    # calcification morphology
    "amorphous": r"amorphous",
    "popcorn": r"(?:coarse[- ])?popcorn(?:[- ]like)?",
    "coarse heterogeneous": r"coarse[- ]heterogeneous|coarse",
    "fine pleomorphic": r"(?:fine[- ])?pleomorphic",
    "fine linear": r"fine[- ]linear(?:[- ](?:or[- ])?branching)?|linear[- ]branching|casting(?:[- ]type)?",
    "punctate": r"punctate",
    "rim": r"rim|eggshell",
    "dystrophic": r"dystrophic",
    "lucent-centered": r"lucent[- ]cent(?:er|re)(?:ed|d)?",
    "milk of calcium": r"milk[- ]of[- ]calcium",
    "large rod-like": r"(?:large[- ])?rod[- ]?like|secretory",
    "vascular": r"vascular",
    "skin": r"(?:skin|dermal)(?=[- ](?:type )?calcifications?)",
    "suture": r"suture",
    "oil cyst": r"oil[- ]cysts?",
    # calcification distribution
    "grouped": r"grouped|clustered|clusters?",
    "segmental": r"segmental",
    "regional": r"regional",
    "diffuse": r"diffuse(?:ly)?(?: scattered)?|scattered(?! (?:areas of )?fibroglandular)",
    "linear": r"linear",
}
_ORDER = sorted(_LEXICON, key=lambda g: -max(len(a) for a in _LEXICON[g].split("|")))
_DESCRIPTOR = re.compile("|".join(rf"(?P<g{i}>\b(?:{_LEXICON[g]})\b)" for i, g in enumerate(_ORDER)), _I)


def _descriptor_matches(text: str) -> Iterable[tuple[str, re.Match]]:
    for match in _DESCRIPTOR.finditer(text):
        yield _ORDER[int(match.lastgroup[1:])], match


def descriptor_groups(words: str) -> set[str]:
    """The canonical lexicon groups a facts descriptor (``"fine linear branching"``, ``"ill-defined"``) names."""
    return {group for group, _ in _descriptor_matches(words)}


# ---------------------------------------------------------------- numbers and words
_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6}
_BIRADS = re.compile(
    r"\b(?:BI-?\s?RADS|assessment|category)\b(?:®)?(?:\W{0,3}(?:final |overall )?(?:assessment|category|cat|score)\b)*"
    r"\W{0,3}([0-6]|(?-i:VI|IV|V|III|II|I))(?:[abcABC])?(?![\w])",
    _I,
)
_BIRADS_WORDS = {
    0: re.compile(r"\bincomplete\b|\bneeds? additional imaging evaluation\b", _I),
    3: re.compile(r"\bprobably benign\b", _I),
    5: re.compile(r"\bhighly suggestive of malignancy\b", _I),
    6: re.compile(r"\bknown biopsy[- ]proven malignancy\b", _I),
}
_DENSITY_BEFORE = re.compile(r"\b(?:density|composition)\W*(?:category|type|grade)?\W*$", _I)
_DENSITY_LETTER = re.compile(
    r"\b(?:density|composition|ACR)(?:\s+(?:category|type|grade|pattern))?\s*[:(]?\s*([A-Da-d]|[1-4])(?![\w])|"
    r"\b(?:category|type)\s*[:(]?\s*((?-i:[A-D]))(?![\w])",  # a letter category is a density (BI-RADS ones are numbers)
    _I,
)
_DENSITY_WORDS = {
    "A": re.compile(
        r"\b(?:almost )?entirely fat(?:ty)?\b|\bpredominantly fat(?:ty)?\b|\bfatty\b(?! hilum| lesion)", _I
    ),
    "B": re.compile(r"\bscattered (?:areas of )?fibroglandular\b", _I),
    "C": re.compile(r"\bheterogeneously dense\b", _I),
    "D": re.compile(r"\bextremely dense\b", _I),
}
_AGE = re.compile(
    r"\b(\d{1,3})\s*-?\s*(?:years?|yrs?)[- ]?(?:old|of age)\b|\bage[d]?\s*:?\s*(\d{1,3})\b|"
    r"\b(\d{1,3})\s*(?:yo|y/o|y\.o\.?)(?!\w)|\((\d{1,3}) years?\)|\b(\d{2})\s?[FW]\b",
    _I,
)
_VIEWS = re.compile(
    r"\b[RL]?(CC|MLO|ML|LM|XCCL)\b|\b(cranio-?caudal|medio-?lateral oblique|medio-?lateral|latero-?medial)\b"
)
_VIEW_WORDS = {"craniocaudal": "CC", "mediolateral oblique": "MLO", "mediolateral": "ML", "lateromedial": "LM"}
_SIDES = {
    "left": re.compile(r"\bleft\b|\bL(?:CC|MLO)\b", _I),
    "right": re.compile(r"\bright\b|\bR(?:CC|MLO)\b", _I),
}
_BILATERAL = re.compile(r"\b(?:bilateral(?:ly)?|both breasts|contralateral|the breasts are)\b", _I)
_FINDINGS = {
    "mass": re.compile(r"\bmass(?:es)?\b|\bnodules?\b|\btumou?rs?\b", _I),
    "calcification": re.compile(r"\b(?:micro-?)?calcific\w*|\bcalcified\b|\bcalcs?\b", _I),
}
_OTHER = {name: re.compile(r"\b" + name.replace(" ", r"[\s-]+") + r"\b", _I) for name in OTHER_FINDINGS}
_OTHER["asymmetry"] = re.compile(r"\basymmetr\w*", _I)  # any kind of asymmetry
_OTHER["lymph node"] = re.compile(r"\blymph[\s-]?nodes?\b|\blymphadenopathy\b", _I)
_BOILERPLATE = re.compile(
    r"\b(?:may|can|could|might|which|that)\s+(?:\w+\s+){0,2}?(?:obscure|hide|mask|limit|reduce|lower)\w*\s+"
    r"(?:\w+\s+){0,4}?(?:masses|lesions|mass|findings|abnormalities|cancers?|sensitivity)\b",
    _I,
)
_PATHOLOGY_FIELD = re.compile(
    r"\b(?:histo)?patholog\w*(?:\s+(?:result|report|diagnosis))?\W{0,4}(?:\w+\W+){0,2}?(malignant|benign|normal)\b",
    _I,
)
_PATHOLOGY_WORDS = {
    "malignant": re.compile(
        r"\bcarcinomas?\b|\bDCIS\b|\bIDC\b|\bILC\b|\bcancers?\b|\bbiopsy[- ]proven malignan\w*|"
        r"\bmalignant (?:mass|lesion|calcifications?|tumou?r|neoplasm)\b",
        _I,
    ),
    "benign": re.compile(
        r"\bfibroadenomas?\b|\bpapillomas?\b|\blipomas?\b|\bhamartomas?\b|\bbiopsy[- ]proven benign\b", _I
    ),
}
_ASSESSMENT_PHRASES = re.compile(
    r"\b(?:highly suggestive of|suspicious (?:for|of)|evidence of|suspicion (?:for|of)|risk of|likelihood of)\s+"
    r"malignancy\b|\bknown biopsy[- ]proven malignancy\b",
    _I,
)
_MEASUREMENT = re.compile(
    r"\b\d+(?:[.,]\d+)?\s*(?:(?:x|×|by)\s*\d+(?:[.,]\d+)?\s*)*(?:mm|cm|millimet\w*|centimet\w*)\b|"
    r"\bsub-?centimet\w*|\bmeasur(?:es|ing|ed|ement)\b",
    _I,
)
_LOCATION = re.compile(
    r"\b(?:1[0-2]|[1-9])(?::[0-5]\d)?\s*(?:o['’]?\s?clock|o'clock)|\b(?:upper|lower)[- ](?:outer|inner)\b|"
    r"\b(?:UOQ|UIQ|LOQ|LIQ)\b|\b(?:retro|sub|peri)-?areolar\b|\baxill(?:a|ary)\b|"
    r"\b(?:anterior|middle|mid|posterior) (?:depth|third)\b|\bcentral (?:region|breast|quadrant)\b|"
    r"\b(?:inner|outer|superior|inferior|medial|lateral) (?:aspect|half|portion|quadrant|breast)\b|"
    r"\b(?:from|to) the nipple\b|\bquadrant\b",
    _I,
)
_TEMPORAL = re.compile(
    r"\bcompar(?:ed|ison|able)\b|\bprior\b|\bprevious(?:ly)?\b|\bstable\b|\bunchanged\b|\bnew(?:ly)?\b|"
    r"\binterval (?:change|development|increase|decrease|growth|resolution|enlargement)\b|\bresolved\b|"
    r"\bagain (?:seen|noted|demonstrated)\b|\b(?:no|without) (?:significant )?change\b|"
    r"\b(?:increas|decreas|enlarg)(?:ed|ing)\b(?: in (?:size|number))?|\bsince the\b|\bbaseline\b|"
    r"\bhistory of\b|\bstatus post\b|\bs/p\b|\bpost-?surgical\b|\blumpectomy\b|\bmastectomy\b|\bbiopsy clip\b|"
    r"\bpersist(?:ent|s|ing)\b|\bdeveloping\b|\bfollow-up of (?:a |the )?known\b|"
    r"\b(?:seen|noted|present|visible|identified|shown) (?:before|earlier|on (?:the )?(?:last|earlier|older))\b",
    _I,
)
_IDENTIFIERS = {
    "date": re.compile(
        r"\b\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}\b|\b(?:19|20)\d{2}\b|"
        r"\b(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sept?(?:ember)?|"
        r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\b\.?\s+\d{1,2}\b",
        _I,
    ),
    "long number": re.compile(r"\d{5,}"),
    "id label": re.compile(
        r"\b(?:mrn|accession|medical record|patient (?:id|name)|date of birth|dob|ssn|id\s*(?:no|number|#|:)|"
        r"signed by|radiologist:|referring physician)",
        _I,
    ),
    "name": re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr)\.?\s+[A-Z]|\b[A-Z][a-z]+,? MD\b"),
    "placeholder": re.compile(
        r"\[[^\]\n]{0,40}\b(?:name|date|id|number|age|signature|radiologist)\b[^\]\n]{0,40}\]", _I
    ),
    "contact": re.compile(r"\S+@\S+\.\w+|\b\d{3}[-.\s]\d{3}[-.\s]\d{4}\b"),
}


@dataclass
class Stated:
    """What one report says. Finding entries map a name to the set of its mentions' contexts."""

    sides: set[str] = field(default_factory=set)
    bilateral: bool = False
    views: set[str] = field(default_factory=set)
    ages: set[int] = field(default_factory=set)
    density: set[str] = field(default_factory=set)
    birads: set[int] = field(default_factory=set)
    findings: dict[str, set[str]] = field(default_factory=dict)  # mass, calcification, other findings
    descriptors: set[str] = field(default_factory=set)  # asserted canonical lexicon groups
    pathology: set[str] = field(default_factory=set)
    measurements: list[str] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    temporal: list[str] = field(default_factory=list)
    identifiers: list[str] = field(default_factory=list)  # kinds found (date, name, ...), never the text itself

    def asserted(self, finding: str) -> bool:
        return ASSERTED in self.findings.get(finding, ())

    def negated(self, finding: str) -> bool:
        return NEGATED in self.findings.get(finding, ())


def _birads(text: str) -> set[int]:
    found = set()
    for match in _BIRADS.finditer(text):
        if _DENSITY_BEFORE.search(text[max(0, match.start() - 40) : match.start() + len("category")]):
            continue
        value = match.group(1)
        found.add(int(value) if value.isdigit() else _ROMAN[value])
    return found | {n for n, rx in _BIRADS_WORDS.items() if rx.search(text)}


def _density(text: str) -> set[str]:
    values = [a or b for a, b in _DENSITY_LETTER.findall(text)]
    letters = {v.upper() if v.isalpha() else "ABCD"[int(v) - 1] for v in values}
    return letters | {letter for letter, rx in _DENSITY_WORDS.items() if rx.search(text)}


def _pathology(text: str) -> set[str]:
    text = _ASSESSMENT_PHRASES.sub(" ", text)
    found = {m.group(1).lower() for m in _PATHOLOGY_FIELD.finditer(text)}
    return found | {value for value, rx in _PATHOLOGY_WORDS.items() if rx.search(text)}


def extract(text: str, context: Callable[[str], RuleContext] = RuleContext) -> Stated:
    """What the cleaned report ``text`` states (``context`` decides asserted / negated / hypothetical)."""
    masked = _BOILERPLATE.sub(lambda m: " " * len(m.group(0)), text)
    scopes = context(masked)
    stated = Stated(
        sides={side for side, rx in _SIDES.items() if rx.search(text)},
        bilateral=bool(_BILATERAL.search(text)),
        ages={int(next(g for g in m.groups() if g)) for m in _AGE.finditer(text)},
        density=_density(text),
        birads=_birads(text),
        pathology=_pathology(text),
        measurements=[m.group(0) for m in _MEASUREMENT.finditer(text)],
        locations=[m.group(0) for m in _LOCATION.finditer(masked) if scopes.status(m.start(), m.end()) != NEGATED],
        temporal=[m.group(0) for m in _TEMPORAL.finditer(text)],
        identifiers=[kind for kind, rx in _IDENTIFIERS.items() if rx.search(text)],
    )
    for match in _VIEWS.finditer(text):
        word = match.group(1) or re.sub(r"-", "", match.group(2).lower())
        stated.views.add(_VIEW_WORDS.get(word, word))
    for name, rx in {**_FINDINGS, **_OTHER}.items():
        stated.findings[name] = {scopes.status(m.start(), m.end()) for m in rx.finditer(masked)}
    no_density = masked
    for rx in _DENSITY_WORDS.values():
        no_density = rx.sub(lambda m: " " * len(m.group(0)), no_density)
    stated.descriptors = {
        group for group, m in _descriptor_matches(no_density) if scopes.status(m.start(), m.end()) == ASSERTED
    }
    return stated
