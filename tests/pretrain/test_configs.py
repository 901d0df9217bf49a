"""The pretraining config: MV-MLM defaults on the core's shared pieces, the shipped files, old keys named."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvmlm.config import ConfigError, DataConfig, build_config
from mvmlm.models.configs import DEFAULT_TEXT_MODEL
from pretrain.config import PretrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pretrain"
PAPER = ["mvclip_resnet34", "mvclip_effnet_b5", "mvclip_hybrid_vssm", "mvclip_vssm_seqmoe"]
REQUIRED = ["data.table=t.parquet", "data.corpus=reports"]


def test_defaults_are_the_mv_mlm_settings_on_the_shared_pieces():
    cfg = build_config(PretrainConfig, overrides=REQUIRED)
    assert isinstance(cfg.data, DataConfig) and cfg.data.augment.enabled and cfg.data.val_split == "val"
    optim = cfg.optim
    assert (optim.lr, optim.weight_decay, optim.betas, optim.eps) == (5e-5, 0.1, [0.9, 0.98], 1e-6)
    assert (optim.warmup_steps, optim.schedule, optim.grad_clip) == (500, "cosine", 1.0)
    train = cfg.train
    assert (train.mixed_precision, train.eval_every, train.save_every, train.keep_checkpoints) == (
        "bf16",
        1000,
        1000,
        3,
    )
    assert train.trackers == ["tensorboard"] and train.epochs == 10 and train.resume == "none"


@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_use_the_mv_mlm_settings(name):
    cfg = build_config(PretrainConfig, [CONFIGS / f"{name}.yaml"], REQUIRED)
    assert cfg.model.image.image_size == [1520, 912]
    tokens = cfg.model.tokens
    assert (tokens.num_tokens, tokens.depth, tokens.heads) == (256, 4, 8)
    assert cfg.model.text.model == DEFAULT_TEXT_MODEL and cfg.model.text.revision
    assert cfg.train.mixed_precision == "bf16" and cfg.data.cached_text and cfg.loss.image_image_weight == 1.0


def test_tiny_config_needs_its_data():
    with pytest.raises(ConfigError, match="missing mandatory value.*data.corpus, data.table"):
        build_config(PretrainConfig, [CONFIGS / "tiny_cpu.yaml"])
    cfg = build_config(PretrainConfig, [CONFIGS / "tiny_cpu.yaml"], [*REQUIRED, "model.text.model=bert"])
    assert cfg.train.device == "cpu" and cfg.train.mixed_precision == "no" and cfg.data.num_workers == 0


def test_unknown_keys_are_refused():
    with pytest.raises(ConfigError, match="train.acum_steps"):
        build_config(PretrainConfig, [CONFIGS / "mvclip_resnet34.yaml"], [*REQUIRED, "train.acum_steps=2"])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("train.cpu=true", "train.device=cpu"),
        ("train.tracker=none", "train.trackers"),
        ("data.augment_params.degrees=5", "data.augment"),
    ],
)
def test_old_keys_give_one_line_naming_the_new_key(old, new):
    with pytest.raises(ConfigError) as error:
        build_config(PretrainConfig, overrides=[*REQUIRED, old])
    message = str(error.value)
    assert new in message and old.split("=")[0] in message and "\n" not in message


def test_top_level_resume_is_refused():
    """``resume`` moved to ``train.resume`` (flag ``--resume``); the old top-level key is not silently ignored."""
    with pytest.raises(ConfigError, match="'resume'"):
        build_config(PretrainConfig, overrides=[*REQUIRED, "resume=latest"])
    assert build_config(PretrainConfig, overrides=[*REQUIRED, "train.resume=latest"]).train.resume == "latest"
