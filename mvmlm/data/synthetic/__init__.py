"""Synthetic mammography exams written in a dataset's native format (real DICOM + the dataset's own tables).

``mvmlm synth-data --format vindr --out DIR --exams 20 --seed 0``

The generator first samples a ground truth (:func:`mvmlm.data.synthetic.truth.sample_exams`), renders
phantom images with planted, label-consistent signal (:mod:`mvmlm.data.synthetic.phantom`), then a format
writer lays files and tables out exactly as the dataset ships them and returns the canonical table its
adapter must produce. That expected table is saved as ``DIR/synthetic_truth.parquet``, and where each image's
lesion was planted as ``DIR/synthetic_lesions.parquet`` (:mod:`mvmlm.data.synthetic.lesions`; a writer returns the
truth's ``lesion_*`` columns with its rows).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mvmlm.config import MISSING
from mvmlm.data import schema
from mvmlm.data.sources import SOURCES
from mvmlm.registry import Registry

__all__ = ["FORMATS", "TRUTH_FILE", "register_format", "write_synthetic", "main"]

log = logging.getLogger(__name__)

TRUTH_FILE = "synthetic_truth.parquet"
#: format -> ``writer(truth, out_dir, height=, width=, seed=) -> expected canonical table``; one per source
#: adapter, named like it, each registering itself when first used
FORMATS: Registry[Callable[..., pd.DataFrame]] = Registry(
    "synthetic format", lazy={name: f"mvmlm.data.synthetic.{name}" for name in SOURCES.names()}
)
register_format = FORMATS.register


def write_synthetic(fmt: str, out: str | Path, *, exams: int, seed: int, height: int, width: int) -> pd.DataFrame:
    """Write ``exams`` synthetic exams in format ``fmt`` under ``out``; return (and save) the expected table."""
    from mvmlm.data.synthetic.lesions import LESION_COLUMNS, LESIONS_FILE
    from mvmlm.data.synthetic.truth import sample_exams

    writer = FORMATS.get(fmt)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    truth = sample_exams(exams, seed)
    written = writer(truth, out, height=height, width=width, seed=seed)
    lesions = written[["dataset", "image_id", *LESION_COLUMNS]].astype({c: float for c in LESION_COLUMNS})
    expected = schema.conform(written.drop(columns=list(LESION_COLUMNS)))
    expected.to_parquet(out / TRUTH_FILE, index=False)
    lesions.to_parquet(out / LESIONS_FILE, index=False)
    return expected


@dataclass
class SynthConfig:
    format: str = MISSING  # vindr | rsna | cmmd | cbis_ddsm | embed
    out: str = MISSING  # output folder (the dataset root)
    exams: int = 20
    seed: int = 0
    height: int = 256  # image rows; real data is ~3000-4000
    width: int = 160  # image columns


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """``mvmlm synth-data``."""
    from mvmlm.commands import SYNTH_DATA

    cfg = SYNTH_DATA.parse(argv)
    table = write_synthetic(cfg.format, cfg.out, exams=cfg.exams, seed=cfg.seed, height=cfg.height, width=cfg.width)
    log.info("wrote %d %s images of %d exams to %s", len(table), cfg.format, table.exam_id.nunique(), cfg.out)
    return table
