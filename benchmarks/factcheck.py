"""The fact check on the labelled evaluation set: confusion table per category and time per report, old vs new.

    python benchmarks/factcheck.py [--old-rev ba9afb4] [--repeat 20] [--no-context]

``old``: report_synthesis/postprocess.py as of ``--old-rev`` (read with ``git show`` at run time);
``new``: the current check with its hand-written negation/hypothetical rules; ``ConText``: the current check
with medspaCy's ConText deciding negated / hypothetical / historical mentions (shown when medspaCy is
installed: ``pip install medspacy --no-deps`` next to ``spacy>=3.8``). Each cell: accepted / rejected reports.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

ROOT = Path(__file__).resolve().parents[1]


def old_check(rev: str):
    """``fact_check`` of report_synthesis/postprocess.py at git revision ``rev``."""
    source = subprocess.run(
        ["git", "show", f"{rev}:report_synthesis/postprocess.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType("old_postprocess")
    exec(compile(source, f"{rev}:report_synthesis/postprocess.py", "exec"), module.__dict__)
    return module.fact_check


class ConTextScopes:
    """medspaCy ConText as the checker's context: a mention inside a negation / hypothetical / historical
    modifier's scope is negated / hypothetical (historical counts as hypothetical: not a current finding)."""

    nlp = None

    def __init__(self, text: str):
        from report_synthesis.extract import ASSERTED, HYPOTHETICAL, NEGATED

        if ConTextScopes.nlp is None:
            import medspacy  # noqa: F401 - registers the pipeline components
            import spacy

            nlp = spacy.blank("en")
            nlp.add_pipe("sentencizer", config={"punct_chars": [".", ";", "!", "?", "\n"]})
            nlp.add_pipe("medspacy_context", config={"rules": "default"})
            ConTextScopes.nlp = nlp
        doc = ConTextScopes.nlp(text)
        self.scopes = []
        kinds = {"NEGATED_EXISTENCE": NEGATED, "POSSIBLE_EXISTENCE": HYPOTHETICAL, "HYPOTHETICAL": HYPOTHETICAL}
        kinds["HISTORICAL"] = HYPOTHETICAL
        for modifier in doc._.context_graph.modifiers:
            if modifier.category in kinds:
                span = doc[modifier.scope_span[0] : modifier.scope_span[1]]
                self.scopes.append((span.start_char, span.end_char, kinds[modifier.category]))
        self.asserted = ASSERTED

    def status(self, start: int, end: int) -> str:
        found = [kind for lo, hi, kind in self.scopes if lo <= start and end <= hi]
        return found[0] if found else self.asserted


def _row(name: str, counts: list[tuple[int, int]]) -> str:
    return f"{name:<12}" + "".join(f"{f'{a} / {r}':>14}" for a, r in counts)


def main() -> None:
    from report_synthesis.eval import CATEGORIES, CRITICAL, load_eval_set, score
    from report_synthesis.postprocess import clean, fact_check

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--old-rev", default="ba9afb4", help="git revision of the old check")
    parser.add_argument("--repeat", type=int, default=20, help="passes over the set for the timing")
    parser.add_argument("--no-context", action="store_true", help="skip the medspaCy ConText variant")
    args = parser.parse_args()
    reports = load_eval_set()
    checks = {"old": old_check(args.old_rev), "new": fact_check}
    if not args.no_context:
        try:
            import medspacy  # noqa: F401
        except ImportError:
            print("medspaCy not installed: no ConText column")
        else:
            checks["ConText"] = lambda text, facts: fact_check(text, facts, context=ConTextScopes)
    scores = {name: score(lambda t, f, c=check: c(clean(t), f), reports, args.repeat) for name, check in checks.items()}
    faithful = sum(r.faithful for r in reports)
    print(f"{len(reports)} labelled reports ({faithful} faithful, {len(reports) - faithful} unfaithful)")
    print("cells: accepted / rejected; a faithful report should be accepted, an unfaithful one rejected\n")
    print(f"{'category':<12}" + "".join(f"{name:>14}" for name in scores))
    for category in ("faithful", *CATEGORIES):
        counts = [(s.accepted[category], s.rejected[category]) for s in scores.values()]
        print(_row(category + ("*" if category in CRITICAL else ""), counts))
    print("\n* no unfaithful report of these categories may be accepted; the others <= 2 %; faithful rejected <= 5 %")
    wrong = {
        name: (sum(s.accepted[c] for c in CATEGORIES), sum(s.accepted[c] + s.rejected[c] for c in CATEGORIES))
        for name, s in scores.items()
    }
    print(_row("unfaith. acc", [(a, n) for a, n in wrong.values()]).replace(" / ", " of "))
    print(f"{'faith. rej':<12}" + "".join(f"{s.rate('faithful'):>14.1%}" for s in scores.values()))
    print(f"{'ms/report':<12}" + "".join(f"{s.ms_per_report:>14.3f}" for s in scores.values()))


if __name__ == "__main__":
    main()
