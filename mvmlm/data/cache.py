"""The 16-bit image cache's file formats: one file per image of uint16 values, value = round(65535 * intensity).

``cache_format`` (chosen at preprocess time, part of the cache folder's key) picks the encoding; readers tell the
formats apart by the file's suffix, so every loader reads each of them:

- ``npy`` (``.npy``): uncompressed; reading is one buffer copy. The largest files.
- ``png16`` (``.png``): 16-bit grayscale PNG (Pillow, zlib); opens in any image viewer. Slowest to read.
- ``blosc2`` (``.b2nd``): a Blosc2 NDim array (zstd after bit shuffling, one chunk per image), readable with
  ``blosc2.open(path)[:]``; about as small as PNG and decoded several times faster.

All three are lossless: the stored uint16 values come back exactly (``benchmarks/data_pipeline.py`` prints bytes and
decode time per image of each). Writing goes through a temporary name and a rename, so a killed run never leaves a
partial cache file. :func:`read_cache_values` returns the stored uint16 array (what a loader worker should hand over:
half the bytes of float32, converted on the device); :func:`load_cached` returns the float32 [0, 1] image.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvmlm.registry import Registry

__all__ = [
    "CACHE_SCALE",
    "TMP_MARK",
    "CACHE_FORMATS",
    "cache_suffix",
    "save_cached",
    "read_cache_values",
    "load_cached",
    "to_cache_values",
    "from_cache_values",
]

CACHE_SCALE = 65535
TMP_MARK = ".tmp"  # in the names of files being written


@dataclass(frozen=True)
class CacheFormat:
    """One file encoding of a 2-D uint16 array."""

    suffix: str
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[Path], np.ndarray]


def _npy_encode(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    return buffer.getvalue()


def _npy_decode(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _png_encode(values: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")  # 16-bit grayscale (mode I;16), zlib level 6
    return buffer.getvalue()


def _png_decode(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.array(image)


def _blosc2_params() -> tuple[object, object]:
    import blosc2

    # one thread: loader workers are the parallelism; bit shuffling puts the rarely-set high bits together for zstd
    compress = blosc2.CParams(codec=blosc2.Codec.ZSTD, clevel=5, filters=[blosc2.Filter.BITSHUFFLE], nthreads=1)
    return compress, blosc2.DParams(nthreads=1)


def _blosc2_encode(values: np.ndarray) -> bytes:
    import blosc2

    compress, _ = _blosc2_params()
    return blosc2.asarray(np.ascontiguousarray(values), chunks=values.shape, cparams=compress).to_cframe()


def _blosc2_decode(path: Path) -> np.ndarray:
    import blosc2

    _, decompress = _blosc2_params()
    return blosc2.open(str(path), mode="r", dparams=decompress)[:]


CACHE_FORMATS: Registry[CacheFormat] = Registry("cache format")
CACHE_FORMATS.add("npy", CacheFormat(".npy", _npy_encode, _npy_decode))
CACHE_FORMATS.add("png16", CacheFormat(".png", _png_encode, _png_decode))
CACHE_FORMATS.add("blosc2", CacheFormat(".b2nd", _blosc2_encode, _blosc2_decode))
_BY_SUFFIX = {CACHE_FORMATS.get(name).suffix: CACHE_FORMATS.get(name) for name in CACHE_FORMATS}


def cache_suffix(cache_format: str) -> str:
    """The file suffix of ``cache_format`` (an unknown name raises, listing the known ones)."""
    return CACHE_FORMATS.get(cache_format).suffix


def _format_of(path: Path) -> CacheFormat:
    try:
        return _BY_SUFFIX[path.suffix]
    except KeyError:
        known = ", ".join(sorted(_BY_SUFFIX))
        raise ValueError(f"{path}: not a cache file (suffix {path.suffix!r}; known: {known})") from None


def save_cached(path: str | Path, image: np.ndarray) -> Path:
    """Write a float [0, 1] image as uint16 in the format of ``path``'s suffix, atomically (temporary file + rename)."""
    path = Path(path)
    encoded = _format_of(path).encode(to_cache_values(image))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    tmp.write_bytes(encoded)
    os.replace(tmp, path)
    return path


def read_cache_values(path: str | Path) -> np.ndarray:
    """Read a cached image's stored values (any cache format, by suffix): a 2-D uint16 array."""
    path = Path(path)
    stored = _format_of(path).decode(path)
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
