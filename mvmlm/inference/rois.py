"""Lesion boxes for bundles that predict from lesion crops (the dual-stream classifier): ``--rois FILE.csv``.

The file has one row per box: ``image`` (the image's SOPInstanceUID, or its file path: absolute, or relative to the
CSV's folder) and ``xmin, ymin, xmax, ymax`` in pixels of the stored DICOM image (columns x, rows y, before any
flip). Several boxes of one image are joined. The crop is cut and resized exactly as ``mvmlm preprocess
roi.enabled=true`` cuts the cached crops (:func:`mvmlm.data.roi.lesion_crop` with the bundle's ROI parameters): the
boxes take the form of VinDr's finding boxes (native pixels, mirrored with the image), read by that source's reader.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from mvmlm.data.preprocess import RoiParams
from mvmlm.data.roi import lesion_crop
from mvmlm.errors import InputError

__all__ = ["RoiError", "ROI_COLUMNS", "Rois", "read_rois"]

ROI_COLUMNS = ("image", "xmin", "ymin", "xmax", "ymax")
_BOX_SOURCE = "vindr"  # the ROI source whose boxes are native-pixel xmin/ymin/xmax/ymax records


class RoiError(ValueError, InputError):
    """A ``--rois`` file that cannot be read, or a bundle that needs one without it."""


class Rois:
    """The boxes of a ``--rois`` file by image key (SOPInstanceUID or resolved path)."""

    def __init__(self, boxes: dict[str, list[dict[str, float]]]) -> None:
        self.boxes = boxes

    def of(self, image_id: str, path: str) -> list[dict[str, float]]:
        """The boxes of an image, by its SOPInstanceUID or its path."""
        return self.boxes.get(str(image_id)) or self.boxes.get(str(Path(path).resolve()), [])

    def crop(self, image_id: str, path: str, params: RoiParams) -> np.ndarray:
        """The image's lesion crop as the cache holds it (float32 in [0, 1], before the 16-bit rounding).

        Raises:
            mvmlm.data.roi.NoRoiError: no box for the image (unless the bundle's ROIs fall back to the whole breast).
        """
        row = pd.Series({"dataset": _BOX_SOURCE, "image_id": image_id, "path": path, "boxes": self.of(image_id, path)})
        return lesion_crop(row, "/", params)


def read_rois(path: str | Path) -> Rois:
    """The boxes of a ``--rois`` CSV.

    Raises:
        RoiError: naming the file and the missing columns, or the first row whose box is not numeric / empty.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"image": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise RoiError(f"{path}: cannot read the ROI table ({exc})") from None
    missing = [c for c in ROI_COLUMNS if c not in table.columns]
    if missing:
        raise RoiError(f"{path}: missing column(s) {', '.join(missing)} (needs {', '.join(ROI_COLUMNS)})")
    boxes: dict[str, list[dict[str, float]]] = defaultdict(list)
    coords = table[list(ROI_COLUMNS[1:])].apply(pd.to_numeric, errors="coerce")
    for row, (image, (xmin, ymin, xmax, ymax)) in enumerate(zip(table["image"], coords.to_numpy(), strict=True)):
        if pd.isna(image) or not np.isfinite([xmin, ymin, xmax, ymax]).all() or xmax <= xmin or ymax <= ymin:
            raise RoiError(f"{path}: row {row + 2}: needs an image and a box with xmin < xmax, ymin < ymax")
        key = str(image)
        if "/" in key or key.lower().endswith(".dcm"):
            key = str((path.parent / key).resolve())
        boxes[key].append({"xmin": float(xmin), "ymin": float(ymin), "xmax": float(xmax), "ymax": float(ymax)})
    return Rois(dict(boxes))
