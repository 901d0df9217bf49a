"""One mammography DICOM file -> float32 image in [0, 1] with the chest wall on the left, plus its metadata.

Order of operations (DICOM PS3.3 C.11): stored value -> rescale (slope, intercept) -> VOI (VOILUTSequence if
present, else the first WindowCenter/WindowWidth with VOILUTFunction LINEAR, LINEAR_EXACT or SIGMOID, else the
image's own min-max) -> inversion for MONOCHROME1 / PresentationLUTShape INVERSE -> [0, 1] -> horizontal flip
when the breast lies against the right edge. Unsigned native pixel data is read straight from the file buffer
(bits above BitsStored are kept and clipped by the window, not masked); everything else goes through pydicom's
decoders. The VOI is either an affine map done in float32 or, for curves, a table over every stored value.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder, pixel_array
from pydicom.pixels.utils import _get_jpg_parameters
from pydicom.uid import UID

from mvmlm.data.dicom_header import (
    VIEW_CODES,
    DicomReadError,
    MammogramMeta,
    header_meta,
    read_dataset,
)
from mvmlm.data.lossless_jpeg import lossless_jpeg_shortfall

__all__ = ["VIEW_CODES", "DicomReadError", "MammogramMeta", "read_dicom_header", "read_mammogram"]

_J2K = "pylibjpeg pylibjpeg-openjpeg"
_JPEG = "pylibjpeg pylibjpeg-libjpeg"
#: transfer syntax UID -> pip packages that decode it
DECODER_PACKAGES: dict[str, str] = {
    **dict.fromkeys(["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"], _J2K),
    **dict.fromkeys(["1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"], _J2K),
    **dict.fromkeys(["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"], _JPEG),
    **dict.fromkeys(["1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"], _JPEG),
    **dict.fromkeys(["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"], "pyjpegls"),
}
#: Digital Mammography X-Ray Image Storage, For Presentation / For Processing
MAMMOGRAPHY_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.1.2.1")
_JPEG_SYNTAXES = {f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81)}  # SOF (or JPEG-LS SOF55) header
_J2K_SYNTAXES = {f"1.2.840.10008.1.2.4.{n}" for n in (90, 91, 201, 202, 203)}  # SOC + SIZ header
_LOSSLESS_JPEG_SYNTAXES = {"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}
#: decoder plugin tried alone for a transfer syntax when installed (libjpeg decodes a cut JPEG-LS stream silently)
_STRICT_PLUGINS = {"1.2.840.10008.1.2.4.80": "pyjpegls", "1.2.840.10008.1.2.4.81": "pyjpegls"}
#: pydicom warnings that mean the decoded data is longer than the header's image: a failure, not a warning
_OVERLONG_WARNINGS = r".*(non-conformant padding|excess padding)"
_WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
_LOOKUP_BLOCK = 1 << 18  # pixels per np.take call in a table lookup (see _lookup)


def read_mammogram(path: str | Path, *, for_processing: bool = False) -> tuple[np.ndarray, MammogramMeta]:
    """Read a FOR PRESENTATION mammogram as float32 ``(rows, cols)`` in [0, 1], bright = dense, chest wall left.

    Args:
        for_processing: also accept FOR PROCESSING (raw detector) images.

    Raises:
        DicomReadError: naming the file and the reason (not DICOM, truncated, no pixel data, missing decoder
            plugin, not a mammogram (Modality / SOP class), FOR PROCESSING image, not a single-frame grayscale
            image, a bitstream that disagrees with the header, undecodable pixel data).
    """
    ds = read_dataset(path)
    _check_mammogram(ds, path, for_processing)
    stored = _stored_pixels(ds, path)
    kind = _voi_kind(ds)
    display = _display_map(ds, kind, stored)
    step = max(1, max(stored.shape) // 256)
    flipped = _chest_wall_on_right(display(stored[::step, ::step]))
    image = display(stored[:, ::-1] if flipped else stored)  # C-contiguous either way
    return image, header_meta(ds, voi_function=kind, flipped=flipped)


def read_dicom_header(path: str | Path) -> MammogramMeta:
    """Metadata of a DICOM file without reading its pixel data (``flipped`` is None)."""
    ds = read_dataset(path, stop_before_pixels=True)
    return header_meta(ds, voi_function=_voi_kind(ds), flipped=None)


def _check_mammogram(ds: Dataset, path: str | Path, for_processing: bool) -> None:
    """Only mammograms (Modality MG or a mammography SOP class), FOR PRESENTATION unless ``for_processing``."""
    modality, sop_class = str(ds.get("Modality", "") or ""), UID(str(ds.get("SOPClassUID", "") or ""))
    if modality.upper() != "MG" and sop_class not in MAMMOGRAPHY_SOP_CLASSES:
        raise DicomReadError(
            f"{path}: not a mammogram (Modality {modality or 'missing'!r}, SOP class {sop_class.name or 'missing'}); "
            "only MG images are read"
        )
    intent = str(ds.get("PresentationIntentType", "")).upper()
    if not for_processing and (intent == "FOR PROCESSING" or "For Processing" in sop_class.name):
        raise DicomReadError(
            f"{path}: a FOR PROCESSING (raw detector) image; only FOR PRESENTATION mammograms are read unless "
            "for_processing=true"
        )


def _stored_pixels(ds: Dataset, path: str | Path) -> np.ndarray:
    """The stored values of the single frame, shape (rows, cols); read-only for native data."""
    if "PixelData" not in ds:
        raise DicomReadError(f"{path}: no Pixel Data element (truncated file, or a DICOM without an image)")
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax is None:
        raise DicomReadError(f"{path}: no TransferSyntaxUID in the file meta information")
    tsyntax = UID(tsyntax)
    try:
        rows, cols, bits_allocated = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as e:
        raise DicomReadError(f"{path}: incomplete image pixel module ({e})") from e
    samples, frames = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("NumberOfFrames", 1) or 1)
    if samples != 1 or frames != 1:
        raise DicomReadError(
            f"{path}: expected a single-frame grayscale image, got SamplesPerPixel={samples}, NumberOfFrames={frames}"
        )
    unsigned = ds.get("PixelRepresentation", 0) == 0
    if tsyntax.is_little_endian and not tsyntax.is_encapsulated and unsigned and bits_allocated in (8, 16):
        dtype, buffer = np.dtype(f"<u{bits_allocated // 8}"), ds.PixelData
        expected = rows * cols * dtype.itemsize
        if len(buffer) < expected:
            raise DicomReadError(f"{path}: truncated pixel data ({len(buffer)} bytes, expected {expected})")
        if len(buffer) > expected + expected % 2:
            raise DicomReadError(
                f"{path}: {len(buffer)} bytes of pixel data, but the header's {rows} x {cols} pixels at "
                f"{bits_allocated} bits take {expected}; damaged file or wrong Rows / Columns"
            )
        return np.frombuffer(buffer, dtype, count=rows * cols).reshape(rows, cols)
    if tsyntax.is_encapsulated:
        _check_bitstream(ds, tsyntax, path, rows, cols, bits_allocated)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as e:
        raise DicomReadError(f"{path}: unsupported transfer syntax {tsyntax} ({tsyntax.name})") from e
    if not decoder.is_available:
        package = DECODER_PACKAGES.get(str(tsyntax), "a pydicom decoder plugin")
        raise DicomReadError(
            f"{path}: {tsyntax.name} ({tsyntax}) pixel data but no decoder is installed; pip install {package}"
        )
    plugin = _STRICT_PLUGINS.get(str(tsyntax), "")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=_OVERLONG_WARNINGS)
            stored = pixel_array(ds, decoding_plugin=plugin if plugin in decoder.available_plugins else "")
    except Exception as e:  # decoder plugins raise their own types
        raise DicomReadError(f"{path}: cannot decode {tsyntax.name} pixel data ({type(e).__name__}: {e})") from e
    if stored.shape != (rows, cols):
        raise DicomReadError(f"{path}: decoded {stored.shape} pixels, but the header says {rows} x {cols}")
    if tsyntax in _LOSSLESS_JPEG_SYNTAXES:  # its decoders fill a cut scan that ends with EOI without an error
        shortfall = lossless_jpeg_shortfall(get_frame(ds.PixelData, 0, number_of_frames=1), stored)
        if shortfall:
            raise DicomReadError(f"{path}: the {tsyntax.name} bitstream is cut short ({shortfall}); damaged file")
    return stored


def _bitstream_header(frame: bytes, tsyntax: UID) -> tuple[int, int, int, int] | None:
    """(rows, cols, components, precision) from a JPEG / JPEG-LS SOF or JPEG 2000 SIZ segment; None if unknown."""
    if tsyntax in _JPEG_SYNTAXES:
        info = _get_jpg_parameters(frame)
        return (info["height"], info["width"], info["components"], info["precision"]) if info else None
    if tsyntax in _J2K_SYNTAXES and frame[:4] == b"\xff\x4f\xff\x51" and len(frame) > 42:
        x, y, x0, y0 = (int.from_bytes(frame[8 + 4 * i : 12 + 4 * i], "big") for i in range(4))
        return y - y0, x - x0, int.from_bytes(frame[40:42], "big"), (frame[42] & 0x7F) + 1
    return None


def _check_bitstream(ds: Dataset, tsyntax: UID, path: str | Path, rows: int, cols: int, bits: int) -> None:
    """Refuse a compressed frame whose own header disagrees with the DICOM header, or that lacks its end marker
    (a cut stream); some decoders abort the process or decode such data silently into a wrong image."""
    if tsyntax not in _JPEG_SYNTAXES and tsyntax not in _J2K_SYNTAXES:
        return
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    except Exception as e:  # noqa: BLE001 - malformed encapsulation
        raise DicomReadError(f"{path}: malformed encapsulated pixel data ({type(e).__name__}: {e})") from e
    header = _bitstream_header(frame, tsyntax)
    if header is None:
        raise DicomReadError(f"{path}: the {tsyntax.name} bitstream has no readable image header; damaged file")
    stream_rows, stream_cols, components, precision = header
    if stream_rows not in (0, rows) or stream_cols != cols or components != 1 or precision > bits:
        raise DicomReadError(
            f"{path}: the header says {rows} x {cols} pixels, 1 sample, {bits} bits allocated, but the {tsyntax.name} "
            f"bitstream holds {stream_rows} x {stream_cols}, {components} sample(s), {precision} bits; damaged file"
        )
    if not frame.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise DicomReadError(f"{path}: the {tsyntax.name} bitstream has no end marker (cut short); damaged file")


def _first_number(value: object) -> float | None:
    """The first value of a (possibly multi-valued) numeric element, or None."""
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _window(ds: Dataset) -> tuple[float, float] | None:
    """The first (center, width) pair, or None when absent or unusable (width <= 0)."""
    center, width = _first_number(ds.get("WindowCenter")), _first_number(ds.get("WindowWidth"))
    if center is None or width is None or not (np.isfinite(center) and np.isfinite(width) and width > 0):
        return None
    return center, width


def _voi_lut_item(ds: Dataset) -> Dataset | None:
    """The first VOILUTSequence item when it has a LUTDescriptor and non-empty LUTData, else None."""
    seq = ds.get("VOILUTSequence")
    item = seq[0] if seq else None
    return item if item is not None and "LUTDescriptor" in item and item.get("LUTData") is not None else None


def _voi_lut(item: Dataset) -> tuple[float, np.ndarray]:
    """(first mapped value, table) of a VOI LUT item (converting a long table takes milliseconds: do it once)."""
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    data = item.LUTData
    if isinstance(data, bytes):
        data = np.frombuffer(data, "<u2" if bits > 8 else "u1")
    return float(first), np.asarray(data, dtype=np.float64).ravel()[: entries or 65536]


def _voi_kind(ds: Dataset) -> str:
    """Which VOI transform :func:`read_mammogram` applies (see :attr:`MammogramMeta.voi_function`)."""
    if _voi_lut_item(ds) is not None:
        return "LUT"
    if _window(ds) is None:
        return "NONE"
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").upper()
    return function if function in _WINDOW_FUNCTIONS else "LINEAR"  # LINEAR is the standard's default


def _inverted(ds: Dataset) -> bool:
    return ds.get("PhotometricInterpretation") == "MONOCHROME1" or ds.get("PresentationLUTShape") == "INVERSE"


def _display_map(ds: Dataset, kind: str, stored: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A function stored values -> float32 display values in [0, 1] (rescale, VOI and inversion folded in)."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    invert = _inverted(ds)
    if kind in ("LUT", "SIGMOID"):
        if kind == "LUT":
            first, table = _voi_lut(_voi_lut_item(ds))
            low, span = table.min(), max(float(table.max() - table.min()), 1e-12)

            def curve(v: np.ndarray) -> np.ndarray:
                idx = np.clip(np.rint(v - first), 0, table.size - 1).astype(np.intp)
                return (table[idx] - low) / span
        else:
            center, width = _window(ds)

            def curve(v: np.ndarray) -> np.ndarray:
                return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (v - center) / width, -60.0, 60.0)))

        return _tabulated(lambda v: 1.0 - curve(v) if invert else curve(v), slope, intercept, stored)
    if kind == "NONE":
        low, high = sorted((slope * float(stored.min()) + intercept, slope * float(stored.max()) + intercept))
        if high <= low:
            return _affine(0.0, 0.0)  # a constant image is black
        scale, offset = 1.0 / (high - low), -low / (high - low)
    else:
        center, width = _window(ds)
        if kind == "LINEAR":
            span = max(width - 1.0, 1e-3)
            scale, offset = 1.0 / span, 0.5 - (center - 0.5) / span
        else:  # LINEAR_EXACT
            scale, offset = 1.0 / width, 0.5 - center / width
    scale, offset = scale * slope, scale * intercept + offset
    return _affine(-scale, 1.0 - offset) if invert else _affine(scale, offset)


def _affine(scale: float, offset: float) -> Callable[[np.ndarray], np.ndarray]:
    """clip(scale * x + offset, 0, 1) in float32: one C-contiguous output, then in-place passes over it."""

    def apply(x: np.ndarray) -> np.ndarray:
        out = x.astype(np.float32, order="C")
        out *= np.float32(scale)
        out += np.float32(offset)
        return np.clip(out, 0.0, 1.0, out=out)

    return apply


def _tabulated(
    curve: Callable[[np.ndarray], np.ndarray], slope: float, intercept: float, stored: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """curve(slope * x + intercept) as float32; one table lookup for unsigned values of up to 16 bits."""
    if stored.dtype.kind == "u" and stored.dtype.itemsize <= 2:
        values = np.arange(int(stored.max()) + 1 if stored.size else 1, dtype=np.float64)
        return _lookup(curve(values * slope + intercept).astype(np.float32))
    return lambda x: curve(x.astype(np.float64) * slope + intercept).astype(np.float32)


def _lookup(table: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """x -> table[x] for a 2-D x of indices into table, a block of rows at a time.

    np.take copies each block's indices to intp; small blocks keep that copy in cache. mode="wrap" (no index ever
    wraps: the table covers 0..max of the image) writes straight into ``out``; the default mode buffers it.
    """

    def apply(x: np.ndarray) -> np.ndarray:
        out = np.empty(x.shape, table.dtype)
        rows = max(1, _LOOKUP_BLOCK // max(1, x.shape[1]))
        for start in range(0, x.shape[0], rows):
            table.take(x[start : start + rows], out=out[start : start + rows], mode="wrap")
        return out

    return apply


def _chest_wall_on_right(display: np.ndarray) -> bool:
    """True when the right half is brighter: the breast (and chest wall) lies against the right edge."""
    half = display.shape[1] // 2
    return half > 0 and float(display[:, -half:].mean()) > float(display[:, :half].mean())
