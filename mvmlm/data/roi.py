"""Lesion (ROI) crops per image, cached beside the image cache: the crop stream of Mammo-Mamba.

Where the lesion is comes from the dataset (a registry by the table's ``dataset`` value): CBIS-DDSM's ROI masks
(``roi_path``, ``;``-separated, one per abnormality) or VinDr-Mammo's finding boxes (``boxes``, native pixels),
clipped to the image. Masks and boxes are brought into the full image's canonical orientation (a mask has no chest
wall of its own, so the flip :func:`~mvmlm.data.dicom.read_mammogram` decided for the full image is used). The
union of an image's lesion boxes is grown by ``margin`` on each side, made square (at least ``min_side`` native
pixels), shifted inside the image, cut from the full image and resized to ``size x size``. With ``source: crop``
CBIS-DDSM's own cropped-image files are used instead (the first listed). An image without a lesion is skipped and
recorded (``missing: skip``) or replaced by its whole breast (``missing: whole``).

Cache layout, as :mod:`mvmlm.data.preprocess`: ``<cache root>/roi<size>-<hash of the parameters>/`` holds
``images/...npy`` (uint16), ``table.parquet`` (the rows with a crop, ``cache_path`` relative) and ``failures.csv``
(image_id, path, error). Existing crop files are reused, so a second run only reads the table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from mvmlm.config import ConfigError
from mvmlm.data import dicom, schema
from mvmlm.data.preprocess import (
    FAILURES_FILE,
    TABLE_FILE,
    PreprocessParams,
    cache_file,
    crop_breast,
    resize_pad,
    save_cached,
)
from mvmlm.errors import InputError

__all__ = [
    "Box", "NoRoiError", "RoiParams", "register_roi_source", "clip_box", "union_box", "square_box", "lesion_boxes",
    "lesion_crop", "roi_cache_table",
]  # fmt: skip

log = logging.getLogger(__name__)

#: (top, bottom, left, right), end-exclusive, in pixels of the canonical (chest wall left) full image
Box = tuple[int, int, int, int]
ROI_VERSION = 1  # bump when the crop code changes its output
SOURCES = ("mask", "crop")
MISSING_POLICIES = ("skip", "whole")


class NoRoiError(ValueError, InputError):
    """An image has no usable lesion location."""


@dataclass
class RoiParams:
    """Everything that changes a cached crop; hashed into the crop cache folder name."""

    size: int = 224  # crop side after resizing (the paper: 224)
    margin: float = 0.25  # context added on each side, as a share of the lesion box's longer side
    min_side: int = 64  # smallest crop side in native pixels (tiny calcification clusters still get context)
    source: str = "mask"  # mask: ROI masks / boxes cut from the full image | crop: CBIS-DDSM's cropped-image files
    missing: str = "skip"  # image without a lesion: skip (recorded in failures.csv) | whole (the breast instead)

    def __post_init__(self) -> None:
        if self.size < 1 or self.min_side < 1 or self.margin < 0:
            raise ConfigError(f"roi: size and min_side must be positive and margin >= 0, got {self}")
        if self.source not in SOURCES or self.missing not in MISSING_POLICIES:
            raise ConfigError(f"roi: source must be one of {SOURCES} and missing one of {MISSING_POLICIES}, "
                              f"got {self.source!r} / {self.missing!r}")  # fmt: skip

    def key(self) -> str:
        """Cache folder name: ``roi<size>-<10 hex digits of the parameter hash>``."""
        blob = json.dumps({"version": ROI_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return f"roi{self.size}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def clip_box(box: Box, shape: tuple[int, int]) -> Box | None:
    """``box`` clipped to an image of ``shape`` (rows, cols); None when nothing of it is inside."""
    top, bottom, left, right = box
    top, left = max(0, int(np.floor(top))), max(0, int(np.floor(left)))
    bottom, right = min(shape[0], int(np.ceil(bottom))), min(shape[1], int(np.ceil(right)))
    return (top, bottom, left, right) if bottom > top and right > left else None


def union_box(boxes: list[Box]) -> Box:
    """The smallest box holding every box of ``boxes``."""
    tops, bottoms, lefts, rights = zip(*boxes, strict=True)
    return min(tops), max(bottoms), min(lefts), max(rights)


def square_box(box: Box, margin: float, min_side: int, shape: tuple[int, int]) -> Box:
    """A square around ``box`` (its longer side plus ``margin`` on each side, at least ``min_side``), shifted to lie
    inside the image; clipped where the image is smaller than the square."""
    top, bottom, left, right = box
    side = max(min_side, round(max(bottom - top, right - left) * (1 + 2 * margin)))
    spans = []
    for start, stop, extent in ((top, bottom, shape[0]), (left, right, shape[1])):
        low = min(max(0, round((start + stop - side) / 2)), max(0, extent - side))
        spans += [low, min(extent, low + side)]
    return spans[0], spans[1], spans[2], spans[3]


BoxReader = Callable[[pd.Series, Path, tuple[int, int], bool], list[Box]]
_ROI_SOURCES: dict[str, BoxReader] = {}


def register_roi_source(dataset: str) -> Callable[[BoxReader], BoxReader]:
    """Register ``fn(row, root, image shape, flipped) -> lesion boxes`` for a table's ``dataset`` value."""

    def add(fn: BoxReader) -> BoxReader:
        if dataset in _ROI_SOURCES:
            raise ValueError(f"ROI source {dataset!r} registered twice")
        _ROI_SOURCES[dataset] = fn
        return fn

    return add


def _listed(value: object) -> list[str]:
    return [part for part in str(value).split(";") if part] if isinstance(value, str) else []


@register_roi_source("cbis_ddsm")
def _cbis_mask_boxes(row: pd.Series, root: Path, shape: tuple[int, int], flipped: bool) -> list[Box]:
    """Bounding boxes of the ROI masks in ``roi_path``, in the full image's orientation; a mask of another size than
    the full image (a few real CBIS-DDSM masks) is scaled to it."""
    boxes = []
    for relative in _listed(row.get("roi_path")):
        mask, meta = dicom.read_mammogram(root / relative)
        if meta.flipped != flipped:
            mask = mask[:, ::-1]
        rows, cols = np.nonzero(mask > 0.5)
        if rows.size == 0:
            log.warning("%s: empty ROI mask %s", row["image_id"], relative)
            continue
        sy, sx = shape[0] / mask.shape[0], shape[1] / mask.shape[1]
        box = clip_box((rows.min() * sy, (rows.max() + 1) * sy, cols.min() * sx, (cols.max() + 1) * sx), shape)
        boxes += [box] if box else []
    return boxes


@register_roi_source("vindr")
def _vindr_boxes(row: pd.Series, root: Path, shape: tuple[int, int], flipped: bool) -> list[Box]:
    """VinDr finding boxes (native pixels, any finding), mirrored with the image and clipped to it."""
    records = row.get("boxes")
    boxes = []
    for record in [] if records is None else list(records):
        left, right = float(record["xmin"]), float(record["xmax"])
        if flipped:
            left, right = shape[1] - right, shape[1] - left
        box = clip_box((float(record["ymin"]), float(record["ymax"]), left, right), shape)
        boxes += [box] if box else []
    return boxes


def lesion_boxes(row: pd.Series, root: str | Path, shape: tuple[int, int], flipped: bool) -> list[Box]:
    """The lesion boxes of one image row (canonical orientation, clipped); empty for a dataset without ROIs."""
    reader = _ROI_SOURCES.get(str(row["dataset"]))
    return reader(row, Path(root), shape, flipped) if reader else []


def lesion_crop(row: pd.Series, root: str | Path, params: RoiParams) -> np.ndarray:
    """The ``size x size`` lesion crop of one image row (float32 in [0, 1]).

    Raises:
        NoRoiError: no lesion location (and ``missing`` is ``skip``), naming the image.
        DicomReadError: an unreadable image, mask or crop file.
    """
    root = Path(root)
    image, meta = dicom.read_mammogram(root / row["path"])
    if params.source == "crop":
        crops = _listed(row.get("crop_path"))
        if crops:
            crop, crop_meta = dicom.read_mammogram(root / crops[0])
            crop = crop[:, ::-1] if crop_meta.flipped != meta.flipped else crop
            return resize_pad(crop, params.size, params.size)
        boxes = []
    else:
        boxes = lesion_boxes(row, root, image.shape, bool(meta.flipped))
    if boxes:
        top, bottom, left, right = square_box(union_box(boxes), params.margin, params.min_side, image.shape)
        return resize_pad(image[top:bottom, left:right], params.size, params.size)
    if params.missing == "whole":
        return resize_pad(crop_breast(image, PreprocessParams.crop_threshold), params.size, params.size)
    what = "crop file" if params.source == "crop" else "ROI"
    raise NoRoiError(f"{row['image_id']} ({row['path']}): no lesion {what}")


def roi_cache_table(
    table: pd.DataFrame, root: str | Path, cache_dir: str | Path, params: RoiParams, *, progress: bool = True
) -> pd.DataFrame:
    """Crop and cache the lesion of every image of a canonical ``table`` under ``cache_dir`` (the image cache root).

    Crops already cached with the same parameters are reused. Images without a crop (no ROI under ``missing:
    skip``, unreadable files) are logged, written to ``failures.csv`` and left out.

    Returns:
        The rows with a crop and ``cache_path`` (absolute) pointing to it.
    """
    folder = (Path(cache_dir) / params.key()).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    table = schema.conform(table)
    ids = zip(table["dataset"], table["patient_id"], table["image_id"], strict=True)
    relative = [str(cache_file(dataset, patient, image)) for dataset, patient, image in ids]
    errors: dict[int, str] = {}
    for index, (_, row) in enumerate(tqdm(table.iterrows(), total=len(table), desc="roi", disable=not progress)):
        target = folder / relative[index]
        if target.is_file():
            continue
        try:
            save_cached(target, lesion_crop(row, root, params))
        except (NoRoiError, dicom.DicomReadError) as exc:
            errors[index] = f"{type(exc).__name__}: {exc}"
            log.warning("roi crop skipped: %s", exc)
    failed = sorted(errors)
    table.loc[failed, ["image_id", "path"]].assign(error=[errors[i] for i in failed]).to_csv(
        folder / FAILURES_FILE, index=False
    )
    keep = [i for i in range(len(table)) if i not in errors]
    cached = table.iloc[keep].assign(cache_path=[relative[i] for i in keep]).reset_index(drop=True)
    schema.write_table(cached, folder / TABLE_FILE)
    log.info("roi crops in %s: %d cached, %d without a crop (see %s)", folder, len(cached), len(failed),
             folder / FAILURES_FILE)  # fmt: skip
    return cached.assign(cache_path=[str(folder / rel) for rel in cached["cache_path"]])
