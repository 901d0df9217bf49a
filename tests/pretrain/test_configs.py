"""The shipped pretraining configs: valid keys, MV-MLM settings for the paper models, tiny CPU settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvmlm.config import ConfigError, build_config
from mvmlm.models.text_encoders import DEFAULT_TEXT_MODEL
from pretrain.config import PretrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pretrain"
PAPER = ["mvclip_resnet34", "mvclip_effnet_b5", "mvclip_hybrid_vssm", "mvclip_vssm_seqmoe"]
REQUIRED = ["data.table=t.parquet", "data.corpus=reports"]


@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_use_the_mv_mlm_settings(name):
    cfg = build_config(PretrainConfig, [CONFIGS / f"{name}.yaml"], REQUIRED)
    assert cfg.model.image.image_size == [1520, 912]
    tokens = cfg.model.tokens
    assert (tokens.num_tokens, tokens.depth, tokens.heads) == (256, 4, 8)
    assert cfg.model.text.model == DEFAULT_TEXT_MODEL and cfg.model.text.revision
    assert cfg.train.mixed_precision == "bf16" and cfg.data.cached_text


def test_tiny_config_needs_its_data():
    with pytest.raises(ConfigError, match="missing mandatory value.*data.corpus, data.table"):
        build_config(PretrainConfig, [CONFIGS / "tiny_cpu.yaml"])
    cfg = build_config(PretrainConfig, [CONFIGS / "tiny_cpu.yaml"], [*REQUIRED, "model.text.model=bert"])
    assert cfg.train.cpu and cfg.train.mixed_precision == "no" and cfg.data.num_workers == 0


def test_unknown_keys_are_refused():
    with pytest.raises(ConfigError, match="train.acum_steps"):
        build_config(PretrainConfig, [CONFIGS / "mvclip_resnet34.yaml"], [*REQUIRED, "train.acum_steps=2"])
