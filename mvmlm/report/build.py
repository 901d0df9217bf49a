"""Build the HTML page of a run directory with Jinja2 (``mvmlm report RUN_DIR``)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from mvmlm.errors import InputError
from mvmlm.report.config import ReportConfig
from mvmlm.report.sections import collect

__all__ = ["EmptyRunError", "build_report", "main"]

log = logging.getLogger(__name__)


class EmptyRunError(ValueError, InputError):
    """The folder holds no output a section of the page can show."""


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("mvmlm.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def build_report(cfg: ReportConfig) -> Path:
    """Write the page for ``cfg.run_dir`` and return its path."""
    run_dir = Path(cfg.run_dir)
    if not run_dir.is_dir():
        raise EmptyRunError(f"{run_dir}: no such run directory")
    sections = collect(run_dir, cfg)
    if not sections:
        raise EmptyRunError(
            f"{run_dir}: no run outputs found (metrics.json of pretrain / multiview / risk / the demo, a probe's "
            "results.csv, a report corpus' manifest.json), neither here nor in its sub-folders"
        )
    out = Path(cfg.out) if cfg.out else run_dir / "report.html"
    html = (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=cfg.title or f"mvmlm report: {run_dir.resolve().name}",
            generated=time.strftime("%Y-%m-%d %H:%M"),
            sections=sections,
        )
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    log.info("report: %d sections (%s) -> %s", len(sections), ", ".join(s["kind"] for s in sections), out)
    return out


def main(argv: list[str] | None = None) -> Path:
    """``mvmlm report RUN_DIR [out=FILE]``: prints and returns the page's path."""
    from mvmlm.commands import REPORT

    args = list(sys.argv[1:] if argv is None else argv)
    if args and "=" not in args[0] and not args[0].startswith("-"):
        args[0] = f"run_dir={args[0]}"  # the run directory as the first positional argument
    cfg = REPORT.parse(args)
    out = build_report(cfg)
    print(out)
    return out
