"""The fine-tuned breast classifier: an image backbone per view, views pooled per breast, a linear head; saved as a
self-contained folder (:func:`save_finetuned`) and read back by :func:`load_finetuned`."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from downstream.common.config import EncoderConfig
from downstream.common.embed import Backbone, build_backbone, pool_views
from downstream.common.tasks import Task
from downstream.finetune.config import FinetunedModelConfig
from mvmlm.checkpoint import CONFIG_NAME, load_checkpoint_config, load_weights, save_checkpoint

__all__ = ["ENCODER_DIR", "BreastClassifier", "class_weights", "save_finetuned", "load_finetuned"]

ENCODER_DIR = "encoder"  # a saved model's copy of its MV-MLM pretraining config


class BreastClassifier(nn.Module):
    """Breast views ``(B, V, C, H, W)`` with presence ``(B, V)`` -> class logits ``(B, k)``."""

    def __init__(self, backbone: Backbone, num_classes: int, pool: str = "mean") -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.dim, num_classes)
        self.pool = pool

    def forward(self, images: Tensor, present: Tensor) -> Tensor:
        flat = present.flatten()
        features = self.backbone(images.flatten(0, 1)[flat])
        views = features.new_zeros(flat.numel(), features.shape[-1])
        views[flat] = features
        return self.head(pool_views(views.view(*present.shape, -1), present, self.pool))


def class_weights(labels: np.ndarray, num_classes: int) -> Tensor:
    """``n / (k * n_c)`` per class (0 for classes absent from ``labels``), as in scikit-learn's "balanced"."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def save_finetuned(directory: Path, model: BreastClassifier, encoder: EncoderConfig, task: Task, pool: str) -> Path:
    """Write ``model`` to ``directory`` so that :func:`load_finetuned` rebuilds it without the pretraining files."""
    stored = EncoderConfig(**{**vars(encoder), "init": "random"})  # the architecture; the weights are in the file
    if encoder.source == "mvclip":
        (directory / ENCODER_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(encoder.checkpoint) / CONFIG_NAME, directory / ENCODER_DIR / CONFIG_NAME)
        stored.checkpoint = ENCODER_DIR
    config = FinetunedModelConfig(stored, task.name, list(task.class_names), pool)
    return save_checkpoint(directory, model.state_dict(), config)


def load_finetuned(directory: str | Path, device: str = "cpu") -> tuple[BreastClassifier, FinetunedModelConfig]:
    """A model saved by ``save_models: true`` (eval mode on ``device``) and its config."""
    directory = Path(directory)
    config = load_checkpoint_config(directory, FinetunedModelConfig)
    encoder = config.encoder
    if encoder.source == "mvclip":
        encoder = EncoderConfig(**{**vars(encoder), "checkpoint": str(directory / encoder.checkpoint)})
    model = BreastClassifier(build_backbone(encoder), len(config.class_names), config.pool)
    model.load_state_dict(load_weights(directory))
    return model.to(device).eval(), config
