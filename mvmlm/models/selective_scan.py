"""Selective scan (Mamba S6) with mamba-ssm's ``selective_scan_fn`` signature and two backends.

Math (ZOH for A, Euler for B), per batch b, channel d, state n, position l::

    dt = softplus(delta + delta_bias)          (softplus only if delta_softplus)
    h_l = exp(dt_l * A) * h_{l-1} + dt_l * B_l * u_l,   h_{-1} = 0
    y_l = sum_n C_l * h_l + D * u_l;   out = y * silu(z) if z is given

Shapes: u, delta, z ``(b, d, l)``; A ``(d, n)``; B, C ``(d, n)`` (constant), ``(b, n, l)`` or grouped
``(b, g, n, l)`` (channel d uses group ``d // (d_model / g)``); D, delta_bias ``(d,)``. Returns ``out``
``(b, d, l)`` in u's dtype, and the last state ``(b, d, n)`` (fp32) if ``return_last_state``.

Backends: ``cuda`` = mamba-ssm's kernel (``pip install -e ".[cuda]"``), used only for CUDA tensors;
``torch`` = a chunk-streamed scan in fp32 with a hand-written backward that recomputes each chunk from
the saved chunk-boundary states, so memory is O(chunk) rather than O(l) in training too.
``MVMLM_SCAN_BACKEND=auto|cuda|torch`` or the ``backend`` argument (which wins unless it is ``auto``)
forces one; ``auto`` takes the kernel when it imports and the tensors are on CUDA.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "cuda_kernel_available",
    "resolve_backend",
    "selective_scan",
    "selective_scan_reference",
    "selective_scan_torch",
]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "cuda", "torch")
ENV_VAR = "MVMLM_SCAN_BACKEND"
CHUNK = 256  # positions discretised at once by the torch backend; cache-sized chunks win on CPU
_LOGGED: set[str] = set()


@functools.cache
def _kernel() -> tuple[Callable | None, str]:
    """(mamba-ssm's selective_scan_fn, "") when its compiled extension really imports, else (None, why)."""
    try:
        importlib.import_module("selective_scan_cuda")  # mamba-ssm HEAD imports even without it
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # ImportError, undefined symbols, missing triton: all mean "no kernel"
        return None, f"{type(exc).__name__}: {exc}"
    return selective_scan_fn, ""


def cuda_kernel_available() -> bool:
    """True if mamba-ssm and its compiled ``selective_scan_cuda`` extension import."""
    return _kernel()[0] is not None


def resolve_backend(u: Tensor, backend: str | None = None) -> str:
    """The backend (``cuda`` or ``torch``) a call on ``u`` uses; logs the choice once per backend.

    Raises:
        ValueError: unknown backend name (argument or ``MVMLM_SCAN_BACKEND``).
        RuntimeError: ``cuda`` requested but mamba-ssm's kernel is missing or ``u`` is not on CUDA.
    """
    name, source = (backend or "auto").strip().lower(), "backend argument"
    if name == "auto" and os.environ.get(ENV_VAR):
        name, source = os.environ[ENV_VAR].strip().lower(), f"environment variable {ENV_VAR}"
    if name not in BACKENDS:
        raise ValueError(f"selective scan backend {name!r} from the {source}; expected one of {', '.join(BACKENDS)}")
    kernel, why = _kernel()
    if name == "cuda":
        if kernel is None:
            raise RuntimeError(
                f"selective scan backend 'cuda' requested ({source}) but mamba-ssm's CUDA kernel is not "
                f"importable ({why}); install it with `pip install -e '.[cuda]'` or use backend 'torch'/'auto'"
            )
        if not u.is_cuda:
            raise RuntimeError(f"selective scan backend 'cuda' requested ({source}) for tensors on {u.device}")
        chosen, reason = "cuda", f"forced by the {source}"
    elif name == "torch":
        chosen, reason = "torch", f"forced by the {source}"
    elif kernel is not None and u.is_cuda and not torch.compiler.is_compiling():
        chosen, reason = "cuda", "auto: mamba-ssm kernel, CUDA tensors"
    else:
        chosen = "torch"
        reason = "auto: " + (f"no mamba-ssm kernel ({why})" if kernel is None else f"tensors on {u.device}")
    if chosen not in _LOGGED:
        _LOGGED.add(chosen)
        logger.info("selective scan backend: %s (%s)", chosen, reason)
    return chosen


def _check(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D, z, delta_bias) -> int:
    """Validate shapes as mamba-ssm does; return the number of B/C groups."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, length), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    for name, t in (("delta", delta), ("z", z)):
        if t is not None and t.shape != u.shape:
            raise ValueError(f"selective_scan: {name} shape {tuple(t.shape)} != u shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (dim={dim}, dstate), got {tuple(A.shape)}")
    dstate, groups = A.shape[1], set()
    for name, t in (("B", B), ("C", C)):
        expected = {2: (dim, dstate), 3: (batch, dstate, length)}.get(t.dim())
        if t.dim() == 4:
            expected = (batch, t.shape[1], dstate, length)
            groups.add(t.shape[1])
        if t.shape != expected:
            raise ValueError(
                f"selective_scan: {name} must be (dim, dstate), (batch, dstate, length) or (batch, groups, dstate, "
                f"length) with dim={dim}, dstate={dstate}, batch={batch}, length={length}; got {tuple(t.shape)}"
            )
        if t.dim() == 3:
            groups.add(1)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"selective_scan: {name} must be (dim={dim},), got {tuple(t.shape)}")
    if len(groups) > 1:
        raise ValueError(f"selective_scan: B and C have different numbers of groups {sorted(groups)}")
    g = groups.pop() if groups else 1
    if dim % g:
        raise ValueError(f"selective_scan: dim {dim} is not divisible by the number of groups {g}")
    return g


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """mamba-ssm's ``selective_scan_fn`` on the chosen backend (see the module docstring)."""
    _check(u, delta, A, B, C, D, z, delta_bias)
    if resolve_backend(u, backend) == "torch":
        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    kernel = _kernel()[0]
    dtype = u.dtype
    return kernel(
        u.contiguous(),
        delta.to(dtype).contiguous(),
        A.float().contiguous(),
        (B.to(dtype) if B.dim() > 2 else B.float()).contiguous(),
        (C.to(dtype) if C.dim() > 2 else C.float()).contiguous(),
        None if D is None else D.float().contiguous(),
        None if z is None else z.to(dtype).contiguous(),
        None if delta_bias is None else delta_bias.float().contiguous(),
        delta_softplus,
        return_last_state,
    )


def selective_scan_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk_size: int = CHUNK,
) -> Tensor | tuple[Tensor, Tensor]:
    """The pure-PyTorch backend; differentiable in every tensor argument."""
    groups = _check(u, delta, A, B, C, D, z, delta_bias)
    if A.is_complex():
        raise ValueError("selective_scan: complex A needs the mamba-ssm CUDA kernel; the torch backend is real-only")
    if chunk_size < 1:
        raise ValueError(f"selective_scan: chunk_size must be >= 1, got {chunk_size}")
    out, last = _TorchScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, groups, chunk_size)
    return (out, last) if return_last_state else out


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    dtypes = [t.dtype for t in tensors if t is not None]
    return functools.reduce(torch.promote_types, dtypes, torch.float32)


class _Layout:
    """Inputs rearranged time-first, channels split into groups: ``(l, b, g, d/g[, n])``, in the compute dtype."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, softplus: bool, groups: int):
        self.batch, self.dim, self.length = u.shape
        self.groups, self.dstate = groups, A.shape[1]
        self.dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
        self.softplus = softplus
        self.u, self.delta, self.z = (None if t is None else self._seq(t) for t in (u, delta, z))
        self.A = A.to(self.dtype).view(groups, -1, self.dstate)
        self.B, self.C = self._bc(B), self._bc(C)
        self.D = None if D is None else D.to(self.dtype).view(groups, -1)
        self.bias = None if delta_bias is None else delta_bias.to(self.dtype).view(groups, -1)

    def _seq(self, t: Tensor) -> Tensor:  # (b, d, l) -> (l, b, g, d/g), a view
        return t.permute(2, 0, 1).unflatten(2, (self.groups, -1))

    def _bc(self, t: Tensor) -> Tensor:
        if t.dim() == 2:  # constant (d, n) -> (g, d/g, n)
            return t.to(self.dtype).view(self.groups, -1, self.dstate)
        if t.dim() == 3:
            t = t.unsqueeze(1)
        return t.permute(3, 0, 1, 2).unsqueeze(3)  # (b, g, n, l) -> (l, b, g, 1, n), a view

    def chunk(self, t: Tensor | None, s: int, e: int) -> Tensor | None:
        """Positions [s, e) of a time-first tensor (constant B/C pass through) as contiguous compute dtype."""
        if t is None or t.dim() == 3:
            return t
        return t[s:e].to(self.dtype).contiguous()

    def discretise(self, s: int, e: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(delta + bias, dt, u, Abar, Bbar*u) on chunk [s, e); the last two are ``(t, b, g, d/g, n)``."""
        raw = self.chunk(self.delta, s, e)
        if self.bias is not None:
            raw = raw + self.bias
        dt = F.softplus(raw) if self.softplus else raw
        u = self.chunk(self.u, s, e)
        a = (dt.unsqueeze(-1) * self.A).exp_()
        bu = (dt * u).unsqueeze(-1) * self.chunk(self.B, s, e)
        return raw, dt, u, a, bu


def _recur(a: Tensor, bu: Tensor, h: Tensor) -> Tensor:
    """h_t = a_t * h_{t-1} + bu_t along dim 0, written into ``bu`` (which then holds the states)."""
    for a_t, b_t in zip(a.unbind(0), bu.unbind(0), strict=True):
        h = b_t.addcmul_(a_t, h)
    return bu


def _readout(states: Tensor, C: Tensor) -> Tensor:
    """sum_n C * h -> (t, b, g, d/g)."""
    if C.dim() == 3:
        return (states * C).sum(-1)
    return (states @ C.transpose(-1, -2)).squeeze(-1)


class _TorchScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, groups, chunk):
        ctx.set_materialize_grads(False)
        with torch.autocast(u.device.type, enabled=False):
            lay = _Layout(u, delta, A, B, C, D, z, delta_bias, softplus, groups)
            h = u.new_zeros((lay.batch, groups, lay.dim // groups, lay.dstate), dtype=lay.dtype)
            out = u.new_empty((lay.length, lay.batch, groups, lay.dim // groups))
            boundaries = []
            for s in range(0, lay.length, chunk):
                e = min(s + chunk, lay.length)
                boundaries.append(h)
                _, _, u_c, a, bu = lay.discretise(s, e)
                states = _recur(a, bu, h)
                h = states[-1].clone()
                y = _readout(states, lay.chunk(lay.C, s, e))
                if lay.D is not None:
                    y = y + lay.D * u_c
                if z is not None:
                    y = y * F.silu(lay.chunk(lay.z, s, e))
                out[s:e] = y
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, torch.stack(boundaries))
        ctx.softplus, ctx.groups, ctx.chunk = softplus, groups, chunk
        out = out.flatten(2).permute(1, 2, 0)
        return out, h.flatten(1, 2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out, g_last):
        u, delta, A, B, C, D, z, delta_bias, boundaries = ctx.saved_tensors
        with torch.autocast(u.device.type, enabled=False):
            grads = _backward(ctx, u, delta, A, B, C, D, z, delta_bias, boundaries, g_out, g_last)
        return (*grads, None, None, None)


def _backward(ctx, u, delta, A, B, C, D, z, delta_bias, boundaries, g_out, g_last):
    """Reverse pass chunk by chunk: recompute the chunk's states from its saved start state, then the adjoint."""
    lay = _Layout(u, delta, A, B, C, D, z, delta_bias, ctx.softplus, ctx.groups)
    shape = (lay.length, lay.batch, lay.groups, lay.dim // lay.groups)
    new = functools.partial(torch.empty, dtype=lay.dtype, device=u.device)
    gu, gdelta, gz = new(shape), new(shape), (new(shape) if z is not None else None)
    gA = torch.zeros_like(lay.A)
    gB, gC = (new(t.shape).zero_() for t in (lay.B, lay.C))
    gD = torch.zeros_like(lay.D) if D is not None else None
    gbias = torch.zeros_like(lay.bias) if delta_bias is not None else None
    g_out = None if g_out is None else g_out.permute(2, 0, 1).unflatten(2, (lay.groups, -1))
    carry = torch.zeros_like(boundaries[0]) if g_last is None else g_last.to(lay.dtype).view_as(boundaries[0])
    starts = list(range(0, lay.length, ctx.chunk))
    for i in reversed(range(len(starts))):
        s, e = starts[i], min(starts[i] + ctx.chunk, lay.length)
        raw, dt, u_c, a, bu = lay.discretise(s, e)
        states = _recur(a, bu, boundaries[i])
        B_c, C_c = lay.chunk(lay.B, s, e), lay.chunk(lay.C, s, e)
        gy = torch.zeros_like(u_c) if g_out is None else lay.chunk(g_out, s, e)
        if z is not None:
            y = _readout(states, C_c) + (lay.D * u_c if D is not None else 0)
            z_c = lay.chunk(lay.z, s, e)
            sig = torch.sigmoid(z_c)
            gz[s:e] = gy * y * sig * (1 + z_c * (1 - sig))
            gy = gy * z_c * sig
        # g_t = dL/dh_t = C_t gy_t + Abar_{t+1} g_{t+1}; the chunk's last step gets the carry from later chunks
        g = gy.unsqueeze(-1) * C_c
        g[-1] += carry
        g_steps, a_steps = g.unbind(0), a.unbind(0)
        for t in range(e - s - 2, -1, -1):
            g_steps[t].addcmul_(a_steps[t + 1], g_steps[t + 1])
        carry = a[0] * g[0]
        g_log_a = a.mul_(g)  # dL/d(dt * A) = g_t * Abar_t * h_{t-1}, built in place of Abar
        g_log_a[1:].mul_(states[:-1])
        g_log_a[0].mul_(boundaries[i])
        gA += (g_log_a * dt.unsqueeze(-1)).sum((0, 1))
        g_bu = _readout(g, B_c)  # sum_n g * B
        g_dt = (g_log_a * lay.A).sum(-1) + g_bu * u_c
        gu[s:e] = g_bu * dt + (lay.D * gy if D is not None else 0)
        dtu = dt * u_c
        if B_c.dim() == 3:  # constant B: sum over positions and batch
            gB += (g * dtu.unsqueeze(-1)).sum((0, 1))
        else:  # variable B: sum over the group's channels
            gB[s:e] = dtu.unsqueeze(-2) @ g
        if C_c.dim() == 3:
            gC += (states * gy.unsqueeze(-1)).sum((0, 1))
        else:
            gC[s:e] = gy.unsqueeze(-2) @ states
        if D is not None:
            gD += (gy * u_c).sum((0, 1))
        gdelta[s:e] = g_dt * torch.sigmoid(raw) if ctx.softplus else g_dt
        if gbias is not None:
            gbias += gdelta[s:e].sum((0, 1))
    return (
        _from_seq(gu, u),
        _from_seq(gdelta, delta),
        gA.view_as(A).to(A.dtype),
        _bc_grad(gB, B),
        _bc_grad(gC, C),
        None if D is None else gD.view_as(D).to(D.dtype),
        None if z is None else _from_seq(gz, z),
        None if delta_bias is None else gbias.view_as(delta_bias).to(delta_bias.dtype),
    )


def _from_seq(grad: Tensor, like: Tensor) -> Tensor:
    """(l, b, g, d/g) -> the caller's (b, d, l) and dtype."""
    return grad.flatten(2).permute(1, 2, 0).to(like.dtype)


def _bc_grad(grad: Tensor, like: Tensor) -> Tensor:
    """Gradient in the layout of B/C back to the caller's shape and dtype."""
    if like.dim() == 2:
        return grad.view_as(like).to(like.dtype)
    grad = grad.squeeze(3).permute(1, 2, 3, 0)  # (l, b, g, 1, n) -> (b, g, n, l)
    return (grad.squeeze(1) if like.dim() == 3 else grad).to(like.dtype)


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Naive step-by-step scan straight from the formula (autograd for gradients); for tests and benchmarks."""
    groups = _check(u, delta, A, B, C, D, z, delta_bias)
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    dim = u.shape[1]
    x, dt = u.to(dtype), delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)

    def per_channel(t: Tensor) -> Tensor:  # (d, n) stays; (b, [g,] n, l) -> (b, d, n, l)
        t = t.to(dtype)
        if t.dim() == 3:
            t = t.unsqueeze(1)
        return t if t.dim() == 2 else t.repeat_interleave(dim // groups, dim=1)

    Bx, Cx = per_channel(B), per_channel(C)
    dA = torch.exp(torch.einsum("bdl,dn->bdln", dt, A.to(dtype)))
    dBu = torch.einsum("bdl,dn->bdln", dt * x, Bx) if Bx.dim() == 2 else torch.einsum("bdl,bdnl->bdln", dt * x, Bx)
    h = x.new_zeros((u.shape[0], dim, A.shape[1]))
    ys = []
    for i in range(u.shape[2]):
        h = dA[:, :, i] * h + dBu[:, :, i]
        c = Cx if Cx.dim() == 2 else Cx[:, :, :, i]
        ys.append((h * c).sum(-1))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + D.to(dtype)[:, None] * x
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(u.dtype)
    return (y, h) if return_last_state else y
