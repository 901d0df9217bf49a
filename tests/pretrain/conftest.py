"""Pretraining fixtures, built once per session: the shared text-image set (tests/conftest.py) of 16 exams, and
command lines of tiny CPU runs over it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import TextImageSet

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "pretrain" / "tiny_cpu.yaml"


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a busy machine two spinning OpenMP threads make these runs about 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class PretrainInputs(TextImageSet):
    def argv(self, out: Path, *overrides: str) -> list[str]:
        """Command-line arguments of a tiny CPU run writing to ``out``."""
        return [
            "--config",
            str(TINY_CONFIG),
            f"data.table={self.table}",
            f"data.corpus={self.corpus}",
            f"model.text.model={self.text_model}",
            "model.text.hidden_size=32",
            f"data.text_cache={self.text_cache}",
            "data.val_split=test",
            f"out={out}",
            *overrides,
        ]


@pytest.fixture(scope="session")
def pretrain_inputs(text_image_set) -> PretrainInputs:
    """16 exams with the generator's own splits."""
    return PretrainInputs(**vars(text_image_set(16)))
