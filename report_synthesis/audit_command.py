"""The ``mvmlm audit-reports`` command (entry point of the group ``mvmlm.commands``); a light module."""

from mvmlm.cli import Command

__all__ = ["COMMAND"]

COMMAND = Command(
    name="audit-reports",
    summary="re-check an existing report corpus with the current fact check; optionally drop what fails",
    main="report_synthesis.audit:main",
    config="report_synthesis.audit:AuditConfig",
    description=(
        "Report corpus in -> <corpus>/audit/audit.csv (id, verdict, reasons) + metrics.json (counts by reason).\n"
        "Facts: those stored with each report, or --table T (a canonical table; fields from the manifest).\n"
        "--drop also writes the accepted reports as a cleaned corpus beside it (<corpus>-clean).\n\n"
        "  mvmlm audit-reports runs/reports [--table tables/vindr.parquet] [--drop]\n"
        "  python -m report_synthesis.audit runs/reports --drop"
    ),
    flags=(("table", "table"),),
)
