"""A trained co-attention fusion as a model bundle (kind ``coattention``): the CC and MLO views of a breast and its
clinical metadata written as text -> class probabilities.

The metadata text is written as in training (:func:`downstream.coattention.data.metadata_texts`: the bundle's
``metadata_fields`` of the breast's image rows, the template phrasing of its ``text_seed``) and encoded by the frozen
text encoder the bundle names (name + revision); its hidden states go through the storage dtype of the training
cache (float16), as training read them. ``mvmlm predict`` takes the metadata from the DICOM headers (age from
PatientAge) or a table's columns, and from ``--covariates FILE.csv`` (a row per ``image_id`` = SOPInstanceUID or
``exam_id`` = StudyInstanceUID, a column per field, e.g. ``density``; shared with the risk models); a breast lacking
a field is not predicted, its files listed in ``skipped.csv`` with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from torch import Tensor

from downstream.coattention.config import CoAttentionConfig, CoAttentionModelConfig
from downstream.coattention.data import metadata_texts
from downstream.coattention.model import FusionClassifier
from downstream.common.bundled_encoder import bundled_encoder_config, stored_encoder, write_architecture
from downstream.common.embed import build_feature_encoder
from downstream.common.tasks import Task
from mvmlm.bundle import Bundle, ModelCardInfo, bundle_config
from mvmlm.checkpoint import load_weights, save_checkpoint
from mvmlm.config import config_to_dict
from mvmlm.data.exams import BREAST_SLOTS
from mvmlm.data.ids import BREAST_KEYS, breast_id
from mvmlm.inference.covariates import with_covariates_file
from mvmlm.models.text_encoders import FrozenTextEncoder
from report_synthesis import breast_facts

__all__ = ["TEXT_STORE_DTYPE", "CoAttentionBundle", "save_coattention"]

TEXT_STORE_DTYPE = torch.float16  # the text cache's storage dtype, which training read the hidden states through


class CoAttentionBundle(Bundle):
    """The co-attention classifier (or one of its baselines) as a bundle."""

    kind = "coattention"
    level = "breast"

    def __init__(self, module: FusionClassifier, config: dict) -> None:
        super().__init__(module, config)
        text = config["model"]["text"]
        self.text_encoder = FrozenTextEncoder(text["model"], text["revision"], text["max_length"])

    def frozen_text_encoder(self) -> FrozenTextEncoder:
        return self.text_encoder

    def use_text_encoder(self, encoder: FrozenTextEncoder) -> None:
        self.text_encoder = encoder

    @property
    def metadata_fields(self) -> list[str]:
        """The canonical-table columns its metadata text states (e.g. age, density)."""
        return list(self.config["model"]["metadata_fields"])

    def write_files(self, directory: Path) -> None:
        write_architecture(directory, self.config.get("encoder_config"))
        save_checkpoint(directory, self.module.state_dict(), OmegaConf.create(self.config["model"]))

    @classmethod
    def read_module(cls, directory: Path, config: dict) -> FusionClassifier:
        model = config["model"]
        encoder = bundled_encoder_config(directory, model["encoder"])
        fusion = FusionClassifier(
            model["fusion"],
            CoAttentionModelConfig(**model["architecture"]),
            len(model["class_names"]),
            build_feature_encoder(encoder) if model["image"] else None,
            model["text_dim"],
        )
        fusion.load_state_dict(load_weights(directory))
        return fusion.eval()

    def prepare_units(
        self, rows: pd.DataFrame, images: pd.DataFrame, covariates: str = ""
    ) -> tuple[pd.DataFrame, list[dict[str, str]]]:
        """The breasts with their metadata text (column ``metadata_text``), the fields from the images' rows (DICOM
        headers: age = PatientAge; a table's columns) and the CSV ``covariates`` (its values win); a breast lacking a
        field is dropped, its files listed with the reason."""
        fields = self.metadata_fields
        images = images.assign(**{f: pd.NA for f in fields if f not in images.columns})
        if covariates:
            images = with_covariates_file(images, covariates, fields)
        facts = {f.breast_id: f for f in breast_facts(images)}
        ids = [breast_id(*key) for key in rows[list(BREAST_KEYS)].itertuples(index=False)]
        keep, skipped = [], []
        for (_, row), key in zip(rows.iterrows(), ids, strict=True):
            lacking = [f for f in fields if getattr(facts[key], f, None) is None]
            keep.append(not lacking)
            skipped += [
                {
                    "path": str(row[f"{slot}_path"]),
                    "reason": f"breast not predicted: no {', '.join(lacking)} (the {self.kind} model reads "
                    f"{', '.join(fields)}: from the DICOM header, age = PatientAge, or from --covariates FILE.csv)",
                }
                for slot in BREAST_SLOTS
                if lacking and row[f"{slot}_present"]
            ]
        kept = [key for key, ok in zip(ids, keep, strict=True) if ok]
        texts = metadata_texts(images, kept, fields, self.config["model"]["text_seed"])
        return rows[np.array(keep, dtype=bool)].assign(metadata_text=texts).reset_index(drop=True), skipped

    def unit_inputs(self, rows: pd.DataFrame) -> dict[str, Tensor]:
        """``text_hidden (B, L, D)``, ``text_mask (B, L)``: the frozen encoder's states of each breast's metadata
        text, through the training cache's storage dtype."""
        hidden, mask = self.text_encoder.encode(list(rows["metadata_text"]), "cpu")
        return {"text_hidden": hidden.to(TEXT_STORE_DTYPE).float(), "text_mask": mask}

    def predict_views(
        self,
        images: Tensor,
        mask: Tensor,
        crops: tuple[Tensor, Tensor] | None = None,
        text_hidden: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        (task,) = self.heads
        return {task: self.module(images, mask, text_hidden, text_mask).float().softmax(dim=-1)}

    def embed_images(self, images: Tensor) -> Tensor:
        if self.module.image is None:
            return super().embed_images(images)
        return self.module.image.encoder(images).mean(dim=(2, 3))


def save_coattention(
    directory: Path,
    model: FusionClassifier,
    fusion: str,
    cfg: CoAttentionConfig,
    task: Task,
    text_dim: int,
    preprocessing: dict[str, Any],
    card: ModelCardInfo,
) -> Path:
    """Write ``model`` to ``directory`` as a bundle ``mvmlm.load_model`` rebuilds without the run's other files (an
    MV-MLM encoder's architecture is copied to ``encoder/config.yaml``; the weights are in the bundle's file)."""
    encoder, encoder_config = stored_encoder(cfg.encoder)
    if model.image is None:  # a text-only fusion has no image encoder to rebuild
        encoder_config = None
    described = {
        "fusion": fusion,
        "image": model.image is not None,
        "architecture": config_to_dict(cfg.model),
        "encoder": encoder,
        "text": {"model": cfg.text.model, "revision": cfg.text.revision, "max_length": cfg.text.max_length},
        "text_dim": text_dim,
        "metadata_fields": list(cfg.metadata_fields),
        "text_seed": cfg.text_seed,
        "task": task.name,
        "class_names": list(task.class_names),
    }
    heads = {task.name: list(task.class_names)}
    config = bundle_config(described, heads, preprocessing, card, encoder_config=encoder_config)
    CoAttentionBundle(model, config).save_pretrained(directory)
    return directory
