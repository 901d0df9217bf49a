"""The breasts of a co-attention run: images + view mask, the metadata written as text (its frozen encoder's hidden
states, cached once per text), the class label and the breast id, per split of the table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from downstream.coattention.config import CoAttentionConfig
from downstream.common.tasks import Task, load_breasts
from mvmlm.config import ConfigError
from mvmlm.data.device_augment import DeviceAugment, device_augment_for
from mvmlm.data.exams import BreastDataset
from mvmlm.data.preprocess import read_cached_table
from mvmlm.data.transforms import SeededItems, build_transform
from mvmlm.models.text_encoders import TextFeatureCache
from report_synthesis import breast_facts, template_report

__all__ = ["LEAKING_FIELDS", "check_leakage", "metadata_texts", "BreastTexts", "Split", "load_splits"]

#: target column -> metadata fields that equal it or determine it (on some source), never allowed as input
LEAKING_FIELDS: dict[str, frozenset[str]] = {
    "malignant": frozenset(
        {"pathology", "birads", "mass_shape", "mass_margin", "calc_morphology", "calc_distribution"}
    ),
    "calcification": frozenset({"calcification", "calc_morphology", "calc_distribution"}),
    "mass": frozenset({"mass", "mass_shape", "mass_margin"}),
    "birads": frozenset({"birads", "pathology"}),
    "density": frozenset({"density"}),
}


def check_leakage(fields: list[str], task: Task) -> None:
    """Raise :class:`ConfigError` if a metadata field equals or determines the task's target column."""
    leaking = sorted(set(fields) & (LEAKING_FIELDS.get(task.column, frozenset()) | {task.column}))
    if leaking:
        raise ConfigError(
            f"metadata_fields: {leaking} equal or determine the target {task.column!r} of task {task.name!r} "
            "(label leakage); remove them"
        )


def metadata_texts(table: pd.DataFrame, breast_ids: list[str], fields: list[str], seed: int) -> list[str]:
    """The metadata text of each breast: its ``fields`` as facts, written by the template backend."""
    facts = {f.breast_id: f for f in breast_facts(table)}
    missing = [b for b in breast_ids if b not in facts]
    if missing:
        raise KeyError(f"no facts for breast {missing[0]} ({len(missing)} missing)")
    return [template_report(facts[b].select(fields), seed) for b in breast_ids]


class BreastTexts(Dataset):
    """Items ``{"images": (V, 1, H, W), "view_mask": (V,), "text_hidden": (L, D), "text_mask": (L,), "label",
    "id"}``; ``text_rows[i]`` is breast ``i``'s row of the shared text states ``hidden (T, L, D)``, ``mask (T, L)``.
    With ``device`` augmentation ``images`` are the stored uint16 values and ``affine`` their parameters."""

    def __init__(
        self,
        breasts: pd.DataFrame,
        labels: np.ndarray,
        text_rows: np.ndarray,
        hidden: Tensor,
        mask: Tensor,
        transform: Callable[[Tensor], Tensor] | None = None,
        device: DeviceAugment | None = None,
    ) -> None:
        self.images = BreastDataset(breasts, labels=(), transform=transform, device=device)
        self.labels, self.text_rows, self.hidden, self.mask = labels, text_rows, hidden, mask

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        item, row = self.images[index], self.text_rows[index]
        return {
            **{key: item[key] for key in ("images", "affine") if key in item},
            "view_mask": item["mask"],
            "text_hidden": self.hidden[row].float(),
            "text_mask": self.mask[row],
            "label": int(self.labels[index]),
            "id": item["id"],
        }


@dataclass
class Split:
    """One split's breasts (rows of ``build_breasts``), their class labels, their dataset and (training with device
    augmentation) the device half of the augmentation, the engine's batch hook."""

    breasts: pd.DataFrame
    labels: np.ndarray
    dataset: BreastTexts
    augment: DeviceAugment | None = None


def load_splits(cfg: CoAttentionConfig, task: Task, texts: TextFeatureCache, device: torch.device) -> dict[str, Split]:
    """Train / val / test :class:`Split` of the breasts labelled for ``task``; every metadata text is encoded (on
    ``device``) into ``texts`` once; ``data.augment_on`` decides whether ``device`` augments the training images.

    Raises:
        ValueError: a split holds no labelled breast.
    """
    breasts = load_breasts(cfg.data)
    labels = task.labels(breasts)
    breasts, labels = breasts[labels >= 0].reset_index(drop=True), labels[labels >= 0]
    written = metadata_texts(
        read_cached_table(cfg.data.table), list(breasts["breast_id"]), cfg.metadata_fields, cfg.text_seed
    )
    unique = sorted(set(written))
    hidden, mask = texts(unique, device=device)  # encodes the texts not cached yet
    hidden = hidden.to(texts.store_dtype)  # as the cache stores them: exact, and half the memory of float32
    index = {text: row for row, text in enumerate(unique)}
    rows = np.array([index[text] for text in written])
    splits = {}
    for role, name in (("train", cfg.data.train_split), ("val", cfg.data.val_split), ("test", cfg.data.test_split)):
        chosen = np.flatnonzero(breasts["split"].to_numpy() == name)
        if chosen.size == 0:
            raise ValueError(f"{cfg.data.table}: no breasts labelled for task {task.name!r} in split {name!r}")
        part = breasts.iloc[chosen].reset_index(drop=True)
        augment = device_augment_for(cfg.data, device) if role == "train" else None
        transform = None if augment else build_transform(role == "train", cfg.data.augment)
        dataset = BreastTexts(part, labels[chosen], rows[chosen], hidden, mask, transform, augment)
        if role == "train":
            dataset = SeededItems(dataset, cfg.train.seed)
        splits[role] = Split(part, labels[chosen], dataset, augment)
    return splits
