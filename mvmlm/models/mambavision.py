"""MambaVision-style hybrid backbone with SecMamba / SeqMoE stages (Mammo-Mamba), written from the papers'
descriptions (MambaVision's code is non-commercial and is not used).

Layout: conv stem (two stride-2 Conv3x3 + BN + ReLU, stride 4) -> stages 1-2 of residual conv blocks -> stages 3-4
of hybrid blocks on window tokens: the first half of each stage uses a Mamba mixer (our selective scan), the second
half windowed multi-head self-attention. A stride-2 Conv3x3 downsample ends stages 1-3; a BatchNorm ends the model.
Output: ``(B, C, H / 32, W / 32)``.

Mamba mixer (MambaVision's split): in_proj C -> Di, halves x and z; x -> non-causal depthwise conv1d + SiLU ->
selective scan (one forward direction); z -> depthwise conv1d + SiLU, no SSM; out_proj(concat[y, z]). z is a second
branch, not a multiplicative gate. With ``seqmoe`` each hybrid block is a SecMamba block: its output is mixed with
the previous block's by :class:`~mvmlm.models.vssm.SeqMoEGate` (per-channel sigmoid on mean-pooled tokens, pooled
per window), whose last values :meth:`MambaVisionHybrid.seqmoe_gates` reports.

Windows: ``window_size`` 0 (default) = the whole feature map, so context is global at any resolution (MambaVision's
7 / 14 windows would cut a 512x512 mammogram's stage-3 map into local windows). A window larger than the map is
clipped to the map; a map not divisible by the window is zero-padded, and attention ignores the padded tokens.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mvmlm.models.image_encoders import ImageEncoder, register_image_encoder
from mvmlm.models.selective_scan import selective_scan
from mvmlm.models.ss2d import mamba_a_log, mamba_dt_bias
from mvmlm.models.vssm import SeqMoEGate

log = logging.getLogger(__name__)

__all__ = [
    "SIZES",
    "ConvBlock",
    "MambaMixer",
    "WindowAttention",
    "HybridBlock",
    "HybridStage",
    "MambaVisionHybrid",
    "window_partition",
    "window_reverse",
]

#: size -> depths (4 stages), stem width (in_dim), stage-1 width (dim, doubled per stage), heads, layer scale
SIZES: dict[str, dict] = {
    "T": dict(depths=(1, 3, 8, 4), in_dim=32, dim=80, heads=(2, 4, 8, 16), layer_scale=None),
    "S": dict(depths=(3, 3, 7, 5), in_dim=32, dim=96, heads=(2, 4, 8, 16), layer_scale=None),
    "B": dict(depths=(3, 3, 10, 5), in_dim=64, dim=128, heads=(2, 4, 8, 16), layer_scale=1e-5),
    "L": dict(depths=(3, 3, 10, 5), in_dim=64, dim=196, heads=(4, 8, 16, 32), layer_scale=1e-5),
}


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


class _ConvStage(nn.Module):
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


@register_image_encoder("mambavision_hybrid")
class MambaVisionHybrid(ImageEncoder):
    """Mammo-Mamba's backbone: MambaVision-like stages, SecMamba (SeqMoE-gated) hybrid blocks in stages 3-4.

    Args:
        size: preset ``T`` / ``S`` / ``B`` / ``L`` (MambaVision's depths, widths and heads); the arguments below
            that are given override it.
        in_chans: image channels (1 for mammograms).
        depths, dim, in_dim, heads, layer_scale: four depths, stage-1 width, stem width, heads of stages 1-4
            (only stages 3-4 use them), layer scale (None = off).
        window_size: attention / Mamba window per hybrid stage (an int for both); 0 = the whole map.
        seqmoe: SeqMoE depth gating in the hybrid stages (Mammo-Mamba); False = plain MambaVision.
        freeze_stages: the first this many stages (0-4) get no gradient and keep BatchNorm statistics fixed
            (Mammo-Mamba: 2, on pretrained weights). The stem stays trainable, as the paper fine-tunes the patch
            embedding. Freezing randomly initialised stages is allowed but logged as a warning.
        pretrained_path: a ``.safetensors`` file with this architecture's weights, e.g. the ``model.safetensors`` of
            an MV-MLM checkpoint pretrained with this encoder (with ``pretrained_prefix: image.encoder.``).
        pretrained_prefix: only tensors whose names start with it are read, the prefix removed.
        d_state, d_conv, expand, mlp_ratio, drop_path_rate, scan_backend: Mamba mixer and block settings.
    """

    def __init__(
        self,
        size: str = "T",
        in_chans: int = 1,
        depths: Sequence[int] | None = None,
        dim: int | None = None,
        in_dim: int | None = None,
        heads: Sequence[int] | None = None,
        layer_scale: float | None = None,
        window_size: int | Sequence[int] = 0,
        seqmoe: bool = True,
        freeze_stages: int = 0,
        d_state: int = 8,
        d_conv: int = 3,
        expand: float = 1.0,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        scan_backend: str | None = None,
        pretrained_path: str | None = None,
        pretrained_prefix: str = "",
    ) -> None:
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"mambavision_hybrid: unknown size {size!r}; known: {', '.join(SIZES)}")
        preset = SIZES[size]
        depths = list(depths or preset["depths"])
        heads = list(heads or preset["heads"])
        dim, in_dim = dim or preset["dim"], in_dim or preset["in_dim"]
        layer_scale = layer_scale if layer_scale is not None else preset["layer_scale"]
        windows = [window_size] * 2 if isinstance(window_size, int) else list(window_size)
        if len(depths) != 4 or len(heads) != 4 or len(windows) != 2 or min(depths) < 1:
            raise ValueError(
                f"mambavision_hybrid: need 4 positive depths, 4 heads and 2 windows, got depths={depths} "
                f"heads={heads} window_size={window_size}"
            )
        if not 0 <= freeze_stages <= 4:
            raise ValueError(f"mambavision_hybrid: freeze_stages must be in 0..4, got {freeze_stages}")
        self.in_chans, self.freeze_stages = in_chans, freeze_stages
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, in_dim, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(in_dim),
            nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(),
        )
        rates = [drop_path_rate * i / max(1, sum(depths) - 1) for i in range(sum(depths))]  # rising linearly
        bounds = [sum(depths[:i]) for i in range(5)]
        widths = [dim * 2**i for i in range(4)]
        block = dict(
            mlp_ratio=mlp_ratio,
            layer_scale=layer_scale,
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            scan_backend=scan_backend,
        )
        rates = [rates[bounds[i] : bounds[i + 1]] for i in range(4)]
        self.stages = nn.ModuleList([_ConvStage(widths[i], depths[i], rates[i]) for i in range(2)])
        for i in (2, 3):
            self.stages.append(
                HybridStage(widths[i], depths[i], heads[i], windows[i - 2], rates[i], seqmoe, i < 3, **block)
            )
        self.norm = nn.BatchNorm2d(widths[-1])
        self.out_channels, self.stride = widths[-1], 32
        self.apply(_init_weights)
        if pretrained_path:
            self.load_pretrained(pretrained_path, pretrained_prefix)
        elif freeze_stages:
            log.warning(
                "mambavision_hybrid: freezing %d randomly initialised stage(s); give pretrained_path, or set "
                "freeze_stages=0 to train them",
                freeze_stages,
            )
        for stage in self.stages[:freeze_stages]:
            stage.requires_grad_(False)

    def load_pretrained(self, path: str | Path, prefix: str = "") -> None:
        """Load the tensors of a safetensors file named ``prefix<parameter>``; every parameter must be there.

        Raises:
            FileNotFoundError: no such file.
            ValueError: no tensor with ``prefix``, or names / shapes that do not match this architecture.
        """
        from safetensors.torch import load_file

        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"mambavision_hybrid: pretrained_path not found: {path}")
        state = {name[len(prefix) :]: t for name, t in load_file(str(path)).items() if name.startswith(prefix)}
        if not state:
            raise ValueError(f"mambavision_hybrid: {path} has no tensor named {prefix!r}...")
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise ValueError(f"mambavision_hybrid: {path} does not fit this architecture: {exc}") from None
        if missing or unexpected:
            raise ValueError(
                f"mambavision_hybrid: {path} does not fit this architecture: {len(missing)} missing "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )

    def train(self, mode: bool = True) -> MambaVisionHybrid:
        """Frozen stages stay in eval mode (fixed BatchNorm statistics)."""
        super().train(mode)
        for stage in self.stages[: self.freeze_stages]:
            stage.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"mambavision_hybrid: expected images (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block of the trainable stages in backward."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def gate_values(self) -> dict[str, list[Tensor]]:
        """SeqMoE gates of the last forward: ``{"stage3": [(B * nW, C) per block], "stage4": [...]}`` (1-based)."""
        return {f"stage{i + 1}": stage.gate_values() for i, stage in enumerate(self.stages) if i >= 2}

    def seqmoe_gates(self) -> dict[str, float]:
        """Mean SeqMoE gate per block of the last forward, ``{"stage3.block0": 0.51, ...}``; empty without SeqMoE."""
        return {
            f"{stage}.block{j}": gate.float().mean().item()
            for stage, gates in self.gate_values().items()
            for j, gate in enumerate(gates)
        }


def _init_weights(module: nn.Module) -> None:
    """trunc_normal(0.02) Linear weights with zero bias (the Mamba dt projection keeps its own init), unit LayerNorm."""
    if isinstance(module, nn.Linear) and not getattr(module, "_keep_init", False):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
