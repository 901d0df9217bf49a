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
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F

from downstream.multiview_model import SIDES
from mvmlm.config import MISSING, ConfigError
from mvmlm.data.exams import ExamDataset, build_exams
from mvmlm.data.preprocess import read_cached_table
from mvmlm.data.splits import patient_split
from mvmlm.data.transforms import AugmentConfig, build_transform

__all__ = [
    "TASKS", "SETTINGS", "LABEL_SOURCES", "DataConfig", "TaskConfig", "check_task", "num_classes", "class_names",
    "exam_targets", "assign_split", "class_weights", "InputTransform", "MultiviewDataset", "load_exams", "make_loader",
]  # fmt: skip

log = logging.getLogger(__name__)

TASKS = ("label", "birads")
#: task setting -> the BI-RADS categories kept, in class-index order
SETTINGS: dict[str, tuple[int, ...]] = {"binary": (1, 5), "ternary": (1, 3, 5), "five": (1, 2, 3, 4, 5)}


def _label_malignant(exams: pd.DataFrame, side: str) -> pd.Series:
    return exams[f"{side}_malignant"].astype("Int64")


def _label_birads_4_5(exams: pd.DataFrame, side: str) -> pd.Series:
    birads = exams[f"{side}_birads"].astype("Int64")
    return (birads >= 4).astype("Int64").where(birads.between(1, 6))


#: label source -> per-side 0/1/NA label of an exams table
LABEL_SOURCES: dict[str, Callable[[pd.DataFrame, str], pd.Series]] = {
    "malignant": _label_malignant,
    "birads_4_5": _label_birads_4_5,
}


@dataclass
class DataConfig:
    table: str = MISSING  # table.parquet of a `mvmlm preprocess` cache folder
    image_size: list[int] = field(default_factory=lambda: [512, 512])  # network input (H, W); [] = as cached
    label_from: str = "malignant"  # malignant | birads_4_5 (surrogate where there is no pathology)
    val_fraction: float = 0.2  # > 0: new patient-level train/val split of the non-test patients; 0: the table's
    split_seed: int = 0
    batch_size: int = 8  # exams per process
    eval_batch_size: int = 0  # 0 = batch_size
    num_workers: int = 4
    augment: bool = True  # the paper's random affine on training images
    augment_params: AugmentConfig = field(default_factory=lambda: AugmentConfig(hflip=0.5))


@dataclass
class TaskConfig:
    setting: str = "five"  # binary (BI-RADS 1 vs 5) | ternary (1/3/5) | five (1-5)
    tasks: list[str] = field(default_factory=lambda: list(TASKS))  # one entry = single-task
    weights: dict[str, float] = field(default_factory=lambda: {"label": 0.5, "birads": 0.5})
    subset: bool = True  # breasts with a BI-RADS outside the setting get no label target either


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
        raise ConfigError(f"key 'data.label_from': {label_from!r} unknown; known: {', '.join(LABEL_SOURCES)}")


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
        label = LABEL_SOURCES[label_from](exams, side)
        keep = imaged & label.notna().to_numpy(bool)
        if task.subset:
            keep &= birads.isna().to_numpy(bool) | in_setting
        targets["label"][:, j] = np.where(keep, label.fillna(0).to_numpy(np.int64), -1)
    return {t: targets[t] for t in task.tasks}


def assign_split(exams: pd.DataFrame, val_fraction: float, seed: int) -> pd.Series:
    """The table's split (``val_fraction == 0``), or test kept and the other patients re-split into train / val."""
    if val_fraction == 0:
        return exams["split"].astype("string")
    fixed = exams["split"].astype("string").where(exams["split"].eq("test"))
    return patient_split(exams["patient_id"], seed=seed, val_fraction=val_fraction, fixed=fixed)


def class_weights(targets: np.ndarray, classes: int) -> torch.Tensor:
    """Inverse class frequency over the valid targets (both sides): ``n / (classes * n_c)``; 0 for absent classes."""
    valid = targets[targets >= 0]
    counts = np.bincount(valid, minlength=classes)[:classes].astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (classes * np.maximum(counts, 1)), 0.0)
    if (counts == 0).any():
        log.warning("classes %s have no training targets (weight 0)", np.flatnonzero(counts == 0).tolist())
    return torch.tensor(weights, dtype=torch.float32)


class InputTransform:
    """Resize a ``(1, H, W)`` cached image to the network input size (if it differs), then augment (training)."""

    def __init__(self, size: Sequence[int], augment: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.size = list(size)
        self.augment = augment

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.size and list(image.shape[-2:]) != self.size:
            image = F.resize(image, self.size, antialias=True)
        return self.augment(image)


class MultiviewDataset(Dataset):
    """Items ``{"images": (4, 1, H, W), "mask": (4,) bool, "targets": {task: (2,) long}, "index": int}``."""

    def __init__(self, exams: pd.DataFrame, targets: dict[str, np.ndarray], transform: InputTransform) -> None:
        self.exams = ExamDataset(exams, labels=(), transform=transform)
        self.targets = {t: torch.as_tensor(v, dtype=torch.long) for t, v in targets.items()}

    def __len__(self) -> int:
        return len(self.exams)

    def __getitem__(self, index: int) -> dict:
        item = self.exams[index]
        targets = {t: v[index] for t, v in self.targets.items()}
        return {"images": item["images"], "mask": item["mask"], "targets": targets, "index": index}


def load_exams(data: DataConfig, task: TaskConfig) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Exams of the cached table with their split, and their targets; exams without any target are dropped."""
    check_task(task, data.label_from)
    exams = build_exams(read_cached_table(data.table))
    exams["split"] = assign_split(exams, data.val_fraction, data.split_seed)
    targets = exam_targets(exams, task, data.label_from)
    keep = np.any([(v >= 0).any(axis=1) for v in targets.values()], axis=0)
    if not keep.any():
        raise ValueError(f"{data.table}: no exam has a target for tasks {task.tasks} in setting {task.setting!r}")
    log.info("%s: %d exams, %d with targets for %s (%s)", data.table, len(exams), keep.sum(), task.tasks, task.setting)
    return exams[keep].reset_index(drop=True), {t: v[keep] for t, v in targets.items()}


def make_loader(
    exams: pd.DataFrame, targets: dict[str, np.ndarray], data: DataConfig, *, train: bool, seed: int
) -> DataLoader:
    """A loader over ``exams``: shuffled and augmented for training, in order otherwise."""
    augment = build_transform(train and data.augment, data.augment_params)
    dataset = MultiviewDataset(exams, targets, InputTransform(data.image_size, augment))
    return DataLoader(
        dataset, batch_size=data.batch_size if train else data.eval_batch_size or data.batch_size, shuffle=train,
        num_workers=data.num_workers, generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
