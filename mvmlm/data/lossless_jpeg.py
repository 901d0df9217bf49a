"""Is a lossless JPEG frame (ITU T.81 process 14: DICOM transfer syntaxes .57 / .70) long enough for its image?

A scan cut short but still ending with EOI decodes without an error in libjpeg and gdcm: the missing samples come out
as predictions. Lossless coding is deterministic, so the decoded image says exactly how many bits its scan must hold:
per sample, the Huffman code of the difference's category SSSS plus SSSS extra bits (T.81 H.1.2.2). A scan holding
fewer bytes than that cannot have produced the image. Computed with numpy over the whole image (no per-sample loop).
With restart intervals the number of RST markers is checked instead.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["lossless_jpeg_shortfall"]

_SOF3, _DHT, _DRI, _SOS, _EOI = 0xC3, 0xC4, 0xDD, 0xDA, 0xD9
_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # the first marker that is not a stuffed byte or RSTn
_RST = re.compile(rb"\xff[\xd0-\xd7]")
_CATEGORY = np.frexp(np.arange(0x8001))[1]  # SSSS of each |difference| 0..32768: its bit length


def _segments(frame: bytes) -> tuple[dict[str, object], int]:
    """The header values this check needs, and the offset where the entropy-coded scan starts."""
    info: dict[str, object] = {"tables": {}, "restart": 0}
    pos = 2  # after SOI
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            raise ValueError(f"no marker at byte {pos}")
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(frame[pos + 2 : pos + 4], "big")
        body = frame[pos + 4 : pos + 2 + length]
        if marker == _SOF3:
            info["precision"] = body[0]
        elif marker == _DHT:
            _read_huffman_tables(body, info["tables"])  # type: ignore[arg-type]
        elif marker == _DRI:
            info["restart"] = int.from_bytes(body[:2], "big")
        elif marker == _SOS:
            count = body[0]
            info["table"] = body[2] >> 4  # DC table of the (single) component
            info["predictor"], info["point_transform"] = body[1 + 2 * count], body[3 + 2 * count] & 0x0F
            return info, pos + 2 + length
        pos += 2 + length
    raise ValueError("no start of scan")


def _read_huffman_tables(body: bytes, tables: dict[int, np.ndarray]) -> None:
    """Code length per symbol (0 = no code) of each table in one DHT segment."""
    pos = 0
    while pos + 17 <= len(body):
        table, counts = body[pos] & 0x0F, body[pos + 1 : pos + 17]
        lengths = np.zeros(256, np.int64)
        symbols = body[pos + 17 : pos + 17 + sum(counts)]
        lengths[np.frombuffer(symbols, np.uint8)] = np.repeat(np.arange(1, 17), np.frombuffer(counts, np.uint8))
        tables[table] = lengths
        pos += 17 + sum(counts)


def _predictions(x: np.ndarray, predictor: int, precision: int, point_transform: int) -> np.ndarray:
    """T.81 H.1.2.1 predictions of every sample (first row: left; first column: above; first sample: mid-range), as
    ``x`` (uint16) modulo 2**16."""
    pred = np.empty_like(x)
    wide = x.astype(np.int32) if predictor > 3 else x  # sums and halved differences need a signed type
    a, b, c = wide[1:, :-1], wide[:-1, 1:], wide[:-1, :-1]
    pred[1:, 1:] = {
        1: lambda: a,
        2: lambda: b,
        3: lambda: c,
        4: lambda: a + b - c,
        5: lambda: a + ((b - c) >> 1),
        6: lambda: b + ((a - c) >> 1),
        7: lambda: (a + b) >> 1,
    }[predictor]()
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[0, 0] = 1 << (precision - point_transform - 1)
    return pred


def lossless_jpeg_shortfall(frame: bytes, stored: np.ndarray) -> str | None:
    """Why the lossless JPEG ``frame`` cannot have produced ``stored`` (its decoded samples), or None when it can (also
    when the frame is of a kind this check does not know: not SOF3, several components, no table)."""
    try:
        info, start = _segments(frame)
    except (ValueError, IndexError):
        return None
    if "precision" not in info or info.get("predictor") not in range(1, 8):
        return None
    end = _MARKER_AFTER_SCAN.search(frame, start)
    scan = frame[start : end.start() if end else len(frame)]
    samples, restart = stored.size, int(info["restart"])  # type: ignore[call-overload]
    if restart:  # an MCU is one sample: RST markers between the intervals
        expected, found = -(-samples // restart) - 1, len(_RST.findall(scan))
        return None if found >= expected else f"{found} of {expected} restart markers"
    lengths = info["tables"].get(info.get("table"))  # type: ignore[union-attr]
    if lengths is None:
        return None
    precision, point_transform = int(info["precision"]), int(info["point_transform"])  # type: ignore[call-overload]
    x = (stored.astype(np.uint16) & ((1 << precision) - 1)) >> point_transform  # the coded bits (also of signed data)
    diff = x - _predictions(x, int(info["predictor"]), precision, point_transform)  # type: ignore[call-overload]
    magnitude = np.minimum(diff, -diff)  # |difference| in [0, 32768]: differences are modulo 2**16 (uint16 wraps)
    per_category = np.bincount(_CATEGORY, weights=np.bincount(magnitude.ravel(), minlength=0x8001), minlength=17)
    if (per_category > 0)[lengths[:17] == 0].any():
        return "differences the scan's Huffman table cannot code"
    extra_bits = np.where(np.arange(17) < 16, np.arange(17), 0)  # category k: k bits after its code (16: none)
    needed = round(float((per_category * (lengths[:17] + extra_bits)).sum()))
    available = (len(scan) - scan.count(b"\xff\x00")) * 8
    return None if available >= needed else f"{available // 8} bytes of scan data, the image needs {-(-needed // 8)}"
