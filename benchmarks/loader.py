"""Training loader throughput at the cache size, per worker count (not a test; never run by ``make test``).

``python benchmarks/loader.py --breasts 24 --workers 1 2 [--device cuda]``

Writes synthetic cached breasts (CC + MLO, uint16 ``.npy`` at ``--height x --width``) and reads them, side by side in
one run, per worker count (best of ``--repeats`` passes, files in the page cache), through:
  bare     a DataLoader of ``np.load`` + ``torch.from_numpy`` per image (same batch size and workers)
  cpu      the pretraining loader (``pretrain.data``) augmenting in its workers (``data.augment_on=loader``)
  device   the same loader reading uint16 and drawing the parameters only (``data.augment_on=device``); the device
           part (convert + affine of each batch, the engine's batch hook) is timed on ``--device`` separately
and prints images/s and the ratios; target: device (loader part) >= 0.8 x bare.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from mvmlm.config import AugmentConfig
from mvmlm.data import schema
from mvmlm.data.cache import from_cache_values, save_cached
from mvmlm.data.device_augment import DeviceAugment
from mvmlm.data.exams import build_breasts
from mvmlm.data.transforms import RandomAffine
from pretrain.data import PretrainDataset, device_hook, make_loader

TARGET = 0.8


def write_breasts(folder: Path, breasts: int, height: int, width: int) -> pd.DataFrame:
    """``breasts`` breasts of two cached views each (smooth texture + noise), as ``load_breasts`` returns them."""
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.random((1, 1, 19, 12), dtype=np.float32))
    smooth = torch.nn.functional.interpolate(coarse, (height, width), mode="bilinear")[0, 0].numpy()
    rows = []
    for i in range(breasts):
        for view in ("CC", "MLO"):
            image = np.clip(smooth * 0.8 + rng.random((height, width), dtype=np.float32) * 0.2, 0, 1)
            rows.append(
                {
                    "dataset": "bench",
                    "patient_id": f"p{i}",
                    "exam_id": "e",
                    "image_id": f"{i}{view}",
                    "path": f"{i}{view}.dcm",
                    "laterality": "L",
                    "view": view,
                    "split": "train",
                    "cache_path": str(save_cached(folder / f"{i}{view}.npy", image)),
                }
            )
    table = build_breasts(schema.conform(pd.DataFrame(rows)))
    table["reports"] = [["report"]] * len(table)
    return table


class BareReads(Dataset):
    """Each breast's two files by ``np.load`` + ``torch.from_numpy``, nothing else."""

    def __init__(self, breasts: pd.DataFrame) -> None:
        self.paths = list(zip(breasts["CC_cache_path"], breasts["MLO_cache_path"], strict=True))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.stack([torch.from_numpy(np.load(path)) for path in self.paths[index]])


def _pass_seconds(loader: Iterable) -> tuple[float, list]:
    start = time.perf_counter()
    batches = list(loader)
    return time.perf_counter() - start, batches


def _loaders(breasts: pd.DataFrame, batch: int, workers: int) -> dict[str, DataLoader]:
    augment = AugmentConfig()
    common = {"train": True, "seed": 0, "num_workers": workers, "text_cache": None}
    return {
        "bare": DataLoader(BareReads(breasts), batch_size=batch, num_workers=workers),
        "cpu": make_loader(PretrainDataset(breasts, 0, train=True, augment=augment), batch, **common),
        "device": make_loader(PretrainDataset(breasts, 0, train=True, device=DeviceAugment(augment)), batch, **common),
    }


def device_part(batches: list[dict], device: torch.device) -> float:
    """Seconds per batch of the engine's batch hook on ``device`` (transfer excluded; best of the batches)."""
    hook = device_hook(DeviceAugment(AugmentConfig()))
    times = []
    for batch in batches:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        hook(moved)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times[1:] or times)  # the first call on a GPU pays for kernel selection


def cpu_transform(batches: list[dict]) -> float:
    """Seconds per batch of what a CPU worker does instead: float conversion + ``RandomAffine`` per image."""
    affine, times = RandomAffine(AugmentConfig()), []
    for batch in batches:
        start = time.perf_counter()
        for values in torch.cat([batch["cc"], batch["mlo"]]):
            affine(torch.from_numpy(from_cache_values(values.numpy())))
        times.append(time.perf_counter() - start)
    return min(times)


def run(breasts: int, height: int, width: int, batch: int, workers: list[int], repeats: int, device: str) -> dict:
    """Write, read and print; returns images/s per (workers, mode) and the device part's seconds per batch."""
    images = 2 * breasts
    with tempfile.TemporaryDirectory() as tmp:
        table = write_breasts(Path(tmp), breasts, height, width)
        print(f"{breasts} breasts ({images} images) of {height}x{width} uint16, batch {batch} breasts")
        rates: dict[tuple[int, str], float] = {}
        last: list = []
        for count in workers:
            loaders = _loaders(table, batch, count)
            best = dict.fromkeys(loaders, float("inf"))
            for _ in range(repeats):  # the modes interleaved, so load changes hit all alike
                for mode, loader in loaders.items():
                    seconds, batches = _pass_seconds(loader)
                    best[mode] = min(best[mode], seconds)
                    last = batches if mode == "device" else last
            rates |= {(count, mode): images / seconds for mode, seconds in best.items()}
        per_batch = device_part(last, torch.device(device))
        on_cpu = cpu_transform(last)
    print(f"\n{'workers':>7}{'bare img/s':>12}{'cpu img/s':>11}{'device img/s':>14}{'cpu/bare':>10}{'device/bare':>13}")
    for count in workers:
        bare, cpu, dev = (rates[(count, mode)] for mode in ("bare", "cpu", "device"))
        print(f"{count:>7}{bare:>12.1f}{cpu:>11.1f}{dev:>14.1f}{cpu / bare:>10.2f}{dev / bare:>13.2f}")
    shown = batch * 2
    print(
        f"\ndevice part on {device}: {per_batch * 1e3:.1f} ms per batch of {shown} images "
        f"({shown / per_batch:.1f} images/s); the CPU transform in one process: {on_cpu * 1e3:.1f} ms "
        f"(device part / CPU transform = {per_batch / on_cpu:.2f})"
    )
    worst = min(rates[(c, "device")] / rates[(c, "bare")] for c in workers)
    print(f"device (loader part) / bare = {worst:.2f} at worst (target >= {TARGET})")
    return {
        "rates": {f"{c}/{m}": r for (c, m), r in rates.items()},
        "device_seconds_per_batch": per_batch,
        "cpu_transform_seconds_per_batch": on_cpu,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--breasts", type=int, default=24)
    parser.add_argument("--height", type=int, default=1520)
    parser.add_argument("--width", type=int, default=912)
    parser.add_argument("--batch-size", type=int, default=4, help="breasts per batch")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="where the device part runs: cpu | cuda")
    args = parser.parse_args(argv)
    return run(args.breasts, args.height, args.width, args.batch_size, args.workers, args.repeats, args.device)


if __name__ == "__main__":
    main()
