"""Session-wide fixtures, built once and shared by all tests: tiny synthetic datasets in native formats, and
preprocessed image sets with a report corpus, a tiny BERT and its filled text feature cache."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A loopback port nobody listens on (for a process group's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(num_processes: int = 2) -> list[str]:
    """``accelerate launch`` of ``num_processes`` CPU processes (gloo), to be followed by a script or ``-m module``
    and the command's arguments (which must say ``train.device=cpu``).

    ``accelerate launch --cpu`` starts a single process (its simple launcher needs mpirun for more), so the
    processes come from the torchrun-based ``--multi_gpu`` launcher.
    """
    import sys

    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
    ]  # fmt: skip


SMALL = {"height": 96, "width": 64}


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The suite's tiny models are bound by per-operation overhead: a second intra-op thread only spin-waits, and on
    a loaded 2-core machine (CI) that made training tests several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Callable[..., tuple[Path, pd.DataFrame]]:
    """``synthetic_dataset(fmt, exams=8, seed=0)`` -> (dataset root, expected canonical table); cached per args."""
    from mvmlm.data.synthetic import write_synthetic

    cache: dict[tuple, tuple[Path, pd.DataFrame]] = {}

    def make(fmt: str, exams: int = 8, seed: int = 0) -> tuple[Path, pd.DataFrame]:
        key = (fmt, exams, seed)
        if key not in cache:
            root = tmp_path_factory.mktemp(f"{fmt}_{exams}_{seed}")
            cache[key] = (root, write_synthetic(fmt, root, exams=exams, seed=seed, **SMALL))
        return cache[key]

    return make


@dataclass
class TextImageSet:
    """A preprocessed synthetic VinDr set (64x48) with everything image-text training reads."""

    table: Path  # table.parquet of the preprocess cache
    corpus: Path  # template report corpus (2 variants per breast)
    text_model: Path  # tiny random BERT with the corpus vocabulary
    text_cache: Path  # its filled hidden-state cache (subprocesses never need to load transformers)


@pytest.fixture(scope="session")
def text_image_set(synthetic_dataset, tmp_path_factory) -> Callable[..., TextImageSet]:
    """``text_image_set(exams, test_fraction=None)``; a ``test_fraction`` re-splits patients (15 % val); cached."""
    cache: dict[tuple, TextImageSet] = {}

    def make(exams: int, test_fraction: float | None = None) -> TextImageSet:
        key = (exams, test_fraction)
        if key not in cache:
            cache[key] = _build_text_image_set(synthetic_dataset, tmp_path_factory.mktemp("text_image_set"), *key)
        return cache[key]

    return make


def _build_text_image_set(synthetic_dataset, work: Path, exams: int, test_fraction: float | None) -> TextImageSet:
    from mvmlm.data import schema
    from mvmlm.data.preprocess import PreprocessParams, cache_folder, preprocess_table
    from mvmlm.data.splits import patient_split
    from mvmlm.models.text_encoders import FrozenTextEncoder, TextFeatureCache
    from mvmlm.models.tiny_text import write_tiny_text_model
    from pretrain.data import read_reports
    from report_synthesis.run import main as write_reports

    root, table = synthetic_dataset("vindr", exams=exams, seed=0)
    if test_fraction is not None:
        table = table.assign(
            split=patient_split(table.patient_id, seed=0, val_fraction=0.15, test_fraction=test_fraction)
        )
    truth = schema.write_table(table, work / "table.parquet")
    params = PreprocessParams(height=64, width=48)
    preprocess_table(table, root, work / "cache", params, progress=False)
    corpus = work / "reports"
    write_reports(
        [
            "--config",
            str(REPO / "configs/reports/template.yaml"),
            f"table={truth}",
            f"out={corpus}",
            "variants=2",
            "progress=false",
        ]
    )
    texts = sorted({text for variants in read_reports(corpus).values() for text in variants})
    text_model = write_tiny_text_model(work / "bert", texts)
    TextFeatureCache(work / "text_cache", FrozenTextEncoder(str(text_model), None, max_length=96)).ensure(texts)
    return TextImageSet(cache_folder(work / "cache", params) / "table.parquet", corpus, text_model, work / "text_cache")
