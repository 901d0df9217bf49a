"""``mvmlm report``: one self-contained HTML page (images embedded, no network) from a run directory's outputs."""

from mvmlm.report.build import build_report, main

__all__ = ["build_report", "main"]
