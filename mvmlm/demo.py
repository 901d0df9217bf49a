"""``mvmlm demo`` (``make demo``): the toolkit end to end on built-in synthetic data, on CPU, in minutes.

Stages: synthetic VinDr-format exams (real DICOM + VinDr tables) -> canonical table -> preprocessing cache ->
summary and a contact sheet PNG -> per-breast reports (template backend). Everything lands in one run
directory (``out``).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

import pandas as pd

from mvmlm.config import load_config
from mvmlm.data import schema
from mvmlm.data.contact_sheet import contact_sheet
from mvmlm.data.preprocess import FAILURES_FILE, PreprocessParams, cache_folder, preprocess_table
from mvmlm.data.sources import read_source
from mvmlm.data.synthetic import write_synthetic
from mvmlm.rundir import RunDir

__all__ = ["DemoConfig", "main"]

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    out: str = "runs/demo"  # run directory
    format: str = "vindr"  # native format of the synthetic dataset
    exams: int = 24
    seed: int = 0
    source_height: int = 384  # synthetic DICOM size
    source_width: int = 256
    height: int = 192  # preprocessed cache size (H x W)
    width: int = 112
    workers: int = 2
    contact_exams: int = 4  # exams drawn in the contact sheet
    reports_config: str = "configs/reports/template.yaml"  # report synthesis config (template backend)


def summarize(table: pd.DataFrame, failures: int) -> dict:
    """Counts a user checks first: exams, images, views, labels, failures."""
    breasts = table.drop_duplicates(["dataset", "patient_id", "exam_id", "laterality"])

    def counts(column: str) -> dict:
        return {str(k): int(v) for k, v in breasts[column].value_counts(dropna=False).sort_index().items()}

    return {
        "exams": int(table.exam_id.nunique()),
        "images": int(len(table)),
        "views": {str(k): int(v) for k, v in table.view.value_counts().items()},
        "splits": counts("split"),
        "birads": counts("birads"),
        "density": counts("density"),
        "mass": counts("mass"),
        "calcification": counts("calcification"),
        "malignant": counts("malignant"),
        "failures": failures,
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the demo; returns the summary that is also written to ``metrics.json``."""
    parser = argparse.ArgumentParser(prog="mvmlm demo", description=__doc__)
    cfg = load_config(DemoConfig, argv, parser=parser)
    run = RunDir.create(cfg.out, cfg)
    root = run.file("data")
    log.info("1/5 writing %d synthetic %s exams to %s", cfg.exams, cfg.format, root)
    write_synthetic(cfg.format, root, exams=cfg.exams, seed=cfg.seed, height=cfg.source_height, width=cfg.source_width)
    log.info("2/5 reading the native tables into the canonical table")
    table = read_source(cfg.format, str(root), seed=cfg.seed)
    schema.write_table(table, run.file("table.parquet"))
    log.info("3/5 preprocessing %d images into the cache", len(table))
    params = PreprocessParams(height=cfg.height, width=cfg.width)
    cached = preprocess_table(table, root, run.file("cache"), params, workers=cfg.workers)
    failures = len(pd.read_csv(cache_folder(run.file("cache"), params) / FAILURES_FILE))
    log.info("4/5 summary and contact sheet")
    summary = summarize(table, failures)
    sheet = contact_sheet(cached, run.file("contact_sheet.png"), exams=cfg.contact_exams)
    summary["contact_sheet"] = str(sheet)
    run.write_metrics(summary)
    print(f"\nmvmlm demo: {summary['exams']} exams, {summary['images']} images, {failures} failures")
    for key in ("views", "splits", "birads", "density", "mass", "calcification", "malignant"):
        print(f"  {key:<13} {summary[key]}")
    print(f"  contact sheet: {sheet}")
    summary["reports"] = write_reports(cfg, run)
    run.write_metrics(summary)
    print(f"  run directory: {run.path}")
    return summary


def write_reports(cfg: DemoConfig, run: RunDir) -> dict:
    """Stage 5: one report per breast with the template backend; prints a few."""
    from report_synthesis import read_corpus
    from report_synthesis.run import main as reports_main

    out = run.file("reports")
    log.info("5/5 writing per-breast reports (%s)", cfg.reports_config)
    metrics = reports_main(["--config", cfg.reports_config, f"table={run.file('table.parquet')}", f"out={out}",
                            "progress=false"])  # fmt: skip
    corpus = read_corpus(out)
    print(f"\nreports: {len(corpus)} for {corpus.breast_id.nunique()} breasts, e.g.")
    for _, row in corpus.drop_duplicates("breast_id").head(3).iterrows():
        print(f"  [{row.breast_id}] {row.report}")
    return {"reports": int(len(corpus)), "breasts": int(corpus.breast_id.nunique()), "corpus": str(out),
            "rejections": metrics["rejections"]}  # fmt: skip
