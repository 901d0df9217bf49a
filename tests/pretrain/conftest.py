"""Pretraining fixtures, built once per session: a preprocessed synthetic VinDr set (64x48), a template report
corpus with 2 variants per breast, a tiny random BERT and a filled text feature cache (so that subprocesses
never need to load transformers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

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
class PretrainInputs:
    table: Path
    corpus: Path
    text_model: Path
    text_cache: Path

    def argv(self, out: Path, *overrides: str) -> list[str]:
        """Command-line arguments of a tiny CPU run writing to ``out``."""
        return [
            "--config", str(TINY_CONFIG), f"data.table={self.table}", f"data.corpus={self.corpus}",
            f"model.text.model={self.text_model}", "model.text.hidden_size=32", f"data.text_cache={self.text_cache}",
            "data.val_split=test", f"out={out}", *overrides,
        ]  # fmt: skip


@pytest.fixture(scope="session")
def pretrain_inputs(synthetic_dataset, tmp_path_factory) -> PretrainInputs:
    from mvmlm.data.preprocess import PreprocessParams, cache_folder, preprocess_table
    from mvmlm.data.synthetic import TRUTH_FILE
    from mvmlm.models.text_encoders import FrozenTextEncoder, TextFeatureCache
    from mvmlm.models.tiny_text import write_tiny_text_model
    from pretrain.data import read_reports
    from report_synthesis.run import main as write_reports

    root, table = synthetic_dataset("vindr", exams=16, seed=0)
    work = tmp_path_factory.mktemp("pretrain_inputs")
    params = PreprocessParams(height=64, width=48)
    preprocess_table(table, root, work / "cache", params, progress=False)
    corpus = work / "reports"
    write_reports(["--config", str(REPO / "configs/reports/template.yaml"), f"table={root / TRUTH_FILE}",
                   f"out={corpus}", "variants=2", "progress=false"])  # fmt: skip
    texts = sorted({text for variants in read_reports(corpus).values() for text in variants})
    text_model = write_tiny_text_model(work / "bert", texts)
    cache = TextFeatureCache(work / "text_cache", FrozenTextEncoder(str(text_model), None, max_length=96))
    cache.ensure(texts)
    return PretrainInputs(
        cache_folder(work / "cache", params) / "table.parquet", corpus, text_model, work / "text_cache"
    )
