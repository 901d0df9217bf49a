"""The 16-bit image cache of a canonical table (the ``mvmlm preprocess`` command: :mod:`mvmlm.data.preprocess_command`).

``mvmlm preprocess --table vindr.parquet --root /data/vindr --out cache --workers 8 height=1520 width=912``

Every image of a canonical table is read with :func:`mvmlm.data.dicom.read_mammogram` (float32 in [0, 1],
chest wall on the left), cropped to the bounding box of its largest component brighter than the background
(the breast; labels and markers are smaller components), resized keeping its aspect ratio into
``height x width`` with zero padding on the right and bottom, and cached once.

Cache layout: ``<out>/<height>x<width>-<hash of the parameters>-<hash of the table's content>/`` holds
``images/<dataset>/<patient>/<image>.npy``, ``table.parquet`` (the input rows that were cached, with ``cache_path``
relative to that folder), ``failures.csv`` (image_id, path, error), the run's config, provenance, log and metrics.
Changing a parameter or the table changes the folder, so two datasets (or two versions of a table) never share one
and old caches stay valid.

Only mammograms enter (Modality MG or a mammography SOP class, FOR PRESENTATION unless ``for_processing=true``, one
frame, pixel data that agrees with the header); every image is decoded in a worker process
(:mod:`mvmlm.data.workers`), so a decoder that aborts, crashes or hangs (``timeout`` seconds per image) fails that
image only. A failed image is a row of ``failures.csv`` with the reason; the command exits with code 2 when every
image, or more than ``max_failures`` of them, failed (:mod:`mvmlm.batch`).

Lesion crops (``roi.enabled=true``, :mod:`mvmlm.data.roi`): the folder also holds ``crops/<dataset>/<patient>/
<image>.npy`` (the ``roi.size`` square around each image's lesions), ``roi_table.parquet`` (the cached rows with a
crop, ``cache_path`` relative to the folder) and ``roi_failures.csv`` (images without a crop). The ROI parameters
are part of the folder's hash, so caches with other crop parameters never mix (without ROI the hash is unchanged).

Format (``cache_format``, part of the folder's hash unless ``npy``): ``npy`` (uncompressed, fastest to read),
``png16`` or ``blosc2`` (lossless, about half the bytes); see :mod:`mvmlm.data.cache`, which reads each of them.

Resumable: an image whose cache file exists is skipped, and every file is written to a temporary name and
renamed, so a killed run never leaves a partial cache file; the failed images are retried by every rerun. Run one
``preprocess`` per cache folder at a time, or split it: ``shard_id=I num_shards=N`` caches the images of shard ``I``
(a stable hash of the image id) and writes its part table and failures to ``shards/<I>-of-<N>/`` (resumable per
shard); then ``merge=true`` with the same parameters writes ``table.parquet`` and ``failures.csv`` exactly as one
run would, refusing an incomplete or mismatched set of shards (:mod:`mvmlm.data.shards`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mvmlm.config import ConfigError
from mvmlm.data import dicom, schema
from mvmlm.data.breast_crop import breast_bbox, crop_breast, resize_pad
from mvmlm.data.cache import (
    CACHE_FORMATS,
    TMP_MARK,
    cache_suffix,
    from_cache_values,
    load_cached,
    read_cache_values,
    save_cached,
    to_cache_values,
)
from mvmlm.data.shards import (
    check_shard,
    finish_shard,
    shard_rows,
    start_shard,
)
from mvmlm.data.workers import run_isolated
from mvmlm.errors import InputError

__all__ = [
    "RoiParams",
    "PreprocessParams",
    "to_cache_values",
    "from_cache_values",
    "breast_bbox",
    "crop_breast",
    "resize_pad",
    "preprocess_image",
    "table_hash",
    "cache_folder",
    "cache_file",
    "save_cached",
    "load_cached",
    "read_cache_values",
    "preprocess_table",
    "relative_cache_paths",
    "shard_identity",
    "read_cached_table",
    "NotCachedError",
    "ROI_TABLE_FILE",
    "ROI_FAILURES_FILE",
    "CROPS_DIR",
]

log = logging.getLogger(__name__)


class NotCachedError(ValueError, InputError):
    """A table was given where the ``table.parquet`` of a ``mvmlm preprocess`` run (with ``cache_path``) is needed."""


#: bump when the preprocessing code changes its output, so old caches are not reused
CACHE_VERSION = 1
TABLE_FILE = "table.parquet"
FAILURES_FILE = "failures.csv"
IMAGES_DIR = "images"
#: bump when the crop code (:mod:`mvmlm.data.roi`) changes its output
ROI_VERSION = 1
ROI_SOURCES = ("mask", "crop")
ROI_MISSING = ("skip", "whole")
ROI_TABLE_FILE = "roi_table.parquet"
ROI_FAILURES_FILE = "roi_failures.csv"
CROPS_DIR = "crops"
DEFAULT_TIMEOUT = 120.0  # seconds per image before its worker is killed


@dataclass
class RoiParams:
    """Lesion crops beside the images (the crop stream of ``mvmlm dual-stream``; :mod:`mvmlm.data.roi`)."""

    enabled: bool = False  # also cache a lesion crop per image (datasets with ROI masks or boxes)
    size: int = 224  # crop side after resizing (Mammo-Mamba: 224)
    margin: float = 0.25  # context added on each side, as a share of the lesion box's longer side
    min_side: int = 64  # smallest crop side in native pixels (tiny calcification clusters still get context)
    source: str = "mask"  # mask: ROI masks / boxes cut from the full image | crop: CBIS-DDSM's cropped-image files
    missing: str = "skip"  # image without a lesion: skip (recorded in roi_failures.csv) | whole (the breast instead)

    def __post_init__(self) -> None:
        if self.size < 1 or self.min_side < 1 or self.margin < 0:
            raise ConfigError(f"key 'roi': size and min_side must be positive and margin >= 0, got {self}")
        if self.source not in ROI_SOURCES or self.missing not in ROI_MISSING:
            raise ConfigError(
                f"key 'roi': source must be one of {ROI_SOURCES} and missing one of {ROI_MISSING}, "
                f"got {self.source!r} / {self.missing!r}"
            )


@dataclass
class PreprocessParams:
    """Everything that changes a cached image (or crop); hashed into the cache folder name."""

    height: int = 1520  # output rows
    width: int = 912  # output columns
    crop: bool = True  # crop to the breast before resizing
    crop_threshold: float = 0.05  # breast = brighter than the background by this share of the intensity range
    roi: RoiParams = field(default_factory=RoiParams)  # lesion crops beside the images (roi.enabled=true)
    for_processing: bool = False  # also cache FOR PROCESSING (raw detector) images; default FOR PRESENTATION only
    cache_format: str = "npy"  # npy (fastest read) | png16 | blosc2 (compressed, lossless): mvmlm.data.cache

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ConfigError(f"key 'height'/'width': must be positive, got {self.height}x{self.width}")
        if not 0 <= self.crop_threshold < 1:
            raise ConfigError(f"key 'crop_threshold': must be in [0, 1), got {self.crop_threshold}")
        if self.cache_format not in CACHE_FORMATS:
            known = ", ".join(CACHE_FORMATS.names())
            raise ConfigError(f"key 'cache_format': one of {known}, got {self.cache_format!r}")

    def key(self) -> str:
        """Parameter part of the cache folder name: ``<height>x<width>-<10 hex digits of the parameter hash>`` (the
        ROI parameters count only when crops are made, ``for_processing`` only when set, ``cache_format`` only when
        not ``npy``, so caches without them keep their name)."""
        fields = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(PreprocessParams)
            if f.name not in ("roi", "for_processing", "cache_format")
        }
        if self.for_processing:
            fields["for_processing"] = True
        if self.cache_format != "npy":
            fields["cache_format"] = self.cache_format
        if self.roi.enabled:
            fields["roi"] = {"version": ROI_VERSION, **dataclasses.asdict(self.roi)}
        blob = json.dumps({"version": CACHE_VERSION, **fields}, sort_keys=True)
        return f"{self.height}x{self.width}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def preprocess_image(image: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """Crop (if ``params.crop``) and resize-pad one canonical image."""
    if params.crop:
        image = crop_breast(image, params.crop_threshold)
    return resize_pad(image, params.height, params.width)


def table_hash(table: pd.DataFrame) -> str:
    """12 hex digits of a hash of a canonical table's content (every column and row, in order)."""
    text = schema.conform(table).to_json(orient="split", index=False, date_format="iso", default_handler=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def cache_folder(cache_dir: str | Path, params: PreprocessParams, table: pd.DataFrame | None = None) -> Path:
    """The folder of one parameter set and one table inside the cache root ``cache_dir``.

    Without ``table``: the one folder cached with ``params`` there.

    Raises:
        NotCachedError: without ``table``, when no folder or several (tables) match ``params``.
    """
    if table is not None:
        return Path(cache_dir) / f"{params.key()}-{table_hash(table)}"
    found = sorted(Path(cache_dir).glob(f"{params.key()}-*"))
    if len(found) != 1:
        what = "no cache folder" if not found else f"{len(found)} cache folders (tables)"
        raise NotCachedError(
            f"{cache_dir}: {what} for {params.height}x{params.width} parameters {params.key()}; run `mvmlm preprocess`"
            + (" or name the table" if found else "")
        )
    return found[0]


def _safe_name(value: str) -> str:
    """A file-name-safe form of an id; ids that had to be changed get a short hash so they stay distinct."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", value)
    if safe != value or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha1(value.encode()).hexdigest()[:8]}"
    return safe


def cache_file(dataset: str, patient_id: str, image_id: str, kind: str = IMAGES_DIR, cache_format: str = "npy") -> Path:
    """Path of an image's cache file (``kind``: ``images`` or ``crops``) relative to its cache folder."""
    name = f"{_safe_name(image_id)}{cache_suffix(cache_format)}"
    return Path(kind, _safe_name(dataset), _safe_name(patient_id), name)


def _cache_one(source: str, target: str, params: PreprocessParams) -> None:
    """Read, preprocess and cache one image (in a worker process: a failure is recorded and the run goes on)."""
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # its per-file ERROR lines would cover the progress bar
    image, _ = dicom.read_mammogram(source, for_processing=params.for_processing)
    save_cached(target, preprocess_image(image, params))


def relative_cache_paths(table: pd.DataFrame, kind: str, cache_format: str) -> list[str]:
    """Every row's cache file (``kind``: images or crops) relative to the cache folder."""
    ids = zip(table["dataset"], table["patient_id"], table["image_id"], strict=True)
    return [str(cache_file(dataset, patient, image, kind, cache_format)) for dataset, patient, image in ids]


def _remove_partial_files(folder: Path, table: pd.DataFrame, cache_format: str) -> None:
    """Delete temporary files a killed run left behind for the rows of ``table`` (those of other shards, maybe
    being written right now, are left alone)."""
    mine = {
        *relative_cache_paths(table, IMAGES_DIR, cache_format),
        *relative_cache_paths(table, CROPS_DIR, cache_format),
    }
    for kind in (IMAGES_DIR, CROPS_DIR):
        if (folder / kind).is_dir():
            for tmp in (folder / kind).rglob(f".*{TMP_MARK}*"):
                target = tmp.parent / tmp.name[1 : tmp.name.rindex(TMP_MARK)]
                if str(target.relative_to(folder)) in mine:
                    tmp.unlink(missing_ok=True)


def shard_identity(folder: Path) -> dict[str, str]:
    """What every shard of one cache records and the merge checks: the folder name (parameters and table hash)."""
    return {"cache": folder.name}


def preprocess_table(
    table: pd.DataFrame,
    root: str | Path,
    cache_dir: str | Path,
    params: PreprocessParams | None = None,
    *,
    workers: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    shard_id: int = 0,
    num_shards: int = 1,
) -> pd.DataFrame:
    """Cache every image of a canonical ``table`` (paths relative to ``root``) under ``cache_dir``.

    Images already cached with the same parameters and table are skipped. Each image is decoded in one of
    ``workers`` worker processes; per-image failures (unreadable, not a mammogram, decoder crashed, longer than
    ``timeout`` seconds) are written to ``failures.csv`` in the cache folder and the rest go on. The cached rows,
    with a ``cache_path`` column (relative to the cache folder), are written to ``table.parquet`` there. With
    ``params.roi.enabled`` the lesion crops of the cached rows follow (:func:`mvmlm.data.roi.cache_crops`).

    With ``num_shards > 1`` only the rows of shard ``shard_id`` (:func:`~mvmlm.data.shards.shard_rows`) are cached,
    and the part ``table.parquet`` / ``failures.csv`` go to the shard's folder (:mod:`mvmlm.data.shards`), marked
    finished at the end; :func:`mvmlm.data.cache_merge.merge_shards` assembles the cache folder's own files.

    Returns:
        The rows that are cached, with ``cache_path`` as an absolute path.
    """
    params = params or PreprocessParams()
    check_shard(shard_id, num_shards)
    table = schema.check(schema.conform(table), "table to preprocess")
    folder = cache_folder(cache_dir, params, table).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    out = folder
    if num_shards > 1:
        table, out = shard_rows(table, shard_id, num_shards), start_shard(folder, shard_id, num_shards)
    _remove_partial_files(folder, table, params.cache_format)
    relative = relative_cache_paths(table, IMAGES_DIR, params.cache_format)
    todo = [
        (row, (str(Path(root) / path), str(folder / rel), params))
        for row, (path, rel) in enumerate(zip(table["path"], relative, strict=True))
        if not (folder / rel).is_file()
    ]
    desc = "preprocess" if num_shards == 1 else f"preprocess {shard_id}/{num_shards}"
    errors = run_isolated(
        _cache_one, todo, workers=workers, timeout=timeout, name="decoder", desc=desc, progress=progress
    )
    failed = sorted(errors)
    failures = table.loc[failed, ["image_id", "path"]].assign(error=[errors[row] for row in failed])
    failures.to_csv(out / FAILURES_FILE, index=False)
    cached = table.assign(cache_path=relative).drop(index=failed).reset_index(drop=True)
    schema.write_table(cached, out / TABLE_FILE)
    if params.roi.enabled:
        from mvmlm.data.roi import cache_crops  # roi builds on this module

        good = table.drop(index=failed)
        kwargs = {"workers": workers, "timeout": timeout, "progress": progress, "cache_format": params.cache_format}
        cache_crops(good, root, folder, params.roi, tables=out, **kwargs)
    if num_shards > 1:
        finish_shard(out, shard_identity(folder))
    log.info(
        "preprocess %s: %d images already cached, %d cached now, %d failed (see %s)",
        out,
        len(table) - len(todo),
        len(todo) - len(errors),
        len(errors),
        out / FAILURES_FILE,
    )
    return cached.assign(cache_path=[str(folder / rel) for rel in cached["cache_path"]])


def read_cached_table(path: str | Path) -> pd.DataFrame:
    """Read a ``table.parquet`` written by :func:`preprocess_table`, with ``cache_path`` made absolute."""
    path = Path(path)
    table = schema.read_table(path)
    if "cache_path" not in table.columns:
        raise NotCachedError(f"{path}: no cache_path column; run `mvmlm preprocess` on this table first")
    return table.assign(cache_path=[str(path.parent.resolve() / p) for p in table["cache_path"]])
