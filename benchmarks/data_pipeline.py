"""Data pipeline speed and cache size (not a test; never run by ``make test``).

``python benchmarks/data_pipeline.py --format rsna --exams 8 --height 2048 --width 1536``

Prints, per transfer syntax and in total (best of ``--repeats`` per file, files already in the page cache):
  (a) ``read_mammogram`` time / bare ``pydicom.dcmread(p).pixel_array`` time       target <= 1.3
  (b) cache read (``load_cached``, npy) time / bare DICOM decode time              target <= 0.05
and, for each ``cache_format`` side by side (:mod:`mvmlm.data.cache`): bytes per image, encode and decode
(``read_cache_values``) ms per image and both as ratios to ``npy``, on
  - the synthetic images preprocessed to ``--cache-height x --cache-width`` (default 1520x912), and
  - real external bitstreams: the single-frame grayscale images pydicom ships (CT, MR, NM from other vendors'
    encoders, JPEG 2000 among them), decoded, stretched to [0, 1] and stored at their own size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from mvmlm.data.cache import CACHE_FORMATS, cache_suffix, load_cached, read_cache_values, save_cached
from mvmlm.data.dicom import read_mammogram
from mvmlm.data.preprocess import PreprocessParams, preprocess_table
from mvmlm.data.synthetic import write_synthetic

TARGETS = {"a": 1.3, "b": 0.05}
#: grayscale single-frame images shipped inside pydicom (no download), written by other tools
EXTERNAL = ("693_J2KI.dcm", "JPEG2000.dcm", "examples_overlay.dcm", "CT_small.dcm", "MR_small.dcm")


def _best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _syntax(path: Path) -> str:
    return pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.name


def decode_speed(table, cached, root: Path, repeats: int) -> dict[str, float]:
    """(a) and (b) per transfer syntax; returns the two ratios over all files."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0])
    for path, cache_path in zip(table["path"], cached["cache_path"], strict=True):
        source = root / path
        bare = _best(lambda s=source: pydicom.dcmread(s).pixel_array, repeats)
        ours = _best(lambda s=source: read_mammogram(s), repeats)
        cache = _best(lambda c=cache_path: load_cached(c), repeats)
        for key in (_syntax(source), "all files"):
            sums[key][0] += bare
            sums[key][1] += ours
            sums[key][2] += cache
            sums[key][3] += 1
    print(f"\n{'transfer syntax':<34}{'files':>6}{'bare ms':>9}{'read ms':>9}{'cache ms':>9}{'(a)':>7}{'(b)':>8}")
    for key, (bare, ours, cache, count) in sorted(sums.items(), key=lambda kv: kv[0] == "all files"):
        print(
            f"{key[:33]:<34}{count:>6}{bare / count * 1e3:>9.1f}{ours / count * 1e3:>9.1f}{cache / count * 1e3:>9.2f}"
            f"{ours / bare:>7.2f}{cache / bare:>8.3f}"
        )
    bare, ours, cache, _ = sums["all files"]
    ratios = {"a": ours / bare, "b": cache / bare}
    print(f"\n(a) read_mammogram / bare pydicom decode = {ratios['a']:.2f}  (target <= {TARGETS['a']})")
    print(f"(b) cache read / bare DICOM decode      = {ratios['b']:.3f}  (target <= {TARGETS['b']})")
    return ratios


def format_sizes(title: str, images: list[np.ndarray], workdir: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Bytes, encode and decode ms per image of every cache format on the same ``images`` (float [0, 1])."""
    rows = {}
    for name in sorted(CACHE_FORMATS, key=lambda n: n != "npy"):  # npy first: the reference
        paths = [workdir / f"{title}-{i}{cache_suffix(name)}" for i in range(len(images))]
        encode = sum(_best(lambda p=p, x=x: save_cached(p, x), repeats) for p, x in zip(paths, images, strict=True))
        decode = sum(_best(lambda p=p: read_cache_values(p), repeats) for p in paths)
        size = sum(p.stat().st_size for p in paths)
        rows[name] = {"bytes": size / len(paths), "encode_ms": encode / len(paths) * 1e3}
        rows[name]["decode_ms"] = decode / len(paths) * 1e3
    pixels = sum(x.size for x in images) / len(images)
    print(f"\n{title}: {len(images)} images, {pixels / 1e6:.2f} Mpixel each on average")
    print(
        f"{'cache_format':<14}{'bytes/image':>13}{'bits/pixel':>12}{'x npy size':>12}{'encode ms':>11}"
        f"{'decode ms':>11}{'x npy decode':>14}"
    )
    npy = rows["npy"]
    for name, row in rows.items():
        print(
            f"{name:<14}{row['bytes']:>13,.0f}{8 * row['bytes'] / pixels:>12.2f}{row['bytes'] / npy['bytes']:>12.3f}"
            f"{row['encode_ms']:>11.2f}{row['decode_ms']:>11.2f}{row['decode_ms'] / npy['decode_ms']:>14.1f}"
        )
    return rows


def external_images() -> list[np.ndarray]:
    """pydicom's shipped test images (never downloaded), each stretched to [0, 1]."""
    images = []
    for name in EXTERNAL:
        path = get_testdata_file(name, download=False)
        if path is None:
            continue
        pixels = pydicom.dcmread(path).pixel_array.astype(np.float64)
        images.append((pixels - pixels.min()) / max(np.ptp(pixels), 1))
    return images


def run(args: argparse.Namespace, workdir: Path) -> dict:
    """Generate, preprocess and time; return the ratios and the per-format figures."""
    start = time.perf_counter()
    table = write_synthetic(
        args.format, workdir / "root", exams=args.exams, seed=0, height=args.height, width=args.width
    )
    print(
        f"wrote {len(table)} {args.format} files of {args.height}x{args.width} in {time.perf_counter() - start:.1f} s"
    )
    params = PreprocessParams(height=args.cache_height, width=args.cache_width)
    start = time.perf_counter()
    cached = preprocess_table(table, workdir / "root", workdir / "cache", params, progress=False)
    elapsed = time.perf_counter() - start
    print(f"preprocess to {params.height}x{params.width}, 1 process: {elapsed / len(table) * 1e3:.0f} ms/image")
    result: dict = decode_speed(table, cached, workdir / "root", args.repeats)
    synthetic = [load_cached(p) for p in cached["cache_path"]]
    formats = workdir / "formats"
    formats.mkdir()
    result["synthetic"] = format_sizes(
        f"synthetic {args.format} at {params.height}x{params.width}", synthetic, formats, args.repeats
    )
    result["external"] = format_sizes(
        "real external bitstreams (pydicom test files)", external_images(), formats, args.repeats
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", default="rsna", help="synthetic native format")
    parser.add_argument("--exams", type=int, default=8, help="exams (8+ include every transfer syntax)")
    parser.add_argument("--height", type=int, default=2048)
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--cache-height", type=int, default=1520, help="preprocessed (cached) image rows")
    parser.add_argument("--cache-width", type=int, default=912, help="preprocessed (cached) image columns")
    parser.add_argument("--repeats", type=int, default=3, help="timings per file; the best counts")
    parser.add_argument("--workdir", help="where files are written (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.workdir:
        return run(args, Path(args.workdir))
    with tempfile.TemporaryDirectory() as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    main()
