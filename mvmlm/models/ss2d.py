"""SS2D, the 2-D selective scan of VMamba (v0, as used by MedMamba), written from the papers.

A feature map is flattened along four paths (row-major, column-major, and both reversed), each path is
scanned by its own selective SSM (one grouped :func:`~mvmlm.models.selective_scan.selective_scan` call for
all four), and the four outputs are folded back onto the grid and summed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvmlm.models.selective_scan import selective_scan

__all__ = ["K_DIRECTIONS", "SS2D", "cross_merge", "cross_scan", "mamba_a_log", "mamba_dt_bias", "no_weight_decay_names"]

K_DIRECTIONS = 4


def cross_scan(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, 4, C, H*W)``: row-major, column-major, and the two reversed."""
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    paths = torch.stack([rows, cols], dim=1)
    return torch.cat([paths, paths.flip(-1)], dim=1)


def cross_merge(ys: Tensor, height: int, width: int) -> Tensor:
    """Adjoint of :func:`cross_scan`: ``(B, 4, C, H*W)`` -> ``(B, C, H, W)``, the four paths summed on the grid."""
    b, k, c, length = ys.shape
    if k != K_DIRECTIONS or length != height * width:
        raise ValueError(f"cross_merge: expected (B, 4, C, {height}*{width}), got {tuple(ys.shape)}")
    ys = ys[:, :2] + ys[:, 2:].flip(-1)
    return ys[:, 0].view(b, c, height, width) + ys[:, 1].view(b, c, width, height).transpose(2, 3)


def _no_weight_decay(param: nn.Parameter) -> nn.Parameter:
    param._no_weight_decay = True
    return param


def no_weight_decay_names(module: nn.Module) -> set[str]:
    """Names of parameters tagged ``_no_weight_decay`` (the SSM's ``A_logs`` and ``Ds``); give them decay 0."""
    return {name for name, p in module.named_parameters() if getattr(p, "_no_weight_decay", False)}


def mamba_dt_bias(shape: tuple[int, ...], dt_min: float, dt_max: float, dt_init_floor: float) -> Tensor:
    """Mamba's dt bias init: softplus^-1 of dt = exp(U[ln dt_min, ln dt_max]) clamped at ``dt_init_floor``."""
    dt = torch.exp(torch.empty(shape).uniform_(math.log(dt_min), math.log(dt_max))).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse softplus


def mamba_a_log(rows: int, d_state: int) -> Tensor:
    """Mamba's (S4D-real) A init: ``A_log[r] = log(1..d_state)`` for each of ``rows`` channels."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(rows, 1)


class SS2D(nn.Module):
    """2-D selective scan on channels-last maps ``(B, H, W, C)`` -> same shape.

    in_proj (C -> 2*Di, split into x and gate z) -> depthwise conv + SiLU on x -> cross-scan -> per-direction
    projections to dt (rank R), B and C (state N) -> selective scan (softplus dt, fp32) -> cross-merge ->
    LayerNorm -> * SiLU(z) -> out_proj (Di -> C). Di = ssm_ratio * C, R = ceil(C / 16).

    Initialisation as Mamba: dt_proj weight ~ U(+-R^-0.5), dt bias = softplus^-1(dt) with
    dt = exp(U[ln dt_min, ln dt_max]) clamped at dt_init_floor, A_log = log(1..N) per channel, D = 1.

    Args:
        d_model: channels C.
        d_state: SSM state size N.
        ssm_ratio: inner expansion Di / C.
        d_conv: depthwise conv kernel size (odd).
        conv_bias: bias on the depthwise conv.
        dropout: dropout after out_proj.
        scan_backend: ``auto`` / ``cuda`` / ``torch`` (see :mod:`mvmlm.models.selective_scan`); None = auto/env.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        d_conv: int = 3,
        conv_bias: bool = True,
        dropout: float = 0.0,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan_backend: str | None = None,
    ) -> None:
        super().__init__()
        if d_conv % 2 == 0:
            raise ValueError(f"SS2D: d_conv must be odd to keep the map size, got {d_conv}")
        d_inner = int(ssm_ratio * d_model)
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = math.ceil(d_model / 16)
        self.scan_backend = scan_backend
        k, r = K_DIRECTIONS, self.dt_rank
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=d_conv // 2, groups=d_inner, bias=conv_bias)
        bound = d_inner**-0.5  # nn.Linear's default init, one (R + 2N) x Di projection per direction
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * d_state, d_inner).uniform_(-bound, bound))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, r).uniform_(-(r**-0.5), r**-0.5))
        self.dt_projs_bias = nn.Parameter(mamba_dt_bias((k, d_inner), dt_min, dt_max, dt_init_floor))
        self.A_logs = _no_weight_decay(nn.Parameter(mamba_a_log(k * d_inner, d_state)))
        self.Ds = _no_weight_decay(nn.Parameter(torch.ones(k * d_inner)))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def scan(self, x: Tensor) -> Tensor:
        """The four-direction selective scan: ``(B, Di, H, W)`` -> ``(B, Di, H, W)``, computed in fp32."""
        b, d, h, w = x.shape
        k, n, length = K_DIRECTIONS, self.d_state, h * w
        xs = cross_scan(x).float()
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight.float())
        dts, bs, cs = torch.split(x_dbl, [self.dt_rank, n, n], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight.float())
        ys = selective_scan(
            xs.reshape(b, k * d, length),
            dts.reshape(b, k * d, length),
            -torch.exp(self.A_logs.float()),
            bs,
            cs,
            D=self.Ds.float(),
            delta_bias=self.dt_projs_bias.float().view(-1),
            delta_softplus=True,
            backend=self.scan_backend,
        )
        return cross_merge(ys.view(b, k, d, length), h, w)

    def forward(self, x: Tensor) -> Tensor:
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))
        y = self.scan(x).permute(0, 2, 3, 1).to(z.dtype)
        y = self.out_norm(y) * F.silu(z)
        return self.dropout(self.out_proj(y))
