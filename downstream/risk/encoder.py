"""The image encoder a risk bundle carries, so it predicts from images: its weights in ``encoder/model.safetensors``
and, for an MV-MLM tower, the pretraining ``encoder/config.yaml`` (the architecture); ``config.json`` records the
encoder config with ``init: random`` (the architecture only; no download when loading, the weights come from the
file). Exams are embedded as the risk command embedded them: each present view through the encoder, the views
pooled (mean or max)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch import Tensor

from downstream.common.bundled_encoder import ENCODER_DIR, bundled_encoder_config, stored_encoder
from downstream.common.config import EncoderConfig
from downstream.common.embed import Backbone, build_backbone, pool_views
from mvmlm.checkpoint import load_weights, save_checkpoint

__all__ = ["bundled_encoder", "save_encoder", "load_encoder", "embed_exams"]


def bundled_encoder(encoder: EncoderConfig | dict[str, Any]) -> dict[str, Any]:
    """What ``config.json`` records to rebuild ``encoder`` from the bundle: ``encoder`` and ``architecture``
    (:func:`downstream.common.bundled_encoder.stored_encoder`)."""
    stored, architecture = stored_encoder(EncoderConfig(**encoder) if isinstance(encoder, dict) else encoder)
    return {"encoder": stored, "architecture": architecture}


def save_encoder(directory: Path, backbone: Backbone, bundled: dict[str, Any]) -> None:
    """Write ``backbone``'s weights (and an MV-MLM tower's architecture) into ``directory/encoder/``."""
    architecture = bundled["architecture"] or bundled["encoder"]
    save_checkpoint(directory / ENCODER_DIR, backbone.state_dict(), OmegaConf.create(architecture))


def load_encoder(directory: Path, bundled: dict[str, Any]) -> Backbone:
    """The backbone :func:`save_encoder` wrote into bundle ``directory``, in eval mode on the CPU."""
    backbone = build_backbone(bundled_encoder_config(directory, bundled["encoder"]))
    backbone.load_state_dict(load_weights(directory / ENCODER_DIR))
    return backbone.eval()


def embed_exams(backbone: Backbone, images: Tensor, mask: Tensor, pool: str) -> Tensor:
    """Views ``(B, V, 1, H, W)`` with presence ``(B, V)`` -> exam embeddings ``(B, D)``: the present views embedded,
    pooled."""
    flat = mask.flatten().bool()
    features = backbone(images.flatten(0, 1)[flat])
    views = features.new_zeros(flat.numel(), features.shape[-1])
    views[flat] = features
    return pool_views(views.view(*mask.shape, -1), mask, pool)
