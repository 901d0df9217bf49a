"""Session-wide fixtures: tiny synthetic datasets in native formats, built once and shared by all tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

SMALL = {"height": 96, "width": 64}


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
