"""The fine-tuned breast classifier: an image backbone per view, views pooled per breast, a linear head; saved as a
self-contained bundle (:func:`save_finetuned`, kind ``finetune``) read back by :func:`load_finetuned` or
``mvmlm.load_model``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from downstream.common.bundled_encoder import bundled_encoder_config, stored_encoder, write_architecture
from downstream.common.config import EncoderConfig
from downstream.common.embed import Backbone, build_backbone, pool_views
from downstream.common.tasks import Task
from downstream.finetune.config import FinetunedModelConfig
from mvmlm.bundle import Bundle, ModelCardInfo, bundle_config
from mvmlm.checkpoint import load_checkpoint_config, load_weights, save_checkpoint
from mvmlm.config import config_to_dict

__all__ = [
    "BreastClassifier",
    "FinetunedBundle",
    "class_weights",
    "finetune_card",
    "save_finetuned",
    "load_finetuned",
]


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


class FinetunedBundle(Bundle):
    """A fine-tuned breast classifier as a bundle: CC + MLO of a breast -> class probabilities of its task."""

    kind = "finetune"
    level = "breast"

    def write_files(self, directory: Path) -> None:
        write_architecture(directory, self.config.get("encoder_config"))
        save_checkpoint(directory, self.module.state_dict(), OmegaConf.create(self.config["model"]))

    @classmethod
    def read_module(cls, directory: Path, config: dict) -> BreastClassifier:
        return load_finetuned(directory)[0]

    def predict_views(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        (task,) = self.heads
        return {task: self.module(images, mask).float().softmax(dim=-1)}

    def embed_images(self, images: Tensor) -> Tensor:
        return self.module.backbone(images)


def finetune_card(run_dir: Path, task: Task, counts: dict[str, int], best: dict[str, Any]) -> ModelCardInfo:
    """The card facts of a fine-tuned unit: breasts per split and its selected validation score (saved before the
    test split is read, so no test metric)."""
    score = best.get("score")
    return ModelCardInfo.from_run(
        run_dir,
        title=f"mvmlm fine-tuned breast classifier: {task.name}",
        predicts=f"From the CC and MLO views of a breast, the probability of each class of {task.name!r}.",
        counts=counts,
        metrics={} if score is None else {f"{best['metric']} (best epoch {best['epoch']})": f"{score:.3f}"},
    )


def save_finetuned(
    directory: Path,
    model: BreastClassifier,
    encoder: EncoderConfig,
    task: Task,
    pool: str,
    preprocessing: dict[str, Any],
    card: ModelCardInfo | None = None,
) -> Path:
    """Write ``model`` to ``directory`` as a bundle that :func:`load_finetuned` and ``mvmlm.load_model`` rebuild
    without the pretraining files (an MV-MLM tower's architecture is copied to ``encoder/config.yaml``)."""
    stored, encoder_config = stored_encoder(encoder)
    config = FinetunedModelConfig(EncoderConfig(**stored), task.name, list(task.class_names), pool)
    heads = {task.name: list(task.class_names)}
    extra = {"encoder_config": encoder_config}
    bundle = FinetunedBundle(model, bundle_config(config_to_dict(config), heads, preprocessing, card, **extra))
    bundle.save_pretrained(directory)
    return directory


def load_finetuned(directory: str | Path, device: str = "cpu") -> tuple[BreastClassifier, FinetunedModelConfig]:
    """A model saved by ``save_models: true`` (eval mode on ``device``) and its config."""
    directory = Path(directory)
    config = load_checkpoint_config(directory, FinetunedModelConfig)
    encoder = bundled_encoder_config(directory, config.encoder)
    model = BreastClassifier(build_backbone(encoder), len(config.class_names), config.pool)
    model.load_state_dict(load_weights(directory))
    return model.to(device).eval(), config
