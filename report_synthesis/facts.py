"""Per-breast facts: what the canonical image table knows about one breast of one exam, nothing more.

A report may state only these facts. Unknown values (NA in the table) stay ``None`` and never enter a
report; the config chooses which known fields may (the paper's subset C; pathology is off by default).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from mvmlm.config import ConfigError
from mvmlm.data.ids import breast_id

__all__ = [
    "FIELDS",
    "DEFAULT_FIELDS",
    "OTHER_FINDINGS",
    "BreastFacts",
    "breast_facts",
    "breast_id",
    "check_fields",
]

#: Fields a report may state, in report order. ``laterality`` is always stated (it names the breast).
FIELDS = (
    "views",
    "age",
    "density",
    "birads",
    "mass",
    "mass_shape",
    "mass_margin",
    "calcification",
    "calc_morphology",
    "calc_distribution",
    "other_findings",
    "pathology",
)
DEFAULT_FIELDS = tuple(name for name in FIELDS if name != "pathology")

#: Findings besides mass and calcification a report can name (BI-RADS lexicon; VinDr/EMBED/CBIS-DDSM vocabularies).
OTHER_FINDINGS = (
    "architectural distortion",
    "asymmetry",
    "focal asymmetry",
    "global asymmetry",
    "developing asymmetry",
    "skin thickening",
    "skin retraction",
    "nipple retraction",
    "lymph node",
)
_ID_KEYS = ("dataset", "patient_id", "exam_id", "laterality")


@dataclass(frozen=True)
class BreastFacts:
    """One breast of one exam. Identity fields first, then the reportable facts (``None`` = unknown)."""

    dataset: str
    patient_id: str
    exam_id: str
    laterality: str  # "L" | "R"
    split: str | None = None
    views: tuple[str, ...] | None = None
    age: int | None = None  # whole years
    density: str | None = None  # "A".."D"
    birads: int | None = None  # 0..6
    mass: bool | None = None
    mass_shape: str | None = None
    mass_margin: str | None = None
    calcification: bool | None = None
    calc_morphology: str | None = None
    calc_distribution: str | None = None
    other_findings: tuple[str, ...] | None = None  # None = unknown; () = known to have none
    pathology: str | None = None

    @property
    def breast_id(self) -> str:
        return breast_id(self.dataset, self.patient_id, self.exam_id, self.laterality)

    @property
    def side(self) -> str:
        """``"left"`` or ``"right"``."""
        return {"L": "left", "R": "right"}[self.laterality]

    def select(self, fields: Iterable[str]) -> BreastFacts:
        """A copy keeping only ``fields`` (others become unknown); descriptors need their finding present."""
        keep = set(check_fields(fields))
        facts = dataclasses.replace(self, **{name: None for name in FIELDS if name not in keep})
        if facts.mass is not True:
            facts = dataclasses.replace(facts, mass_shape=None, mass_margin=None)
        if facts.calcification is not True:
            facts = dataclasses.replace(facts, calc_morphology=None, calc_distribution=None)
        return facts

    def reportable(self) -> dict:
        """The known reportable facts as a JSON-ready dict (unknown fields left out)."""
        out = {"laterality": self.laterality}
        for name in FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_json(self) -> str:
        return json.dumps(self.reportable(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> BreastFacts:
        """The inverse of :meth:`reportable` plus the ids (``dataset``, ``patient_id``, ``exam_id``); lists become
        tuples. Raises ``KeyError`` naming unknown keys."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise KeyError(f"unknown fact key(s) {unknown}; known: {', '.join(FIELDS)}")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})


def check_fields(fields: Iterable[str]) -> tuple[str, ...]:
    """Validate field names; raises :class:`ConfigError` naming the unknown ones."""
    fields = tuple(fields)
    unknown = [name for name in fields if name not in FIELDS]
    if unknown:
        raise ConfigError(f"key 'fields': unknown field(s) {unknown}; known: {', '.join(FIELDS)}")
    return fields


def _word(value: object) -> str | None:
    """A lexicon descriptor as plain lower-case words (``FINE_LINEAR_BRANCHING`` -> ``fine linear branching``)."""
    if value is None or pd.isna(value):
        return None
    text = " ".join(str(value).replace("_", " ").lower().split())
    return None if text in ("", "n/a", "na", "none", "nan", "-") else text


def _split_descriptor(value: object) -> tuple[str | None, list[str]]:
    """Split a joined descriptor into lexicon words and the parts that name other findings.

    Parts are joined by ``,`` (the CBIS-DDSM adapter) or, in CBIS-DDSM's raw upper-case form, by ``-``
    (``IRREGULAR-ARCHITECTURAL_DISTORTION``); hyphens inside lexicon words (``popcorn-like``) are kept.
    """
    word = _word(value)
    if word is None:
        return None, []
    parts = [p.strip() for p in re.split(r"[,-]" if str(value).isupper() else ",", word) if p.strip()]
    findings = [p for p in parts if p in OTHER_FINDINGS]
    kept = [p for p in parts if p not in OTHER_FINDINGS]
    return (" and ".join(kept) or None), findings


def _flag(value: object) -> bool | None:
    return None if value is None or pd.isna(value) else bool(int(value))


def _other_findings(value: object, from_shape: list[str]) -> tuple[str, ...] | None:
    """``other_findings`` column (``;``-separated, optional) merged with findings named by the mass shape."""
    listed = None
    if value is not None and not pd.isna(value):
        listed = [w for w in (_word(part) for part in str(value).split(";")) if w]
    if listed is None and not from_shape:
        return None
    return tuple(dict.fromkeys([*(listed or []), *from_shape]))


def breast_facts(table: pd.DataFrame) -> list[BreastFacts]:
    """One :class:`BreastFacts` per (dataset, patient, exam, laterality) of a canonical table, sorted by id.

    Breast-level columns take the first non-missing value over the breast's images. An optional extra
    column ``other_findings`` (``;``-separated lexicon words, empty = none) adds findings such as asymmetry.
    """
    missing = [c for c in (*_ID_KEYS, "view") if c not in table.columns]
    if missing:
        raise KeyError(f"canonical table lacks column(s) {missing}")
    columns = [c for c in ("split", *FIELDS) if c in table.columns and c != "views"]
    keyed = table.astype({c: "object" for c in _ID_KEYS})
    groups = keyed.groupby(list(_ID_KEYS), sort=True, dropna=False)
    first = groups[columns].first() if columns else pd.DataFrame(index=groups.size().index)
    views: dict[tuple, set[str]] = defaultdict(set)
    for *key, view in keyed[[*_ID_KEYS, "view"]].itertuples(index=False):
        if not pd.isna(view):
            views[tuple(key)].add(str(view))
    out = []
    for row in first.reset_index().to_dict("records"):
        get = row.get
        key = tuple(row[k] for k in _ID_KEYS)
        shape, shape_findings = _split_descriptor(get("mass_shape"))
        margin, margin_findings = _split_descriptor(get("mass_margin"))
        age = get("age")
        out.append(
            BreastFacts(
                dataset=str(key[0]),
                patient_id=str(key[1]),
                exam_id=str(key[2]),
                laterality=str(key[3]),
                split=None if pd.isna(get("split")) else str(get("split")),
                views=tuple(sorted(views[key])) or None,
                age=None if age is None or pd.isna(age) else int(age),
                density=None if pd.isna(get("density")) else str(get("density")),
                birads=None if pd.isna(get("birads")) else int(get("birads")),
                mass=_flag(get("mass")),
                mass_shape=shape,
                mass_margin=margin,
                calcification=_flag(get("calcification")),
                calc_morphology=_split_descriptor(get("calc_morphology"))[0],
                calc_distribution=_split_descriptor(get("calc_distribution"))[0],
                other_findings=_other_findings(get("other_findings"), shape_findings + margin_findings),
                pathology=_word(get("pathology")),
            )
        )
    return out
