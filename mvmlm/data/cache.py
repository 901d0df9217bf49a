"""The 16-bit image cache's file format: one uint16 ``.npy`` per image, value = round(65535 * intensity).

Writing goes through a temporary name and a rename, so a killed run never leaves a partial cache file.
:func:`read_cache_values` returns the stored uint16 array (what a loader worker should hand over: half the bytes of
float32, converted on the device); :func:`load_cached` returns the float32 [0, 1] image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = [
    "CACHE_SCALE",
    "TMP_MARK",
    "save_cached",
    "read_cache_values",
    "load_cached",
    "to_cache_values",
    "from_cache_values",
]

CACHE_SCALE = 65535
TMP_MARK = ".tmp"  # in the names of files being written


def save_cached(path: str | Path, image: np.ndarray) -> Path:
    """Write a float [0, 1] image as uint16 ``.npy`` atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    with open(tmp, "wb") as handle:
        np.save(handle, to_cache_values(image))
    os.replace(tmp, path)
    return path


def read_cache_values(path: str | Path) -> np.ndarray:
    """Read a cached image's stored values: a 2-D uint16 array."""
    stored = np.load(path, allow_pickle=False)
    if stored.dtype != np.uint16 or stored.ndim != 2:
        raise ValueError(f"{path}: not a cached image (expected a 2-D uint16 array, got {stored.dtype} {stored.shape})")
    return stored


def load_cached(path: str | Path) -> np.ndarray:
    """Read a cached image as float32 in [0, 1]."""
    return from_cache_values(read_cache_values(path))


def to_cache_values(image: np.ndarray) -> np.ndarray:
    """A float [0, 1] image as the cache stores it: uint16 (rounded)."""
    return np.round(np.clip(image, 0.0, 1.0) * CACHE_SCALE).astype(np.uint16)


def from_cache_values(stored: np.ndarray) -> np.ndarray:
    """Stored uint16 values as the float32 [0, 1] image training reads."""
    image = stored.astype(np.float32)
    image *= 1.0 / CACHE_SCALE
    return image
