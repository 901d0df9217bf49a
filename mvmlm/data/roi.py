"""Lesion (ROI) crops per image, made by ``mvmlm preprocess ... roi.enabled=true`` beside the image cache: the crop
stream of Mammo-Mamba.

Where the lesion is comes from the dataset (a registry by the table's ``dataset`` value): CBIS-DDSM's ROI masks
(``roi_path``, ``;``-separated, one per abnormality) or VinDr-Mammo's finding boxes (``boxes``, native pixels),
clipped to the image. Masks and boxes are brought into the full image's canonical orientation (a mask has no chest
wall of its own, so the flip :func:`~mvmlm.data.dicom.read_mammogram` decided for the full image is used). The
union of an image's lesion boxes is grown by ``margin`` on each side, made square (at least ``min_side`` native
pixels), shifted inside the image, cut from the full image and resized to ``size x size``. With ``source: crop``
CBIS-DDSM's own cropped-image files are used instead (the first listed). An image without a lesion is skipped and
recorded (``missing: skip``) or replaced by its whole breast (``missing: whole``).

Cache layout: inside the image cache folder of :mod:`mvmlm.data.preprocess` (whose hash includes these parameters),
``crops/...npy`` (uint16), ``roi_table.parquet`` (the rows with a crop, ``cache_path`` relative to the folder) and
``roi_failures.csv`` (image_id, path, error). Existing crop files are reused, so a second run only reads the table.
Training reads the crops with :func:`read_crop_table` and never the dataset itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from mvmlm.data import dicom, schema
from mvmlm.data.preprocess import (
    CROPS_DIR,
    DEFAULT_TIMEOUT,
    ROI_FAILURES_FILE,
    ROI_TABLE_FILE,
    NotCachedError,
    PreprocessParams,
    RoiParams,
    cache_file,
    crop_breast,
    read_cached_table,
    resize_pad,
    save_cached,
)
from mvmlm.data.workers import run_isolated
from mvmlm.errors import InputError
from mvmlm.registry import Registry

__all__ = [
    "Box",
    "NoRoiError",
    "RoiParams",
    "register_roi_source",
    "clip_box",
    "union_box",
    "square_box",
    "lesion_boxes",
    "lesion_crop",
    "cache_crops",
    "crop_table_path",
    "read_crop_table",
]

log = logging.getLogger(__name__)

#: (top, bottom, left, right), end-exclusive, in pixels of the canonical (chest wall left) full image
Box = tuple[int, int, int, int]


class NoRoiError(ValueError, InputError):
    """An image has no usable lesion location."""


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
#: a table's ``dataset`` value -> ``fn(row, root, image shape, flipped) -> lesion boxes``
ROI_SOURCES: Registry[BoxReader] = Registry("ROI source")
register_roi_source = ROI_SOURCES.register


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
    reader = ROI_SOURCES.get(name) if (name := str(row["dataset"])) in ROI_SOURCES else None
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


def _crop_one(row: pd.Series, root: str, target: str, params: RoiParams) -> None:
    """Crop and cache one image's lesion (in a worker process: a failure is recorded and the run goes on)."""
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # its per-file ERROR lines would cover the progress bar
    save_cached(target, lesion_crop(row, root, params))


def cache_crops(
    table: pd.DataFrame,
    root: str | Path,
    folder: str | Path,
    params: RoiParams,
    *,
    workers: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    cache_format: str = "npy",
    tables: str | Path | None = None,
) -> pd.DataFrame:
    """Crop and cache the lesion of every image of a canonical ``table`` into the image cache ``folder``.

    Crops are written in ``cache_format`` (:mod:`mvmlm.data.cache`); ``roi_table.parquet`` and ``roi_failures.csv``
    go to ``tables`` (default: ``folder``; a shard's own folder when preprocessing is sharded). Crops already
    cached are reused. Each image is cropped in a worker process
    (:func:`~mvmlm.data.workers.run_isolated`), so a decoder that crashes or hangs past ``timeout`` seconds fails that
    image only. Images without a crop (no ROI under ``missing: skip``, unreadable files, crashed decoders) are
    logged, written to ``roi_failures.csv`` and left out of ``roi_table.parquet``.

    Returns:
        The rows with a crop and ``cache_path`` (absolute) pointing to it.
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    table = schema.conform(table).reset_index(drop=True)
    ids = zip(table["dataset"], table["patient_id"], table["image_id"], strict=True)
    relative = [str(cache_file(dataset, patient, image, CROPS_DIR, cache_format)) for dataset, patient, image in ids]
    todo = [
        (i, (row, str(root), str(folder / relative[i]), params))
        for i, row in table.iterrows()
        if not (folder / relative[i]).is_file()
    ]
    errors = run_isolated(
        _crop_one, todo, workers=workers, timeout=timeout, name="decoder", desc="roi", progress=progress
    )
    for error in errors.values():
        log.warning("roi crop skipped: %s", error)
    failed = sorted(errors)
    failures = table.loc[failed, ["image_id", "path"]].assign(error=[errors[i] for i in failed])
    tables = Path(tables or folder)
    failures.to_csv(tables / ROI_FAILURES_FILE, index=False)
    cached = table.assign(cache_path=relative).drop(index=failed).reset_index(drop=True)
    schema.write_table(cached, tables / ROI_TABLE_FILE)
    log.info(
        "roi crops in %s: %d cached, %d without a crop (see %s)",
        folder,
        len(cached),
        len(failed),
        tables / ROI_FAILURES_FILE,
    )
    return cached.assign(cache_path=[str(folder / rel) for rel in cached["cache_path"]])


def crop_table_path(table: str | Path) -> Path:
    """The crop table beside an image cache's ``table.parquet``."""
    return Path(table).with_name(ROI_TABLE_FILE)


def read_crop_table(table: str | Path) -> pd.DataFrame:
    """The lesion crops beside the image cache table ``table``, with ``cache_path`` made absolute.

    Raises:
        NotCachedError: the cache holds no crops, naming the command that makes them.
    """
    path = crop_table_path(table)
    if not path.is_file():
        raise NotCachedError(
            f"{Path(table).parent}: no lesion crops ({ROI_TABLE_FILE}); run `mvmlm preprocess` with "
            "roi.enabled=true (its cache folder then holds the crops beside table.parquet)"
        )
    return read_cached_table(path)
