"""Image encoder throughput: forward and forward+backward images/s for every registry entry, and the share of the
hybrid CNN-VSSM encoder's time spent in the selective scan.

    python benchmarks/encoders.py                          # 512x512, batch 2, CPU (the issue's setting)
    python benchmarks/encoders.py --device cuda --size 1024 --batch 8 --names resnet34 hybrid_resnet_vssm

Encoders are built with random weights (``pretrained`` off) and one input channel. The scan share comes from
wrapping ``selective_scan`` where the model code calls it: forward time around the call, backward time between the
hooks of the scan's autograd node.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch

from mvmlm.models import selective_scan as scan_module
from mvmlm.models.image_encoders import ImageEncoder, create_image_encoder, image_encoder_names

HYBRID = "hybrid_resnet_vssm"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ScanClock:
    """Seconds spent inside ``selective_scan`` (forward calls and the backward of their autograd nodes)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self._started = 0.0

    def start(self, *_: object) -> None:
        _sync(self.device)
        self._started = time.perf_counter()

    def stop(self, *_: object) -> None:
        _sync(self.device)
        self.seconds += time.perf_counter() - self._started

    def wrap(self, scan: Callable) -> Callable:
        def timed(*args, **kwargs):
            self.start()
            out = scan(*args, **kwargs)
            self.stop()
            node = (out[0] if isinstance(out, tuple) else out).grad_fn
            if node is not None:
                node.register_prehook(self.start)
                node.register_hook(self.stop)
            return out

        return timed


@contextlib.contextmanager
def timing_scan(clock: ScanClock) -> Iterator[None]:
    """Replace ``selective_scan`` in every loaded mvmlm module that imported it, for the duration."""
    original = scan_module.selective_scan
    users = [
        m for n, m in list(sys.modules.items()) if n.startswith("mvmlm.") and vars(m).get("selective_scan") is original
    ]
    for module in users:
        module.selective_scan = clock.wrap(original)
    try:
        yield
    finally:
        for module in users:
            module.selective_scan = original


def _seconds_per_step(step: Callable[[], None], device: torch.device, repeats: int) -> float:
    step()  # warm-up (allocator, kernels, lazy init)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _steps(encoder: ImageEncoder, images: torch.Tensor) -> tuple[Callable[[], None], Callable[[], None]]:
    def forward() -> None:
        encoder.eval()
        with torch.no_grad():
            encoder(images)

    def forward_backward() -> None:
        encoder.train()
        encoder.zero_grad(set_to_none=True)
        encoder(images).float().square().mean().backward()

    return forward, forward_backward


def _scan_share(step: Callable[[], None], device: torch.device) -> float:
    """Fraction of one warmed-up ``step`` spent in the selective scan."""
    clock = ScanClock(device)
    with timing_scan(clock):
        step()
        clock.seconds = 0.0
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        return clock.seconds / (time.perf_counter() - start)


def benchmark(name: str, args: argparse.Namespace) -> dict[str, float]:
    """Images/s of ``name`` (and, for the hybrid, the scan's share of the time)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    encoder = create_image_encoder(name, in_chans=1).to(device)
    images = torch.randn(args.batch, 1, args.size, args.size, device=device)
    forward, forward_backward = _steps(encoder, images)
    row = {
        "fwd_img_s": args.batch / _seconds_per_step(forward, device, args.repeats),
        "fwd_bwd_img_s": args.batch / _seconds_per_step(forward_backward, device, args.repeats),
    }
    if name == HYBRID:
        row["scan_share_fwd"] = _scan_share(forward, device)
        row["scan_share_fwd_bwd"] = _scan_share(forward_backward, device)
    return row


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, default=512, help="square input size in pixels")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per measurement (median reported)")
    parser.add_argument("--names", nargs="+", default=None, help="registry entries (default: all)")
    args = parser.parse_args(argv)
    names = args.names or [n for n in image_encoder_names() if not n.endswith("<name>")]
    print(f"device={args.device} size={args.size} batch={args.batch} threads={torch.get_num_threads()}")
    print(f"{'encoder':<22}{'fwd img/s':>12}{'fwd+bwd img/s':>16}{'scan share fwd':>16}{'scan share f+b':>16}")
    results = {}
    for name in names:
        row = results[name] = benchmark(name, args)
        shares = [f"{row[k]:>16.1%}" if k in row else f"{'-':>16}" for k in ("scan_share_fwd", "scan_share_fwd_bwd")]
        print(f"{name:<22}{row['fwd_img_s']:>12.2f}{row['fwd_bwd_img_s']:>16.2f}{''.join(shares)}", flush=True)
    return results


if __name__ == "__main__":
    main()
