"""Crop a canonical mammogram to the breast and resize it keeping its aspect ratio (used by ``mvmlm preprocess``,
ROI crops and ``mvmlm predict`` through :func:`mvmlm.data.preprocess.preprocess_image`)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["breast_bbox", "crop_breast", "resize_pad"]

_BBOX_GRID = 512  # the breast mask is found on a grid of at most this many pixels per side


def breast_bbox(image: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` (end-exclusive) of the largest bright component: the breast.

    A pixel is bright when it exceeds the background (the image minimum, e.g. a SIGMOID VOI leaves it above 0)
    by ``threshold`` times the intensity range. The mask is found on a grid of at most ``_BBOX_GRID`` pixels per
    side and opened (isolated noise pixels removed). The whole image when nothing is bright (e.g. all zero).
    """
    height, width = image.shape
    step = max(1, -(-max(height, width) // _BBOX_GRID))
    small = image[::step, ::step]
    low, high = float(small.min()), float(small.max())
    mask = ndimage.binary_opening(small > low + threshold * (high - low))
    if not mask.any():
        return 0, height, 0, width
    labels, _ = ndimage.label(mask)
    largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    rows, cols = ndimage.find_objects(labels)[largest - 1]
    return rows.start * step, min(height, rows.stop * step), cols.start * step, min(width, cols.stop * step)


def crop_breast(image: np.ndarray, threshold: float) -> np.ndarray:
    """``image`` cropped to :func:`breast_bbox`."""
    top, bottom, left, right = breast_bbox(image, threshold)
    return image[top:bottom, left:right]


def resize_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize keeping the aspect ratio to fit ``height x width``; zero-pad right and bottom. float32 in [0, 1]."""
    rows, cols = image.shape
    scale = min(height / rows, width / cols)
    new_rows = min(height, max(1, round(rows * scale)))
    new_cols = min(width, max(1, round(cols * scale)))
    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize(
        (new_cols, new_rows), Image.Resampling.BILINEAR
    )
    out = np.zeros((height, width), dtype=np.float32)
    out[:new_rows, :new_cols] = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    return out
