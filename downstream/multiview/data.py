"""Exams, per-side targets, class weights and loaders for the four-view classifier.

Task settings (hybrid CNN-VSSM paper, Section 4.2) choose the BI-RADS classes: ``binary`` (1 vs 5), ``ternary``
(1 / 3 / 5) and ``five`` (1-5). With ``subset`` on (the paper's subsets), a breast whose BI-RADS is known and
outside the setting has no target for either task. The label task is normal + benign (0) vs malignant (1), read
from a label source: ``malignant`` (the canonical column: biopsy or the dataset's cancer label) or ``birads_4_5``
(BI-RADS 4-6 = 1, 1-3 = 0: a surrogate for datasets without pathology, e.g. VinDr-Mammo; with it, the two tasks
share their source). A missing target is -1; a side without any present view has none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F

from downstream.multiview.config import SETTINGS, TASKS, MultiviewData, TaskConfig
from downstream.multiview.model import SIDES
from mvmlm.config import ConfigError
from mvmlm.data.device_augment import DeviceAugment
from mvmlm.data.exams import ExamDataset, build_exams
from mvmlm.data.preprocess import read_cached_table
from mvmlm.data.transforms import SeededItems, build_transform
from mvmlm.registry import Registry

__all__ = [
    "LABEL_SOURCES",
    "check_task",
    "num_classes",
    "class_names",
    "exam_targets",
    "class_weights",
    "resize_views",
    "InputTransform",
    "MultiviewDataset",
    "ExamSplit",
    "load_exams",
    "load_splits",
    "make_loader",
]

log = logging.getLogger(__name__)


#: label source -> per-side 0/1/NA label of an exams table
LABEL_SOURCES: Registry[Callable[[pd.DataFrame, str], pd.Series]] = Registry("label source")


@LABEL_SOURCES.register("malignant")
def _label_malignant(exams: pd.DataFrame, side: str) -> pd.Series:
    return exams[f"{side}_malignant"].astype("Int64")


@LABEL_SOURCES.register("birads_4_5")
def _label_birads_4_5(exams: pd.DataFrame, side: str) -> pd.Series:
    birads = exams[f"{side}_birads"].astype("Int64")
    return (birads >= 4).astype("Int64").where(birads.between(1, 6))


def check_task(task: TaskConfig, label_from: str) -> None:
    """Raise ConfigError naming the key for an unknown setting, task, weight or label source."""
    if task.setting not in SETTINGS:
        raise ConfigError(f"key 'task.setting': {task.setting!r} unknown; known: {', '.join(SETTINGS)}")
    unknown = [t for t in task.tasks if t not in TASKS]
    if unknown or not task.tasks or len(set(task.tasks)) != len(task.tasks):
        raise ConfigError(f"key 'task.tasks': {task.tasks} must be distinct entries of {list(TASKS)}")
    missing = [t for t in task.tasks if t not in task.weights or task.weights[t] <= 0]
    if missing:
        raise ConfigError(f"key 'task.weights': needs a positive weight for {missing}")
    if label_from not in LABEL_SOURCES:
        raise ConfigError(f"key 'data.label_from': {label_from!r} unknown; known: {', '.join(LABEL_SOURCES.names())}")


def num_classes(task: TaskConfig) -> dict[str, int]:
    """Classes per active task: 2 for the label, the setting's BI-RADS categories for BI-RADS."""
    return {t: 2 if t == "label" else len(SETTINGS[task.setting]) for t in task.tasks}


def class_names(task: TaskConfig) -> dict[str, list[str]]:
    """Class names per active task, in class-index order."""
    names = {"label": ["normal/benign", "malignant"], "birads": [f"BI-RADS {c}" for c in SETTINGS[task.setting]]}
    return {t: names[t] for t in task.tasks}


def exam_targets(exams: pd.DataFrame, task: TaskConfig, label_from: str) -> dict[str, np.ndarray]:
    """Per-task targets ``(n_exams, 2)`` (sides L, R) as class indices, -1 where missing or excluded."""
    classes = SETTINGS[task.setting]
    targets = {t: np.full((len(exams), len(SIDES)), -1, dtype=np.int64) for t in TASKS}
    for j, side in enumerate(SIDES):
        imaged = (exams[f"{side}_CC_present"] | exams[f"{side}_MLO_present"]).to_numpy(bool)
        birads = exams[f"{side}_birads"].astype("Int64")
        in_setting = birads.isin(classes).to_numpy(bool)
        index = birads.map(lambda v: classes.index(v) if v in classes else -1, na_action="ignore")
        targets["birads"][:, j] = np.where(imaged & in_setting, index.fillna(-1).to_numpy(np.int64), -1)
        label = LABEL_SOURCES.get(label_from)(exams, side)
        keep = imaged & label.notna().to_numpy(bool)
        if task.subset:
            keep &= birads.isna().to_numpy(bool) | in_setting
        targets["label"][:, j] = np.where(keep, label.fillna(0).to_numpy(np.int64), -1)
    return {t: targets[t] for t in task.tasks}


def class_weights(targets: np.ndarray, classes: int) -> torch.Tensor:
    """Inverse class frequency over the valid targets (both sides): ``n / (classes * n_c)``; 0 for absent classes."""
    valid = targets[targets >= 0]
    counts = np.bincount(valid, minlength=classes)[:classes].astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (classes * np.maximum(counts, 1)), 0.0)
    if (counts == 0).any():
        log.warning("classes %s have no training targets (weight 0)", np.flatnonzero(counts == 0).tolist())
    return torch.tensor(weights, dtype=torch.float32)


def resize_views(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Images ``(..., H, W)`` resized to the network input ``size`` (antialiased bilinear)."""
    return F.resize(images, list(size), antialias=True)


class InputTransform:
    """Resize a ``(1, H, W)`` cached image to the network input size (if it differs), then augment (training)."""

    def __init__(self, size: Sequence[int], augment: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.size = list(size)
        self.augment = augment

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.size and list(image.shape[-2:]) != self.size:
            image = resize_views(image, self.size)
        return self.augment(image)


class MultiviewDataset(Dataset):
    """Items ``{"images": (4, 1, H, W), "mask": (4,) bool, "targets": {task: (2,) long}, "index": int}`` (with
    ``device`` augmentation the stored uint16 values and their ``affine`` parameters)."""

    def __init__(
        self,
        exams: pd.DataFrame,
        targets: dict[str, np.ndarray],
        transform: InputTransform | None,
        device: DeviceAugment | None = None,
    ) -> None:
        self.exams = ExamDataset(exams, labels=(), transform=transform, device=device)
        self.targets = {t: torch.as_tensor(v, dtype=torch.long) for t, v in targets.items()}

    def __len__(self) -> int:
        return len(self.exams)

    def __getitem__(self, index: int) -> dict:
        item = self.exams[index]
        targets = {t: v[index] for t, v in self.targets.items()}
        views = {key: item[key] for key in ("images", "mask", "affine") if key in item}
        return {**views, "targets": targets, "index": index}


@dataclass
class ExamSplit:
    """The exams of one split of the table (loader order) and their per-side targets."""

    exams: pd.DataFrame
    targets: dict[str, np.ndarray]

    def ids(self, rows: Sequence[int]) -> list[str]:
        """The breast ids of the imaged sides of ``rows`` (what the non-finite guard names)."""
        columns = [f"{side}_breast_id" for side in SIDES]
        return [value for row in rows for value in self.exams.iloc[row][columns] if isinstance(value, str)]


def load_exams(data: MultiviewData, task: TaskConfig) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Exams of the cached table and their targets; exams without any target are dropped."""
    check_task(task, data.label_from)
    exams = build_exams(read_cached_table(data.table))
    targets = exam_targets(exams, task, data.label_from)
    keep = np.any([(v >= 0).any(axis=1) for v in targets.values()], axis=0)
    if not keep.any():
        raise ValueError(f"{data.table}: no exam has a target for tasks {task.tasks} in setting {task.setting!r}")
    log.info("%s: %d exams, %d with targets for %s (%s)", data.table, len(exams), keep.sum(), task.tasks, task.setting)
    return exams[keep].reset_index(drop=True), {t: v[keep] for t, v in targets.items()}


def load_splits(data: MultiviewData, task: TaskConfig, names: Sequence[str]) -> dict[str, ExamSplit]:
    """The exams of each split in ``names`` that has any, by the table's split column.

    Raises:
        ValueError: the training or validation split (``data.train_split`` / ``data.val_split``) has no exam with
            a target, or the training split has no target for a task.
    """
    exams, targets = load_exams(data, task)
    splits = {}
    for name in dict.fromkeys([data.train_split, data.val_split, *names]):
        rows = np.flatnonzero(exams["split"].eq(name).to_numpy(bool))
        if len(rows) == 0:
            if name in (data.train_split, data.val_split):
                raise ValueError(f"{data.table}: no exam with a target in split {name!r}")
            continue
        splits[name] = ExamSplit(exams.iloc[rows].reset_index(drop=True), {t: v[rows] for t, v in targets.items()})
    empty = [t for t, values in splits[data.train_split].targets.items() if not (values >= 0).any()]
    if empty:
        raise ValueError(
            f"{data.table}: no training target for task {empty[0]!r} (data.label_from="
            f"{data.label_from}, task.setting={task.setting})"
        )
    return splits


def make_loader(
    split: ExamSplit,
    data: MultiviewData,
    *,
    train: bool,
    seed: int,
    device: DeviceAugment | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader over ``split``: shuffled and augmented for training (on the ``device`` when given), in order
    otherwise."""
    transform = None if device else InputTransform(data.image_size, build_transform(train, data.augment))
    dataset = MultiviewDataset(split.exams, split.targets, transform, device)
    if train:
        dataset = SeededItems(dataset, seed)
    batch_size = data.batch_size if train else data.eval_batch_size or data.batch_size
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        num_workers=data.num_workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=pin_memory,
    )
