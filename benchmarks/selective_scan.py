"""Selective scan backends vs the naive reference loop: time, peak memory and max error, side by side.

    python benchmarks/selective_scan.py                 # CPU: forward at l=4096, forward+backward at l=1024
    python benchmarks/selective_scan.py --device cuda   # adds mamba-ssm's kernel when it imports

Inputs as an SS2D call would pass them: variable B/C, D, z, delta_bias, softplus; fp32. Peak memory: bytes of
tensors allocated during the call (CUDA: the caching allocator's peak; CPU: storages tracked by a dispatch mode).
Targets (issue 4): the torch backend >= 2x faster than the reference forward, >= 50x faster forward+backward (the
reference's backward is O(l^2): every per-step slice allocates a full-size gradient).
"""

from __future__ import annotations

import argparse
import time
import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mvmlm.models.selective_scan import cuda_kernel_available, selective_scan, selective_scan_reference

TARGETS = {"forward": 2.0, "forward+backward": 50.0}


def make_inputs(batch: int, dim: int, dstate: int, length: int, device: str, grad: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = dict(
        u=(batch, dim, length),
        delta=(batch, dim, length),
        A=(dim, dstate),
        B=(batch, dstate, length),
        C=(batch, dstate, length),
        D=(dim,),
        z=(batch, dim, length),
        delta_bias=(dim,),
    )
    inputs = {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}
    inputs["delta"] = 0.5 * torch.rand(shapes["delta"], generator=gen)
    inputs["A"] = -0.5 * torch.rand(shapes["A"], generator=gen)
    inputs["delta_bias"] = 0.5 * torch.rand(shapes["delta_bias"], generator=gen)
    return {name: t.to(device).requires_grad_(grad) for name, t in inputs.items()}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def seconds(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Best wall time of ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


class _LiveBytes(TorchDispatchMode):
    """Tracks bytes of tensor storages created by ops while active (freed ones leave via weakref finalizers)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.storages: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.live -= self.storages.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size and key not in self.storages:  # views and in-place results reuse a storage
                self.storages[key] = size
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key)
        return out


def peak_mib(fn: Callable[[], object], device: str) -> float:
    """Peak bytes of tensors ``fn`` allocates on top of what was live before, in MiB."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with _LiveBytes() as tracker:
        fn()
    return tracker.peak / 2**20


def run_case(mode: str, inputs: dict[str, torch.Tensor], backends: list[str], device: str, repeats: int) -> list[str]:
    """Time, memory and error of every backend against the reference for one case; the report lines.

    Errors: ``max|got - ref|`` for the output, and per gradient ``max|got - ref| / max|ref|`` (the worst one shown).
    """
    grad = mode == "forward+backward"
    names = list(inputs)
    cotangent = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(1)).to(inputs["u"].device)

    def call(fn: Callable, **kw) -> Callable[[], tuple[torch.Tensor, ...]]:
        def go() -> tuple[torch.Tensor, ...]:
            with torch.set_grad_enabled(grad):
                out = fn(**inputs, delta_softplus=True, **kw)
                if not grad:
                    return (out,)
                return (out, *torch.autograd.grad(out, [inputs[n] for n in names], cotangent))

        return go

    ref = call(selective_scan_reference)
    _sync(device)
    start = time.perf_counter()
    expected = ref()
    _sync(device)
    ref_time = time.perf_counter() - start
    lines = [f"  reference loop   {ref_time * 1e3:10.1f} ms   peak {peak_mib(ref, device):8.1f} MiB"]
    for backend in backends:
        fn = call(selective_scan, backend=backend)
        got = fn()
        error = f"max|err| {(got[0] - expected[0]).abs().max().item():.1e}"
        if grad:
            pairs = zip(names, got[1:], expected[1:], strict=True)
            scaled = {n: ((g - e).abs().max() / e.abs().max()).item() for n, g, e in pairs}
            worst = max(scaled, key=scaled.get)
            error += f", gradients <= {scaled[worst]:.1e} of max|ref| (worst: {worst})"
        took = seconds(fn, device, repeats)
        ratio = ref_time / took
        verdict = "meets" if ratio >= TARGETS[mode] else "MISSES"
        lines.append(
            f"  {backend:<16} {took * 1e3:10.1f} ms   peak {peak_mib(fn, device):8.1f} MiB   {ratio:6.1f}x faster "
            f"({verdict} target {TARGETS[mode]:.0f}x)   {error}"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--dstate", type=int, default=16)
    parser.add_argument("--length", type=int, default=4096, help="sequence length of the forward case")
    parser.add_argument("--grad-length", type=int, default=1024, help="sequence length of the forward+backward case")
    parser.add_argument("--repeats", type=int, default=5, help="runs per backend (best is reported)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible")
    backends = ["torch"] + (["cuda"] if args.device == "cuda" and cuda_kernel_available() else [])
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads; backends: {', '.join(backends)}"
    )
    for mode, length in (("forward", args.length), ("forward+backward", args.grad_length)):
        inputs = make_inputs(args.batch, args.dim, args.dstate, length, args.device, grad=mode != "forward")
        print(f"{mode} (b={args.batch}, d={args.dim}, n={args.dstate}, l={length}):")
        for line in run_case(mode, inputs, backends, args.device, args.repeats):
            print(line)


if __name__ == "__main__":
    main()
