"""``python -m report_synthesis.audit CORPUS_DIR [--table T] [--drop]`` (also ``mvmlm audit-reports``).

Re-checks every report of an existing corpus (one written before the current fact check, or by another tool)
against its facts: the facts stored with each report, or those of the canonical table ``--table`` (with the
corpus manifest's ``fields``). Writes ``audit.csv`` (id, verdict, reasons) and ``metrics.json`` (rejected reports
per reason category) into ``out`` (default ``CORPUS_DIR/audit``); ``--drop`` also writes the accepted reports as a
cleaned corpus beside it (``CORPUS_DIR-clean``, same layout, readable by :func:`~report_synthesis.read_corpus`).
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from mvmlm.cli import module_main
from mvmlm.config import MISSING, ConfigError
from mvmlm.data.schema import read_table
from mvmlm.errors import InputError
from mvmlm.rundir import RunDir
from report_synthesis import corpus
from report_synthesis.facts import DEFAULT_FIELDS, BreastFacts, breast_facts, check_fields
from report_synthesis.postprocess import clean, fact_check, reason_category

__all__ = ["AuditConfig", "audit", "main"]

log = logging.getLogger(__name__)
_PART_ROWS = 4096


@dataclass
class AuditConfig:
    corpus: str = MISSING  # the corpus directory (parts/ + manifest.json); also the first positional argument
    table: str | None = None  # canonical table to take the facts from; default: the facts stored with each report
    fields: list[str] | None = None  # with table: facts a report may state; default: the manifest's, else the default
    out: str | None = None  # audit.csv + metrics.json; default: <corpus>/audit
    drop: bool = False  # also write the accepted reports as a cleaned corpus <corpus>-clean
    progress: bool = True


def _manifest(folder: Path) -> dict:
    path = folder / corpus.MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


def _table_facts(cfg: AuditConfig, manifest: dict) -> dict[str, BreastFacts]:
    fields = check_fields(cfg.fields or manifest.get("fields") or DEFAULT_FIELDS)
    return {f.breast_id: f.select(fields) for f in breast_facts(read_table(cfg.table))}


def _stored_facts(row: dict, where: str) -> BreastFacts:
    if not isinstance(row.get("facts"), str):
        raise InputError(f"{where}: no stored facts; pass --table with the canonical table the corpus was written from")
    try:
        data = json.loads(row["facts"])
        return BreastFacts.from_dict({k: row[k] for k in ("dataset", "patient_id", "exam_id")} | data)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{where}: facts column is not a facts JSON object ({exc})") from None


def audit(cfg: AuditConfig) -> tuple[pd.DataFrame, list[dict]]:
    """Verdicts (id, verdict, reasons) for every report of the corpus, and the accepted corpus rows."""
    folder = Path(cfg.corpus)
    reports = corpus.read_corpus(folder)
    if reports.empty:
        raise InputError(f"{folder}: no report corpus here (expected {corpus.PARTS}/part-*.parquet)")
    table = _table_facts(cfg, _manifest(folder)) if cfg.table else None
    verdicts, kept = [], []
    rows = reports.astype(object).where(reports.notna(), None).to_dict("records")  # NA -> None for parquet
    for index, row in enumerate(tqdm(rows, unit="report", desc="audit", disable=not cfg.progress)):
        if table is None:
            facts = _stored_facts(row, f"{folder} report {index} ({row['id']})")
            reasons = fact_check(clean(row["report"] or ""), facts)
        elif row["breast_id"] in table:
            reasons = fact_check(clean(row["report"] or ""), table[row["breast_id"]])
        else:
            reasons = ["facts: breast not in the table"]
        verdicts.append(
            {"id": row["id"], "verdict": "rejected" if reasons else "accepted", "reasons": "; ".join(reasons)}
        )
        if not reasons:
            kept.append(row)
    return pd.DataFrame(verdicts, columns=["id", "verdict", "reasons"]), kept


def _summary(verdicts: pd.DataFrame) -> dict:
    categories = Counter(
        category
        for reasons in verdicts.reasons
        if reasons
        for category in {reason_category(r) for r in reasons.split("; ")}
    )
    counts = verdicts.verdict.value_counts()
    return {
        "reports": len(verdicts),
        "accepted": int(counts.get("accepted", 0)),
        "rejected": int(counts.get("rejected", 0)),
        "rejected_by_reason": dict(categories.most_common()),
    }


def _write_clean(cfg: AuditConfig, kept: list[dict], summary: dict) -> Path:
    """The accepted reports as a corpus beside the audited one; refuses to write over an existing corpus."""
    target = Path(str(Path(cfg.corpus)).rstrip("/") + "-clean")
    if corpus.part_files(target) or (target / corpus.MANIFEST).exists():
        raise ConfigError(f"{target}: a corpus is already there; remove it to write the cleaned corpus again")
    for start in range(0, len(kept), _PART_ROWS):
        corpus.write_part(target, 0, kept[start : start + _PART_ROWS])
    manifest = _manifest(Path(cfg.corpus)) | {"audit": {"from": str(cfg.corpus), "table": cfg.table, **summary}}
    manifest["counts"] = corpus.corpus_counts(target)
    RunDir(target).write_json(corpus.MANIFEST, manifest)
    return target


def _normalise(argv: Sequence[str]) -> list[str]:
    """``CORPUS_DIR`` -> ``corpus=CORPUS_DIR`` and ``--drop`` -> ``drop=true`` (the rest is the usual config syntax)."""
    out, takes_value = [], False
    for arg in argv:
        if takes_value:
            out.append(arg)
            takes_value = False
        elif arg == "--drop":
            out.append("drop=true")
        elif arg in ("--config", "--table"):
            out.append(arg)
            takes_value = True
        elif not arg.startswith("-") and "=" not in arg:
            out.append(f"corpus={arg}")
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> dict:
    """Audit a corpus; returns the summary (also ``metrics.json`` in the audit folder)."""
    from report_synthesis.audit_command import COMMAND

    cfg = COMMAND.parse(_normalise(sys.argv[1:] if argv is None else argv))
    if not Path(cfg.corpus).is_dir():
        raise FileNotFoundError(f"key 'corpus': corpus directory not found: {cfg.corpus}")
    if cfg.table and not Path(cfg.table).is_file():
        raise FileNotFoundError(f"key 'table': canonical table not found: {cfg.table}")
    out = Path(cfg.out or Path(cfg.corpus) / "audit")
    run = RunDir.create(out, cfg)
    verdicts, kept = audit(cfg)
    verdicts.to_csv(run.file("audit.csv"), index=False, quoting=csv.QUOTE_MINIMAL)
    summary = _summary(verdicts)
    if cfg.drop:
        summary["clean_corpus"] = str(_write_clean(cfg, kept, summary))
    run.write_metrics(summary)
    log.info(
        "%d reports: %d accepted, %d rejected; by reason: %s%s",
        summary["reports"],
        summary["accepted"],
        summary["rejected"],
        summary["rejected_by_reason"] or "none",
        f"; cleaned corpus in {summary['clean_corpus']}" if cfg.drop else "",
    )
    return summary


if __name__ == "__main__":
    sys.exit(module_main("audit-reports"))
