"""The typed config of ``mvmlm report`` (torch-free: ``mvmlm report --help`` reads only this module)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

__all__ = ["ReportConfig"]


@dataclass
class ReportConfig:
    run_dir: str = MISSING  # a run directory (a demo's, or one command's) or a folder holding run directories
    out: str = ""  # the HTML file to write; '' = RUN_DIR/report.html
    title: str = ""  # page title; '' = the run directory's name
    examples: int = 3  # example reports shown beside their facts
