"""``audit-reports``: re-checking a corpus written earlier (here by the template backend, then tampered with)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mvmlm.cli import main as mvmlm_main
from mvmlm.rundir import RunDir
from report_synthesis import corpus, read_corpus
from report_synthesis.audit import main
from report_synthesis.run import ReportsConfig, write_reports

LEFT = "toy/PAT-0001/EX-0001/L#1"  # irregular spiculated mass, BI-RADS 4
RIGHT = "toy/PAT-0001/EX-0001/R#0"  # BI-RADS 1, no findings
TAMPERED = {
    LEFT: "FINDINGS: Left breast. An oval circumscribed mass at 2 o'clock measuring 1.8 cm.\nIMPRESSION: BI-RADS 4.",
    RIGHT: "FINDINGS: Right breast, stable compared with the prior exam. No mass.\nIMPRESSION: BI-RADS 1.",
}


@pytest.fixture
def tampered(table_path, tmp_path):
    """A template corpus (6 breasts x 2 variants) with two reports replaced by unfaithful ones."""
    out = tmp_path / "corpus"
    write_reports(ReportsConfig(table=str(table_path), out=str(out), variants=2, progress=False), RunDir(out))
    [part] = corpus.part_files(out)
    rows = pq.read_table(part).to_pylist()
    for row in rows:
        row["report"] = TAMPERED.get(row["id"], row["report"])
    pq.write_table(pa.Table.from_pylist(rows, schema=corpus.SCHEMA), part)
    return out


def test_audit_flags_exactly_the_tampered_reports_and_counts_reasons(tampered):
    summary = main([str(tampered), "progress=false"])
    audit = pd.read_csv(tampered / "audit" / "audit.csv", keep_default_na=False)
    assert list(audit.columns) == ["id", "verdict", "reasons"] and len(audit) == 12
    assert set(audit.loc[audit.verdict == "rejected", "id"]) == set(TAMPERED)
    reasons = dict(zip(audit.id, audit.reasons, strict=True))
    assert "descriptor: states 'oval'" in reasons[LEFT] and "location:" in reasons[LEFT]
    assert "measurement:" in reasons[LEFT] and "temporal:" in reasons[RIGHT]
    assert summary["accepted"] == 10 and summary["rejected"] == 2
    assert summary["rejected_by_reason"] == {
        "descriptor": 1,  # a report counts once per category: 'oval', 'circumscribed' stated, 2 facts left out
        "calcification": 1,
        "other finding": 1,
        "measurement": 1,
        "location": 1,
        "temporal": 1,
    }


def test_drop_writes_a_cleaned_corpus_beside_the_audited_one(tampered):
    summary = main([str(tampered), "--drop", "progress=false"])
    clean = tampered.parent / "corpus-clean"
    assert summary["clean_corpus"] == str(clean)
    kept = read_corpus(clean)
    assert len(kept) == 10 and not set(TAMPERED) & set(kept.id)
    assert len(read_corpus(tampered)) == 12  # the audited corpus is left as it was
    with pytest.raises(Exception, match="already there"):
        main([str(tampered), "--drop", "progress=false"])


def test_table_gives_the_facts_and_unselected_fields_reject(tampered, table_path, tmp_path):
    summary = main(
        [str(tampered), "--table", str(table_path), "fields=[views]", f"out={tmp_path / 'a'}", "progress=false"]
    )
    audit = pd.read_csv(tmp_path / "a" / "audit.csv", keep_default_na=False)
    # every template report states BI-RADS, density or findings, not selected here, but the breast that has none
    assert set(audit.loc[audit.verdict == "accepted", "id"]) == {"toy/PAT-0002/EX-0002/L#0", "toy/PAT-0002/EX-0002/L#1"}
    assert summary["rejected"] == 10 and summary["rejected_by_reason"]["birads"] == 10


def test_missing_corpus_is_a_one_line_error(tmp_path, capsys):
    assert mvmlm_main(["audit-reports", str(tmp_path / "nowhere")]) == 2
    assert "corpus directory not found" in capsys.readouterr().err


def test_module_entry_runs_and_its_config_needs_no_torch(tampered):
    done = subprocess.run(
        [sys.executable, "-m", "report_synthesis.audit", str(tampered), "progress=false"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tampered / "audit" / "audit.csv").is_file()
    code = "import sys, report_synthesis.audit; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
