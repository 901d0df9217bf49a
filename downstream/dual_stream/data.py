"""Breasts of an image cache with their whole images and lesion crops (both made by ``mvmlm preprocess``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from downstream.dual_stream.config import DualStreamData, MammoMambaConfig
from mvmlm.config import AugmentConfig
from mvmlm.data.device_augment import DeviceAugment
from mvmlm.data.exams import BREAST_KEYS, BREAST_SLOTS, BreastDataset, build_breasts
from mvmlm.data.preprocess import read_cached_table
from mvmlm.data.roi import read_crop_table
from mvmlm.data.transforms import SeededItems, build_transform

__all__ = ["load_breasts", "resize_input", "DualStreamDataset", "device_hook", "make_loader"]

log = logging.getLogger(__name__)


def load_breasts(data: DualStreamData, streams: list[str]) -> pd.DataFrame:
    """One row per breast with a malignant label: ``breast_id``, ``patient``, the table's ``split`` and, per stream
    and view, ``<stream>_<view>_{cache_path,present,image_id}`` (whole images from ``data.table``, crops from the
    crop table beside it).

    Breasts without a label, or (with the crop stream) without a crop of either view, are logged and left out.
    """
    images = read_cached_table(data.table)
    tables = {"whole": images}
    if "crop" in streams:
        tables["crop"] = read_crop_table(data.table)
    breasts = build_breasts(images)[[*BREAST_KEYS, "breast_id", "patient", "split", "malignant"]]
    for stream, table in tables.items():
        part = build_breasts(table).set_index(BREAST_KEYS)
        slots = [c for c in part.columns if c.split("_")[0] in BREAST_SLOTS]
        part = part[slots].rename(columns={c: f"{stream}_{c}" for c in slots})
        breasts = breasts.join(part, on=BREAST_KEYS)
        for view in BREAST_SLOTS:
            breasts[f"{stream}_{view}_present"] = breasts[f"{stream}_{view}_present"].eq(True)
    unlabelled = breasts["malignant"].isna()
    no_crop = ~unlabelled & ("crop" in streams) & ~breasts.filter(regex="^crop_.*_present$").any(axis=1)
    for reason, rows in (("no malignant label", unlabelled), ("no lesion crop in either view", no_crop)):
        if rows.any():
            shown = ", ".join(breasts.loc[rows, "breast_id"])
            log.warning("skipping %d breast(s) with %s: %s", int(rows.sum()), reason, shown)
    return breasts[~unlabelled & ~no_crop].reset_index(drop=True)


def resize_input(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A ``(1, H, W)`` image (whole view or lesion crop), or a batch ``(N, 1, H, W)`` of them, resized to the network
    input of both streams."""
    batch = image if image.dim() == 4 else image[None]
    out = F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False)
    return out if image.dim() == 4 else out[0]


class DualStreamDataset(Dataset):
    """Items ``{"inputs": {stream: (images (2, 1, H, W), mask (2,))}, "label", "index", "id"}``; ``index`` is the
    row of ``breasts`` (evaluation gathers it across processes), ``id`` its breast id. With ``device`` augmentation
    the images are the stored uint16 values (as cached) and ``affine`` holds ``{stream: (2, 5)}`` parameters."""

    def __init__(
        self,
        breasts: pd.DataFrame,
        streams: list[str],
        size: list[int],
        train: bool,
        aug: AugmentConfig,
        device: DeviceAugment | None = None,
    ):
        augment = build_transform(train, aug)

        def transform(image: torch.Tensor) -> torch.Tensor:
            return augment(resize_input(image, size))

        self.breasts = breasts.reset_index(drop=True)
        self.views = {}
        for stream in streams:
            columns = {c: c[len(stream) + 1 :] for c in breasts.columns if c.startswith(f"{stream}_")}
            rows = self.breasts[[*BREAST_KEYS, "malignant", *columns]].rename(columns=columns)
            self.views[stream] = BreastDataset(
                rows, labels=["malignant"], transform=None if device else transform, device=device
            )

    def __len__(self) -> int:
        return len(self.breasts)

    def __getitem__(self, index: int) -> dict:
        items = {stream: views[index] for stream, views in self.views.items()}
        inputs = {stream: (item["images"], item["mask"]) for stream, item in items.items()}
        label = next(iter(items.values()))["labels"]["malignant"]
        item = {"inputs": inputs, "label": label, "index": index, "id": self.breasts.at[index, "breast_id"]}
        affine = {stream: it["affine"] for stream, it in items.items() if "affine" in it}
        return {**item, "affine": affine} if affine else item


def device_hook(device: DeviceAugment) -> Callable[[dict], dict]:
    """The engine's batch hook of device augmentation for :class:`DualStreamDataset` batches."""

    def on_device(batch: dict) -> dict:
        inputs = {s: (device(images, batch["affine"][s]), mask) for s, (images, mask) in batch["inputs"].items()}
        return {**batch, "inputs": inputs}

    return on_device


def make_loader(
    breasts: pd.DataFrame,
    cfg: MammoMambaConfig,
    train: bool,
    device: DeviceAugment | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A training (shuffled, augmented, last partial batch dropped) or evaluation loader; the engine shards it.
    With ``device`` (training) the loader reads and draws, the device converts, resizes and augments."""
    data = cfg.data
    dataset = DualStreamDataset(breasts, cfg.model.streams, data.image_size, train, data.augment, device)
    size = data.batch_size if train else data.eval_batch_size or data.batch_size
    if train:
        dataset = SeededItems(dataset, cfg.train.seed)
    drop_last = train and len(dataset) > size  # a last batch of one breaks BatchNorm
    return DataLoader(
        dataset,
        batch_size=size,
        shuffle=train,
        drop_last=drop_last,
        num_workers=data.num_workers,
        pin_memory=pin_memory,
    )
