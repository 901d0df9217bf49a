"""Fault injection: ``preprocess`` and ``reports`` killed at several points (SIGKILL, SIGTERM) and run again end with
exactly the outputs of an uninterrupted run; a killed ``preprocess`` leaves no worker processes behind.

The training commands' matrix (pretrain, a downstream trainer) belongs with the training engine's tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from mvmlm.config import ConfigError
from mvmlm.data import schema
from mvmlm.data.preprocess import FAILURES_FILE, TABLE_FILE
from mvmlm.data.preprocess import main as preprocess
from mvmlm.data.synthetic.truth import sample_exams
from report_synthesis import read_corpus
from report_synthesis.backends import register_backend
from report_synthesis.backends.template import TemplateBackend
from report_synthesis.run import main as reports

REPO = Path(__file__).resolve().parents[1]

SLOW_PREPROCESS = """
import sys, time
import mvmlm.data.dicom as dicom
from mvmlm.data.preprocess import main
read = dicom.read_mammogram
dicom.read_mammogram = lambda path, **kw: (time.sleep(0.1), read(path, **kw))[1]
main(sys.argv[1:])
"""

SLOW_REPORTS = """
import sys, time
from report_synthesis.backends import register_backend
from report_synthesis.backends.template import TemplateBackend
from report_synthesis.run import main

@register_backend("slow")
class Slow(TemplateBackend):
    name = "slow"
    def generate(self, requests):
        time.sleep(0.05 * len(requests))
        return super().generate(requests)

main(sys.argv[1:])
"""


@register_backend("slow")
class Slow(TemplateBackend):
    """The killed runs' backend (the subprocess's own is slowed down): template text under another name."""

    name = "slow"


def _kill_when(script: str, args: list[str], ready: Callable[[], bool], sig: int) -> list[int]:
    """Start ``script args`` in a new process and send it ``sig`` once ``ready()``; the pids of its children."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    children = [child.pid for child in psutil.Process(proc.pid).children(recursive=True)]
    os.kill(proc.pid, sig)  # the parent only: its workers must follow it by themselves
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == -sig, stderr.decode()[-2000:]
    return children


def _gone(pids: list[int], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def preprocess_input(synthetic_dataset, tmp_path_factory) -> tuple[list[str], Path]:
    """Preprocess arguments (without --out) and the uninterrupted run's cache folder."""
    root, truth = synthetic_dataset("vindr")
    work = tmp_path_factory.mktemp("fault_preprocess")
    table = schema.write_table(truth, work / "table.parquet")
    args = [f"--table={table}", f"--root={root}", "height=48", "width=32", "progress=false", "--workers=2"]
    return args, Path(preprocess([*args, f"--out={work / 'reference'}"])["folder"])


def _same_cache(folder: Path, reference: Path) -> None:
    files = sorted(p.relative_to(folder) for p in folder.rglob("*.npy"))
    assert files == sorted(p.relative_to(reference) for p in reference.rglob("*.npy")) and files
    for rel in files:
        assert np.array_equal(np.load(folder / rel), np.load(reference / rel)), rel
    pd.testing.assert_frame_equal(schema.read_table(folder / TABLE_FILE), schema.read_table(reference / TABLE_FILE))
    assert (folder / FAILURES_FILE).read_text() == (reference / FAILURES_FILE).read_text()
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize(("sig", "after"), [(signal.SIGKILL, 2), (signal.SIGKILL, 20), (signal.SIGTERM, 8)])
def test_preprocess_killed_and_rerun_equals_an_uninterrupted_run(preprocess_input, tmp_path, sig, after):
    args, reference = preprocess_input
    out = tmp_path / "cache"
    ready = lambda: len(list(out.rglob("*.npy"))) >= after  # noqa: E731
    workers = _kill_when(SLOW_PREPROCESS, [*args, f"--out={out}"], ready, sig)
    assert len(workers) == 2 and _gone(workers), "the workers outlived their killed parent"
    assert after <= len(list(out.rglob("*.npy"))) < len(list(reference.rglob("*.npy")))
    _same_cache(Path(preprocess([*args, f"--out={out}"])["folder"]), reference)


@pytest.fixture(scope="module")
def reports_input(tmp_path_factory) -> tuple[list[str], pd.DataFrame]:
    """Report arguments (without out) and the uninterrupted run's corpus."""
    work = tmp_path_factory.mktemp("fault_reports")
    table = schema.write_table(sample_exams(12, seed=3), work / "table.parquet")
    args = [f"table={table}", "progress=false", "variants=2", "chunk_size=4", "backend.name=slow"]
    reports([*args, f"out={work / 'reference'}"])
    return args, read_corpus(work / "reference")


def _rows(corpus: pd.DataFrame) -> pd.DataFrame:
    return corpus.sort_values("id").reset_index(drop=True)


@pytest.mark.parametrize(("sig", "parts"), [(signal.SIGKILL, 1), (signal.SIGKILL, 5), (signal.SIGTERM, 2)])
def test_reports_killed_and_rerun_equal_an_uninterrupted_run(reports_input, tmp_path, sig, parts):
    args, reference = reports_input
    out = tmp_path / "corpus"
    ready = lambda: len(list((out / "parts").glob("part-*.parquet"))) >= parts  # noqa: E731
    _kill_when(SLOW_REPORTS, [*args, f"out={out}"], ready, sig)
    assert parts * 4 <= len(read_corpus(out)) < len(reference)
    with pytest.raises(ConfigError, match="seed"):  # the manifest written before the first part guards the settings
        reports([*args, f"out={out}", "seed=1"])
    reports([*args, f"out={out}"])
    pd.testing.assert_frame_equal(_rows(read_corpus(out)), _rows(reference))
