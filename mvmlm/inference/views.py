"""The views of each unit a bundle predicts (a breast or an exam), read from DICOM files or the image cache,
preprocessed as the bundle says and batched by DataLoader workers while the model runs: what ``predict``, ``embed``
and ``explain`` share (:func:`view_batches`)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mvmlm.bundle import Bundle
from mvmlm.data.dicom import read_mammogram
from mvmlm.data.exams import BREAST_SLOTS, EXAM_SLOTS, build_breasts, build_exams
from mvmlm.data.preprocess import (
    PreprocessParams,
    from_cache_values,
    load_cached,
    preprocess_image,
    to_cache_values,
)
from mvmlm.data.roi import NoRoiError
from mvmlm.errors import InputError
from mvmlm.inference.inputs import Inputs, collect
from mvmlm.inference.rois import Rois

__all__ = [
    "NothingPredictedError",
    "cache_values",
    "Units",
    "load_units",
    "ViewsDataset",
    "collate_views",
    "resolve_device",
    "forward_threads",
    "ReadOptions",
    "view_batches",
]


class NothingPredictedError(ValueError, InputError):
    """No image of the input could be used."""


def cache_values(image: np.ndarray) -> np.ndarray:
    """``image`` as the image cache stores and reads it back (16-bit rounding), float32 in [0, 1]."""
    return from_cache_values(to_cache_values(image))


@dataclass
class Units:
    """What one forward pass item is (a breast or an exam) and the images of each of its slots."""

    rows: pd.DataFrame  # build_breasts / build_exams rows
    slots: tuple[str, ...]
    inputs: Inputs


def load_units(paths: Sequence[str] | str, level: str, root: str = "") -> Units:
    """The breasts (``level="breast"``) or exams of ``paths`` (DICOM files, folders or tables)."""
    inputs = collect([paths] if isinstance(paths, str) else list(paths), root)
    if inputs.images.empty:
        return Units(pd.DataFrame(), (), inputs)
    if level == "exam":
        return Units(build_exams(inputs.images), EXAM_SLOTS, inputs)
    return Units(build_breasts(inputs.images), BREAST_SLOTS, inputs)


class ViewsDataset(Dataset):
    """Items ``{"images": (V, 1, H, W), "mask": (V,), "index", "errors": [(path, reason)]}``: each present slot
    decoded (or read from the cache) and preprocessed; a file that fails is an error and its slot is missing.
    With ``rois`` also ``"crops"`` and ``"crop_mask"``: each view's lesion crop (missing without a box); a unit
    with no crop at all is an error."""

    def __init__(
        self,
        units: Units,
        params: PreprocessParams,
        bundle: Bundle,
        allow_for_processing: bool = False,
        rois: Rois | None = None,
    ):
        self.rows = units.rows.reset_index(drop=True)
        self.slots, self.cached = units.slots, units.inputs.cached
        self.params, self.transform, self.allow = params, bundle.input_transform, allow_for_processing
        self.rois = rois

    def __len__(self) -> int:
        return len(self.rows)

    def _image(self, row: pd.Series, slot: str) -> torch.Tensor:
        if self.cached:
            image = load_cached(row[f"{slot}_cache_path"])
        else:
            decoded, _ = read_mammogram(row[f"{slot}_path"], for_processing=self.allow)
            image = cache_values(preprocess_image(decoded, self.params))
        return self.transform(torch.from_numpy(image)[None])

    def _crops(self, row: pd.Series, mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The lesion crops of the present views (a view without a box: missing)."""
        crops: list[torch.Tensor | None] = []
        for slot, present in zip(self.slots, mask.tolist(), strict=True):
            try:
                crop = (
                    self.rois.crop(row[f"{slot}_image_id"], row[f"{slot}_path"], self.params.roi) if present else None
                )
            except NoRoiError:
                crop = None
            crops.append(None if crop is None else self.transform(torch.from_numpy(cache_values(crop))[None]))
        shape = next((c.shape for c in crops if c is not None), None)
        crop_mask = torch.tensor([c is not None for c in crops])
        return torch.stack([torch.zeros(shape or (1, 1, 1)) if c is None else c for c in crops]), crop_mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows.iloc[index]
        views: list[torch.Tensor | None] = []
        errors: list[tuple[str, str]] = []
        for slot in self.slots:
            if not row[f"{slot}_present"]:
                views.append(None)
                continue
            try:
                views.append(self._image(row, slot))
            except Exception as exc:  # noqa: BLE001 - any per-file failure is recorded in skipped.csv
                path = str(row[f"{slot}_path"])
                errors.append((path, str(exc).removeprefix(f"{path}: ")))
                views.append(None)
        shape = next((v.shape for v in views if v is not None), None)
        images = torch.stack([torch.zeros(shape or (1, 1, 1)) if v is None else v for v in views])
        mask = torch.tensor([v is not None for v in views])
        item = {"images": images, "mask": mask, "index": index, "errors": errors}
        if self.rois is not None and mask.any():
            item["crops"], item["crop_mask"] = self._crops(row, mask)
            if not item["crop_mask"].any():
                path = str(row[f"{self.slots[int(mask.nonzero()[0])]}_path"])
                errors.append((path, "no lesion box in --rois for any view of its breast: not predicted"))
                item["mask"] = torch.zeros_like(mask)
        return item


def collate_views(items: list[dict[str, Any]]) -> dict[str, Any]:
    usable = [item for item in items if item["mask"].any()]
    batch = {
        key: torch.stack([i[key] for i in usable]) if usable else None
        for key in ("images", "mask", "crops", "crop_mask")
        if key in (usable or items)[0]
    }
    return {**batch, "index": [i["index"] for i in usable], "errors": [e for i in items for e in i["errors"]]}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


@contextmanager
def forward_threads(device: torch.device, workers: int) -> Iterator[int]:
    """On CPU, the model's intra-op threads for the duration: the cores left beside ``workers`` decoding processes
    (at least one, at most torch's setting). More runnable threads than cores stall torch's thread barriers: on 2
    cores, 2 forward threads beside 2 decoders were slower than 1 (benchmarks/predict.py)."""
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, min(before, cores - workers)) if device.type == "cpu" and workers > 0 else before
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class ReadOptions:
    """How the views are read and batched, and where the model runs (the options ``predict``, ``embed`` and
    ``explain`` share)."""

    device: str = "auto"  # auto (cuda when available) | cpu | cuda:1 ...
    batch_size: int = 8
    workers: int = 2  # DataLoader processes decoding DICOM files
    allow_for_processing: bool = False  # also read DICOM images marked "FOR PROCESSING"
    progress: bool = False

    def target(self) -> torch.device:
        return resolve_device(self.device)


def view_batches(
    bundle: Bundle,
    units: Units,
    skipped: list[dict[str, str]],
    options: ReadOptions,
    *,
    rois: Rois | None = None,
    desc: str = "predict",
) -> Iterator[dict[str, Any]]:
    """Batches (:func:`collate_views`) of ``units`` holding at least one usable unit, with the bundle's module in
    eval mode on ``options.target()`` (CPU threads left to the decoding workers: :func:`forward_threads`); every
    file that could not be read is appended to ``skipped`` as ``{"path", "reason"}``."""
    dataset = ViewsDataset(units, bundle.preprocessing, bundle, options.allow_for_processing, rois)
    loader = DataLoader(dataset, batch_size=options.batch_size, num_workers=options.workers, collate_fn=collate_views)
    device = options.target()
    bundle.module.to(device).eval()
    with forward_threads(device, options.workers):
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not options.progress):
            skipped += [{"path": path, "reason": reason} for path, reason in batch["errors"]]
            if batch["index"]:
                yield batch
