"""Where the synthetic writers planted each image's lesion, in the cached (preprocessed) image's pixels.

``mvmlm synth-data`` writes ``OUT/synthetic_lesions.parquet`` beside ``synthetic_truth.parquet``: one row per image of
the expected table (``dataset``, ``image_id``) with the lesion centre ``lesion_x`` / ``lesion_y`` as fractions of the
image width / height and its diameter ``lesion_size`` as a fraction of the width, all in canonical orientation (chest
wall left; NaN for an image without a lesion). :func:`preprocessed_lesion_mask` carries the lesion through the data
layer's own crop (:func:`~mvmlm.data.preprocess.breast_bbox`) and resize (:func:`~mvmlm.data.preprocess.resize_pad`),
so a mask lines up with the image ``mvmlm preprocess`` caches and ``mvmlm predict`` reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from mvmlm.data.preprocess import PreprocessParams, breast_bbox, resize_pad

__all__ = ["LESIONS_FILE", "LESION_COLUMNS", "read_lesions", "lesion_mask", "preprocessed_lesion_mask"]

LESIONS_FILE = "synthetic_lesions.parquet"
LESION_COLUMNS = ("lesion_x", "lesion_y", "lesion_size")


def read_lesions(root: str | Path) -> pd.DataFrame:
    """The lesion table of a ``mvmlm synth-data`` folder, indexed by ``(dataset, image_id)``."""
    return pd.read_parquet(Path(root) / LESIONS_FILE).set_index(["dataset", "image_id"])


def lesion_mask(lesion: Mapping, shape: tuple[int, int]) -> np.ndarray:
    """Boolean ``shape`` mask of the lesion disc (diameter ``lesion_size`` x width) in a canonical full image; all
    False without a lesion."""
    height, width = shape
    if pd.isna(lesion["lesion_x"]):
        return np.zeros(shape, dtype=bool)
    cy, cx = float(lesion["lesion_y"]) * height, float(lesion["lesion_x"]) * width
    radius = max(0.5 * float(lesion["lesion_size"]) * width, 1.0)
    rows = np.arange(height)[:, None] + 0.5 - cy
    cols = np.arange(width)[None, :] + 0.5 - cx
    return rows**2 + cols**2 <= radius**2


def preprocessed_lesion_mask(image: np.ndarray, lesion: Mapping, params: PreprocessParams) -> np.ndarray:
    """The lesion mask of the canonical full ``image`` (as decoded, before cropping) in the ``params.height x
    params.width`` image that :func:`~mvmlm.data.preprocess.preprocess_image` makes of it."""
    mask = lesion_mask(lesion, image.shape).astype(np.float32)
    if params.crop:
        top, bottom, left, right = breast_bbox(image, params.crop_threshold)
        mask = mask[top:bottom, left:right]
    return resize_pad(mask, params.height, params.width) >= 0.5
