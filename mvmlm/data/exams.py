"""Images -> breasts (CC + MLO) and exams (L-CC, L-MLO, R-CC, R-MLO) with presence masks, and Datasets over them.

A slot takes one image: the view earliest in its preference list (``SLOT_VIEWS``: CC before XCCL, MLO before
ML, ...), then the smallest ``image_id``, so the choice is deterministic. Views fitting no slot (e.g. AT) are
ignored. Per slot the tables hold ``<slot>_image_id``, ``<slot>_path``, ``<slot>_cache_path`` (the columns the
image table has) and ``<slot>_present``; breast tables carry the breast-level labels, exam tables carry them
per side as ``L_<label>`` / ``R_<label>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mvmlm.data import schema
from mvmlm.data.device_augment import IDENTITY, DeviceAugment
from mvmlm.data.ids import BREAST_KEYS, breast_ids, patient_keys
from mvmlm.data.preprocess import load_cached, read_cache_values

__all__ = [
    "SLOT_VIEWS",
    "BREAST_SLOTS",
    "EXAM_SLOTS",
    "BREAST_KEYS",
    "EXAM_KEYS",
    "DEFAULT_LABELS",
    "CATEGORIES",
    "build_breasts",
    "build_exams",
    "encode_label",
    "BreastDataset",
    "ExamDataset",
]

#: slot -> accepted views, most preferred first
SLOT_VIEWS: dict[str, tuple[str, ...]] = {"CC": ("CC", "XCCL", "XCCM"), "MLO": ("MLO", "LMO", "ML", "LM")}
BREAST_SLOTS = ("CC", "MLO")
SIDES = ("L", "R")
EXAM_SLOTS = tuple(f"{side}_{slot}" for side in SIDES for slot in BREAST_SLOTS)
EXAM_KEYS = ["dataset", "patient_id", "exam_id"]
_CARRIED = ("image_id", "path", "cache_path")
DEFAULT_LABELS = ("malignant", "mass", "calcification", "birads", "density")
#: categorical labels -> classes in index order
CATEGORIES: dict[str, tuple[str, ...]] = {
    "density": ("A", "B", "C", "D"),
    "pathology": ("normal", "benign", "malignant"),
}


def build_breasts(table: pd.DataFrame, slot_views: Mapping[str, Sequence[str]] = SLOT_VIEWS) -> pd.DataFrame:
    """One row per (dataset, patient, exam, laterality) with one image per slot of ``slot_views``.

    Breasts with no image in any slot are left out. Rows are sorted by the keys.
    """
    rank = {view: (slot, i) for slot, views in slot_views.items() for i, view in enumerate(views)}
    images = schema.conform(table)
    images = images[images["view"].isin(list(rank))].copy()
    images["_slot"] = images["view"].map(lambda v: rank[v][0])
    images["_rank"] = images["view"].map(lambda v: rank[v][1])
    chosen = images.sort_values([*BREAST_KEYS, "_slot", "_rank", "image_id"]).drop_duplicates(
        [*BREAST_KEYS, "_slot"], keep="first"
    )
    breasts = images.groupby(BREAST_KEYS, sort=True)[["split", *schema.BREAST_LEVEL_COLUMNS]].first()
    carried = [c for c in _CARRIED if c in images.columns]
    for slot in slot_views:
        picked = chosen[chosen["_slot"] == slot].set_index(BREAST_KEYS)[carried]
        breasts = breasts.join(picked.rename(columns={c: f"{slot}_{c}" for c in carried}))
        breasts[f"{slot}_present"] = breasts[f"{slot}_image_id"].notna()
    breasts = breasts.reset_index()
    breasts["breast_id"] = breast_ids(breasts)
    breasts["patient"] = patient_keys(breasts)
    return breasts


def build_exams(table: pd.DataFrame, slot_views: Mapping[str, Sequence[str]] = SLOT_VIEWS) -> pd.DataFrame:
    """One row per (dataset, patient, exam) with slots ``L_CC, L_MLO, R_CC, R_MLO`` and per-side labels."""
    breasts = build_breasts(table, slot_views).set_index(EXAM_KEYS)
    exams = breasts.groupby(level=EXAM_KEYS, sort=True)[["split"]].first()
    per_breast = [c for c in breasts.columns if c not in ("laterality", "split")]
    for side in SIDES:
        part = breasts.loc[breasts["laterality"] == side, per_breast]
        exams = exams.join(part.rename(columns={c: f"{side}_{c}" for c in per_breast}))
        for slot in slot_views:
            exams[f"{side}_{slot}_present"] = exams[f"{side}_{slot}_present"].eq(True)  # absent breast: False
    return exams.reset_index()


def encode_label(name: str, value: object) -> float | int:
    """A label as a number for a loss: categories as their index, missing as -1 (ints) or NaN (floats)."""
    missing = value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))
    if name in CATEGORIES:
        if not missing and value not in CATEGORIES[name]:
            raise ValueError(f"label {name!r}: value {value!r} not in {CATEGORIES[name]}")
        return -1 if missing else CATEGORIES[name].index(value)
    if schema.COLUMNS.get(name) == schema.INT:
        return -1 if missing else int(value)
    if schema.COLUMNS.get(name) == schema.FLOAT:
        return float("nan") if missing else float(value)
    raise ValueError(f"label {name!r} cannot be encoded; usable: int, float and {sorted(CATEGORIES)} columns")


def _label_dtype(name: str) -> torch.dtype:
    return torch.float32 if schema.COLUMNS.get(name) == schema.FLOAT else torch.long


class _ViewsDataset(Dataset):
    """Items ``{"images": (V, 1, H, W), "mask": (V,) bool, "labels": {name: tensor}, "id", "image_ids"}``.

    With ``device`` (device augmentation) ``images`` are the stored uint16 values, untransformed, and ``affine``
    ``(V, 5)`` holds each view's parameters drawn by ``device.draw`` (identity for a missing view).
    """

    def __init__(
        self,
        rows: pd.DataFrame,
        slots: Sequence[str],
        label_columns: Mapping[str, Sequence[str]],
        id_columns: Sequence[str],
        transform: Callable[[torch.Tensor], torch.Tensor] | None,
        device: DeviceAugment | None = None,
    ):
        per_slot = [f"{s}_{c}" for s in slots for c in ("cache_path", "present", "image_id")]
        missing = [c for c in per_slot if c not in rows]
        missing += [c for columns in label_columns.values() for c in columns if c not in rows]
        if missing:
            raise ValueError(f"table lacks column(s) {missing}; build it from a preprocessed (cached) image table")
        for name in label_columns:
            encode_label(name, None)  # fails early for labels that cannot be encoded
        self.rows = rows.reset_index(drop=True)
        self.slots = tuple(slots)
        self.label_columns = {name: list(columns) for name, columns in label_columns.items()}
        self.id_columns = list(id_columns)
        self.transform, self.device = transform, device
        used = [*self.id_columns, *per_slot, *(c for columns in self.label_columns.values() for c in columns)]
        # plain lists: a pandas row per item costs more than reading its cached image
        self.columns = {c: self.rows[c].tolist() for c in dict.fromkeys(used)}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = {c: values[index] for c, values in self.columns.items()}
        item_id = "/".join(str(row[c]) for c in self.id_columns)
        views: list[torch.Tensor | None] = []
        params: dict[str, torch.Tensor] = {}  # slot -> the affine drawn for the device
        for slot in self.slots:
            if not row[f"{slot}_present"]:
                views.append(None)
            elif self.device is not None:
                views.append(torch.from_numpy(read_cache_values(row[f"{slot}_cache_path"]))[None])
                params[slot] = self.device.draw(views[-1].shape)
            else:
                image = torch.from_numpy(load_cached(row[f"{slot}_cache_path"]))[None]
                views.append(self.transform(image) if self.transform else image)
        shapes = [v for v in views if v is not None]
        if not shapes:
            raise ValueError(f"row {index} ({item_id}) has no present view")
        images = torch.stack([torch.zeros_like(shapes[0]) if v is None else v for v in views])
        labels = {}
        for name, columns in self.label_columns.items():
            values = torch.tensor([encode_label(name, row[c]) for c in columns], dtype=_label_dtype(name))
            labels[name] = values[0] if len(columns) == 1 else values
        item = {
            "images": images,
            "mask": torch.tensor([v is not None for v in views]),
            "labels": labels,
            "id": item_id,
            "image_ids": [str(row[f"{s}_image_id"]) if row[f"{s}_present"] else "" for s in self.slots],
        }
        if self.device is not None:
            item["affine"] = torch.stack([params.get(slot, torch.tensor(IDENTITY)) for slot in self.slots])
        return item


class BreastDataset(_ViewsDataset):
    """Breasts over the cache: ``images`` is (2, 1, H, W) in order CC, MLO; a missing view is zeros, mask 0.

    Labels are scalars per breast, encoded with :func:`encode_label` (missing: -1, or NaN for float labels).
    """

    def __init__(
        self,
        breasts: pd.DataFrame,
        labels: Sequence[str] = DEFAULT_LABELS,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: DeviceAugment | None = None,
    ):
        super().__init__(breasts, BREAST_SLOTS, {name: [name] for name in labels}, BREAST_KEYS, transform, device)


class ExamDataset(_ViewsDataset):
    """Exams over the cache: ``images`` is (4, 1, H, W) in order L-CC, L-MLO, R-CC, R-MLO; missing views zeros.

    Each label is a (2,) tensor [left, right].
    """

    def __init__(
        self,
        exams: pd.DataFrame,
        labels: Sequence[str] = DEFAULT_LABELS,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: DeviceAugment | None = None,
    ):
        columns = {name: [f"{side}_{name}" for side in SIDES] for name in labels}
        super().__init__(exams, EXAM_SLOTS, columns, EXAM_KEYS, transform, device)
