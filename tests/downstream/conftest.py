"""Downstream fixtures, built once per session: a preprocessed synthetic VinDr set (64x48) with a larger test split,
a tiny random MV-CLIP checkpoint (for plumbing tests) and a tiny MV-CLIP pretrained on the set (for the probe
margin test)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMS = 64  # 128 breasts: ~50 % train, 15 % val, 35 % test (by patient)


@dataclass
class DownstreamData:
    table: Path  # table.parquet of the preprocess cache
    corpus: Path  # template report corpus (2 variants per breast)
    text_model: Path  # tiny random BERT with the corpus vocabulary
    text_cache: Path  # its filled hidden-state cache


@pytest.fixture(scope="session")
def downstream_data(synthetic_dataset, tmp_path_factory) -> DownstreamData:
    from mvmlm.data import schema
    from mvmlm.data.preprocess import PreprocessParams, cache_folder, preprocess_table
    from mvmlm.data.splits import patient_split
    from mvmlm.models.text_encoders import FrozenTextEncoder, TextFeatureCache
    from mvmlm.models.tiny_text import write_tiny_text_model
    from pretrain.data import read_reports
    from report_synthesis.run import main as write_reports

    root, table = synthetic_dataset("vindr", exams=EXAMS, seed=0)
    work = tmp_path_factory.mktemp("downstream_data")
    table = table.assign(split=patient_split(table.patient_id, seed=0, val_fraction=0.15, test_fraction=0.35))
    truth = work / "table.parquet"
    schema.write_table(table, truth)
    params = PreprocessParams(height=64, width=48)
    preprocess_table(table, root, work / "cache", params, progress=False)
    corpus = work / "reports"
    write_reports(["--config", str(REPO / "configs/reports/template.yaml"), f"table={truth}", f"out={corpus}",
                   "variants=2", "progress=false"])  # fmt: skip
    texts = sorted({text for variants in read_reports(corpus).values() for text in variants})
    text_model = write_tiny_text_model(work / "bert", texts)
    cache = TextFeatureCache(work / "text_cache", FrozenTextEncoder(str(text_model), None, max_length=96))
    cache.ensure(texts)
    return DownstreamData(
        cache_folder(work / "cache", params) / "table.parquet", corpus, text_model, work / "text_cache"
    )


def tiny_config(text_model: Path, encoder: str = "timm:test_resnet"):
    """A tiny MV-CLIP config at 64x48 with the tiny BERT."""
    from mvmlm.models.mvclip import ImageTowerConfig, MVCLIPConfig, TextTowerConfig, TokenConfig

    return MVCLIPConfig(
        image=ImageTowerConfig(encoder=encoder, encoder_kwargs={"in_chans": 1}, image_size=[64, 48]),
        text=TextTowerConfig(model=str(text_model), revision=None, max_length=96, hidden_size=32),
        tokens=TokenConfig(num_tokens=8, width=32, depth=1, heads=4, mlp_ratio=2.0),
        embed_dim=16,
    )


@pytest.fixture(scope="session")
def random_checkpoint(downstream_data, tmp_path_factory) -> Path:
    """A saved, untrained tiny MV-CLIP (seeded): checkpoint plumbing without pretraining."""
    import torch

    from mvmlm.models.mvclip import MVCLIP
    from mvmlm.models.text_encoders import FrozenTextEncoder

    torch.manual_seed(0)
    model = MVCLIP(tiny_config(downstream_data.text_model), FrozenTextEncoder(str(downstream_data.text_model), None))
    return model.save(tmp_path_factory.mktemp("random_mvclip") / "model")


#: pretraining of the margin test: a few dozen steps at a high learning rate; ResNet-style tiny encoder (its
#: BatchNorm features learn within tens of steps, where the tiny ConvNeXt's layer-scaled blocks barely move)
PRETRAIN_OVERRIDES = (
    "model.image.encoder=timm:test_resnet", "train.max_steps=40", "optim.lr=1e-2", "optim.warmup_steps=3",
    "eval.train_subset=0", "train.tracker=none", "data.val_split=val",
)  # fmt: skip


@pytest.fixture(scope="session")
def pretrained_checkpoint(downstream_data, tmp_path_factory) -> Path:
    """A tiny MV-CLIP pretrained on the synthetic set's training split with ``pretrain`` (CPU, seeded)."""
    from pretrain.train import main as pretrain

    out = tmp_path_factory.mktemp("pretrain") / "tiny"
    pretrain(["--config", str(REPO / "configs/pretrain/tiny_cpu.yaml"), f"data.table={downstream_data.table}",
              f"data.corpus={downstream_data.corpus}", f"model.text.model={downstream_data.text_model}",
              "model.text.hidden_size=32", f"data.text_cache={downstream_data.text_cache}", f"out={out}",
              *PRETRAIN_OVERRIDES])  # fmt: skip
    return out / "model"
