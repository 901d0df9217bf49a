"""The building blocks of the MambaVision-style hybrid backbone (:mod:`mvmlm.models.mambavision`): window
partitioning, the residual conv block, the Mamba mixer (MambaVision's split: an SSM branch and a plain conv branch,
concatenated), windowed self-attention, the hybrid block (mixer or attention, optionally SeqMoE-gated) and its stage,
and the conv stage. Written from the papers' descriptions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mvmlm.models.selective_scan import selective_scan
from mvmlm.models.ss2d import mamba_a_log, mamba_dt_bias
from mvmlm.models.vssm import SeqMoEGate

__all__ = [
    "ConvBlock",
    "ConvStage",
    "MambaMixer",
    "WindowAttention",
    "HybridBlock",
    "HybridStage",
    "window_partition",
    "window_reverse",
]


def window_partition(x: Tensor, window: tuple[int, int]) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """``(B, H, W, C)`` -> window tokens ``(B * nW, wh * ww, C)``, a validity mask ``(B * nW, wh * ww)`` (False on
    zero padding) and the padded size ``(Hp, Wp)``."""
    b, h, w, c = x.shape
    wh, ww = window
    pad_h, pad_w = -h % wh, -w % ww
    valid = x.new_ones(b, h, w, 1, dtype=torch.bool)
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        valid = F.pad(valid, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w

    def split(t: Tensor) -> Tensor:
        t = t.view(b, hp // wh, wh, wp // ww, ww, t.shape[-1]).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(-1, wh * ww, t.shape[-1])

    return split(x), split(valid)[..., 0], (hp, wp)


def window_reverse(tokens: Tensor, window: tuple[int, int], padded: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, wh * ww, C)`` -> ``(B, H, W, C)`` without the padding."""
    (wh, ww), (hp, wp), (h, w) = window, padded, size
    c = tokens.shape[-1]
    x = tokens.view(-1, hp // wh, wp // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, c)
    return x[:, :h, :w]


class ConvBlock(nn.Module):
    """Residual ``x + BN(Conv3x3(GELU_tanh(BN(Conv3x3(x)))))`` on ``(B, C, H, W)``."""

    def __init__(self, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1),
            nn.BatchNorm2d(dim),
            nn.GELU(approximate="tanh"),
            nn.Conv2d(dim, dim, 3, padding=1),
            nn.BatchNorm2d(dim),
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.body(x))


class MambaMixer(nn.Module):
    """MambaVision's token mixer on ``(B, L, C)``: an SSM half and a conv-only half, concatenated.

    Args:
        dim: channels C.
        d_state: SSM state size N.
        d_conv: depthwise conv1d kernel (odd; 'same' padding, so non-causal).
        expand: inner width Di = expand * C, split into two halves of Di / 2.
        scan_backend: ``auto`` / ``cuda`` / ``torch`` (:mod:`mvmlm.models.selective_scan`).
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 8,
        d_conv: int = 3,
        expand: float = 1.0,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan_backend: str | None = None,
    ) -> None:
        super().__init__()
        d_inner = int(expand * dim)
        if d_inner % 2 or d_conv % 2 == 0:
            raise ValueError(f"MambaMixer: need an even inner width and an odd conv, got {d_inner} and {d_conv}")
        half = d_inner // 2
        self.d_state, self.dt_rank, self.scan_backend = d_state, math.ceil(dim / 16), scan_backend
        self.in_proj = nn.Linear(dim, d_inner, bias=False)
        self.conv_x = nn.Conv1d(half, half, d_conv, padding=d_conv // 2, groups=half, bias=False)
        self.conv_z = nn.Conv1d(half, half, d_conv, padding=d_conv // 2, groups=half, bias=False)
        self.x_proj = nn.Linear(half, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, half)  # Mamba's init (as SS2D): weight U(+-R^-0.5), bias softplus^-1
        self.dt_proj._keep_init = True
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        with torch.no_grad():
            self.dt_proj.bias.copy_(mamba_dt_bias((half,), dt_min, dt_max, dt_init_floor))
        self.A_log = nn.Parameter(mamba_a_log(half, d_state))
        self.D = nn.Parameter(torch.ones(half))
        self.A_log._no_weight_decay = self.D._no_weight_decay = True
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # (B, Di/2, L) each
        x, z = F.silu(self.conv_x(x)), F.silu(self.conv_z(z))
        dt, b, c = torch.split(self.x_proj(x.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # the bias enters as delta_bias
        y = selective_scan(
            x.float(),
            dt.float(),
            -torch.exp(self.A_log.float()),
            b.transpose(1, 2).float(),
            c.transpose(1, 2).float(),
            D=self.D.float(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.scan_backend,
        ).to(z.dtype)
        return self.out_proj(torch.cat([y, z], dim=1).transpose(1, 2))


class WindowAttention(nn.Module):
    """Multi-head self-attention over the tokens of each window; ``valid`` masks padded keys."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"WindowAttention: {heads} heads do not divide width {dim}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if valid is None or bool(valid.all()) else valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class HybridBlock(nn.Module):
    """``x + DropPath(g1 * mixer(LN(x)))`` then ``x + DropPath(g2 * MLP(LN(x)))`` on window tokens ``(B', L, C)``;
    the mixer is :class:`MambaMixer` or :class:`WindowAttention`; g1, g2 are layer scales (1 when not set)."""

    def __init__(
        self,
        dim: int,
        mixer: str,
        heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        **mamba_kwargs,
    ) -> None:
        super().__init__()
        self.attention = mixer == "attention"
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mixer = WindowAttention(dim, heads) if self.attention else MambaMixer(dim, **mamba_kwargs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.gamma1 = nn.Parameter(torch.full((dim,), layer_scale)) if layer_scale else None
        self.gamma2 = nn.Parameter(torch.full((dim,), layer_scale)) if layer_scale else None

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        mixed = self.mixer(self.norm1(x), valid) if self.attention else self.mixer(self.norm1(x))
        x = x + self.drop_path(mixed if self.gamma1 is None else self.gamma1 * mixed)
        mlp = self.mlp(self.norm2(x))
        return x + self.drop_path(mlp if self.gamma2 is None else self.gamma2 * mlp)


class HybridStage(nn.Module):
    """``depth`` hybrid blocks on ``(B, C, H, W)``: Mamba mixers for the first ceil(depth / 2), attention after;
    optional SeqMoE gating of every block (SecMamba); then an optional stride-2 Conv3x3 downsample."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        window_size: int = 0,
        drop_path: Sequence[float] = (),
        seqmoe: bool = False,
        downsample: bool = True,
        **block_kwargs,
    ) -> None:
        super().__init__()
        rates = list(drop_path) or [0.0] * depth
        n_mamba = depth - depth // 2
        self.blocks = nn.ModuleList(
            HybridBlock(dim, "mamba" if i < n_mamba else "attention", heads, drop_path=rates[i], **block_kwargs)
            for i in range(depth)
        )
        self.gates = nn.ModuleList(SeqMoEGate(dim) for _ in range(depth)) if seqmoe else None
        self.window_size = window_size
        self.downsample = nn.Conv2d(dim, 2 * dim, 3, stride=2, padding=1, bias=False) if downsample else None
        self.grad_checkpointing = False

    def window(self, height: int, width: int) -> tuple[int, int]:
        """The window ``(wh, ww)`` used on an ``height x width`` map (0 = the whole map; clipped to the map)."""
        ws = self.window_size
        return (height, width) if ws <= 0 else (min(ws, height), min(ws, width))

    def _step(self, i: int, x: Tensor, valid: Tensor, grid: tuple[int, int]) -> Tensor:
        out = self.blocks[i](x, valid)
        if self.gates is None:
            return out
        return self.gates[i](out.view(-1, *grid, out.shape[-1]), x.view(-1, *grid, x.shape[-1])).flatten(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2:]
        window = self.window(*size)
        tokens, valid, padded = window_partition(x.permute(0, 2, 3, 1), window)
        for i in range(len(self.blocks)):
            if self.grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(self._step, i, tokens, valid, window, use_reentrant=False)
            else:
                tokens = self._step(i, tokens, valid, window)
        x = window_reverse(tokens, window, padded, tuple(size)).permute(0, 3, 1, 2).contiguous()
        return self.downsample(x) if self.downsample is not None else x

    def gate_values(self) -> list[Tensor]:
        """Per block, the SeqMoE gates ``(B * nW, C)`` of the last forward; empty without SeqMoE."""
        if self.gates is None:
            return []
        return [g.last_gate for g in self.gates if g.last_gate is not None]


class ConvStage(nn.Module):
    """``depth`` :class:`ConvBlock` then a stride-2 Conv3x3 downsample to twice the width."""

    def __init__(self, dim: int, depth: int, drop_path: Sequence[float]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(ConvBlock(dim, rate) for rate in drop_path))
        self.downsample = nn.Conv2d(dim, 2 * dim, 3, stride=2, padding=1, bias=False)
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.grad_checkpointing and x.requires_grad else block(x)
        return self.downsample(x)
