"""The labelled evaluation set of the fact check: realistic generations with their facts and a verdict.

``facts.yaml`` holds the breasts (the corpus's facts JSON plus ids), ``reports.yaml`` the raw generations
written in the styles instruction-tuned models produce, each labelled ``faithful`` or ``unfaithful`` with the
category of its error. :func:`load_eval_set` returns them; :func:`score` runs a check over them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from report_synthesis.facts import BreastFacts

__all__ = ["CATEGORIES", "CRITICAL", "EvalReport", "Score", "load_eval_set", "score"]

HERE = Path(__file__).parent
#: Error categories of unfaithful reports.
CATEGORIES = (
    "side",
    "birads",
    "density",
    "age",
    "views",
    "presence",
    "descriptor",
    "measurement",
    "location",
    "temporal",
    "identifier",
    "pathology",
)
#: Categories in which no unfaithful report may pass; the others may pass up to 2 %.
CRITICAL = ("side", "birads", "density", "presence", "descriptor", "identifier")


@dataclass(frozen=True)
class EvalReport:
    """One labelled generation: ``category`` is ``None`` for a faithful report."""

    index: int
    facts_name: str
    facts: BreastFacts
    text: str
    faithful: bool
    category: str | None


def load_eval_set(folder: str | Path = HERE) -> list[EvalReport]:
    """The reports of ``folder/reports.yaml`` with the facts they name in ``folder/facts.yaml``."""
    folder = Path(folder)
    facts = {
        name: BreastFacts.from_dict(data) for name, data in yaml.safe_load((folder / "facts.yaml").read_text()).items()
    }
    out = []
    for index, item in enumerate(yaml.safe_load((folder / "reports.yaml").read_text())):
        where = f"{folder / 'reports.yaml'} item {index}"
        if item.get("facts") not in facts:
            raise KeyError(f"{where}: facts {item.get('facts')!r} not in facts.yaml")
        faithful = {"faithful": True, "unfaithful": False}.get(item.get("label"))
        category = item.get("category")
        if faithful is None or (faithful != (category is None)) or (category and category not in CATEGORIES):
            raise ValueError(
                f"{where}: label must be faithful (no category) or unfaithful with a category in {CATEGORIES}"
            )
        out.append(EvalReport(index, item["facts"], facts[item["facts"]], item["report"], faithful, category))
    return out


@dataclass
class Score:
    """Accept/reject counts per category (``faithful`` for the faithful reports) and the time per report."""

    accepted: Counter
    rejected: Counter
    ms_per_report: float
    accepted_unfaithful: list[EvalReport]
    rejected_faithful: list[EvalReport]

    def rate(self, category: str) -> float:
        """Fraction accepted in ``category`` (``faithful``: fraction rejected)."""
        total = self.accepted[category] + self.rejected[category]
        wrong = self.rejected[category] if category == "faithful" else self.accepted[category]
        return wrong / total if total else 0.0


def score(check: Callable[[str, BreastFacts], list[str]], reports: list[EvalReport], repeat: int = 1) -> Score:
    """Run ``check(raw_text, facts) -> reasons`` over ``reports`` (``repeat`` times, for the timing)."""
    start = time.perf_counter()
    for _ in range(repeat):
        verdicts = [not check(r.text, r.facts) for r in reports]
    ms = (time.perf_counter() - start) * 1000 / (repeat * max(1, len(reports)))
    accepted: Counter = Counter()
    rejected: Counter = Counter()
    for report, ok in zip(reports, verdicts, strict=True):
        (accepted if ok else rejected)[report.category or "faithful"] += 1
    return Score(
        accepted,
        rejected,
        ms,
        [r for r, ok in zip(reports, verdicts, strict=True) if ok and not r.faithful],
        [r for r, ok in zip(reports, verdicts, strict=True) if not ok and r.faithful],
    )
