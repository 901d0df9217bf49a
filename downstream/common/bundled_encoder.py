"""An image encoder inside a model bundle, rebuilt without the run's other files: the bundle records the encoder's
config with ``init: random`` (the architecture; the weights are in the bundle's safetensors) and, for an MV-MLM
tower, a copy of its pretraining config in ``encoder/config.yaml`` (the tower's ``checkpoint`` then names that
folder, relative to the bundle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from downstream.common.config import EncoderConfig
from mvmlm.checkpoint import CONFIG_NAME, atomic_path
from mvmlm.config import config_to_dict

__all__ = ["ENCODER_DIR", "tower_architecture", "stored_encoder", "write_architecture", "bundled_encoder_config"]

ENCODER_DIR = "encoder"


def tower_architecture(checkpoint: str | Path) -> dict[str, Any]:
    """The pretraining config of the MV-MLM checkpoint directory ``checkpoint``: what a bundle copies to
    ``encoder/config.yaml`` (:func:`write_architecture`) to rebuild the tower without the pretraining files."""
    return config_to_dict(OmegaConf.load(Path(checkpoint) / CONFIG_NAME))


def stored_encoder(encoder: EncoderConfig) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What a bundle records for ``encoder``: its config (``init: random``; an MV-MLM tower's ``checkpoint`` =
    :data:`ENCODER_DIR`) and an MV-MLM tower's pretraining config (None for a registered encoder)."""
    stored = {**config_to_dict(encoder), "init": "random"}
    architecture = None
    if encoder.source == "mvclip":
        architecture = tower_architecture(encoder.checkpoint)
        stored["checkpoint"] = ENCODER_DIR
    return stored, architecture


def write_architecture(directory: Path, architecture: dict[str, Any] | None) -> None:
    """Write an MV-MLM tower's pretraining config to ``directory/encoder/config.yaml`` (nothing for None)."""
    if architecture is not None:
        with atomic_path(directory / ENCODER_DIR / CONFIG_NAME) as tmp:
            tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(architecture)))


def bundled_encoder_config(directory: Path, stored: dict[str, Any] | EncoderConfig) -> EncoderConfig:
    """The encoder config recorded by :func:`stored_encoder`, its MV-MLM ``checkpoint`` inside bundle
    ``directory``."""
    encoder = EncoderConfig(**(vars(stored) if isinstance(stored, EncoderConfig) else stored))
    if encoder.source == "mvclip":
        encoder.checkpoint = str(Path(directory) / encoder.checkpoint)
    return encoder
