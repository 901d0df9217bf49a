"""Data pipeline speed on one set of synthetic DICOM files (not a test; never run by ``make test``).

``python benchmarks/data_pipeline.py --format rsna --exams 8 --height 2048 --width 1536``

Prints, per transfer syntax and in total (best of ``--repeats`` per file, files already in the page cache):
  (a) ``read_mammogram`` time / bare ``pydicom.dcmread(p).pixel_array`` time       target <= 1.3
  (b) cache read (``load_cached``) time / bare DICOM decode time                   target <= 0.05
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pydicom

from mvmlm.data.dicom import read_mammogram
from mvmlm.data.preprocess import PreprocessParams, load_cached, preprocess_table
from mvmlm.data.synthetic import write_synthetic

TARGETS = {"a": 1.3, "b": 0.05}


def _best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _syntax(path: Path) -> str:
    return pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.name


def run(fmt: str, exams: int, height: int, width: int, repeats: int, workdir: Path) -> dict[str, float]:
    """Generate, preprocess and time; return the two ratios."""
    start = time.perf_counter()
    table = write_synthetic(fmt, workdir / "root", exams=exams, seed=0, height=height, width=width)
    print(f"wrote {len(table)} {fmt} files of {height}x{width} in {time.perf_counter() - start:.1f} s")
    params = PreprocessParams()
    start = time.perf_counter()
    cached = preprocess_table(table, workdir / "root", workdir / "cache", params, progress=False)
    elapsed = time.perf_counter() - start
    print(f"preprocess to {params.height}x{params.width}, 1 process: {elapsed / len(table) * 1e3:.0f} ms/image")
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0])
    for path, cache_path in zip(table["path"], cached["cache_path"], strict=True):
        source = workdir / "root" / path
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


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", default="rsna", help="synthetic native format")
    parser.add_argument("--exams", type=int, default=8, help="exams (8+ include every transfer syntax)")
    parser.add_argument("--height", type=int, default=2048)
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--repeats", type=int, default=3, help="timings per file; the best counts")
    parser.add_argument("--workdir", help="where files are written (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.workdir:
        return run(args.format, args.exams, args.height, args.width, args.repeats, Path(args.workdir))
    with tempfile.TemporaryDirectory() as tmp:
        return run(args.format, args.exams, args.height, args.width, args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
