"""Downstream fixtures, built once per session: a preprocessed synthetic VinDr set (64x48) with a larger test split,
a tiny random MV-CLIP checkpoint (for plumbing tests) and a tiny MV-CLIP pretrained on the set (for the probe
margin test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import TextImageSet

REPO = Path(__file__).resolve().parents[2]
EXAMS = 64  # 128 breasts: ~50 % train, 15 % val, 35 % test (by patient)


@pytest.fixture(scope="session")
def downstream_data(text_image_set) -> TextImageSet:
    """64 exams re-split by patient with a larger test split."""
    return text_image_set(EXAMS, test_fraction=0.35)


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
    "model.image.encoder=timm:test_resnet",
    "train.max_steps=40",
    "optim.lr=1e-2",
    "optim.warmup_steps=3",
    "eval.train_subset=0",
    "train.trackers=[]",
    "data.val_split=val",
)


@pytest.fixture(scope="session")
def pretrained_checkpoint(downstream_data, tmp_path_factory) -> Path:
    """A tiny MV-CLIP pretrained on the synthetic set's training split with ``pretrain`` (CPU, seeded)."""
    from pretrain.train import main as pretrain

    out = tmp_path_factory.mktemp("pretrain") / "tiny"
    pretrain(
        [
            "--config",
            str(REPO / "configs/pretrain/tiny_cpu.yaml"),
            f"data.table={downstream_data.table}",
            f"data.corpus={downstream_data.corpus}",
            f"model.text.model={downstream_data.text_model}",
            "model.text.hidden_size=32",
            f"data.text_cache={downstream_data.text_cache}",
            f"out={out}",
            *PRETRAIN_OVERRIDES,
        ]
    )
    return out / "model"
