"""VSSM building blocks (channels-last ``(B, H, W, C)`` maps): VSS block, SS-Conv-SSM block, patch merging,
the SeqMoE depth gate, and a stage stacking them. Re-implemented from the VMamba / MedMamba / Mammo-Mamba papers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mvmlm.models.ss2d import SS2D

__all__ = ["BLOCKS", "PatchMerging", "SSConvSSM", "SeqMoEGate", "VSSBlock", "VSSStage", "channel_shuffle", "init_vssm"]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channel groups of a channels-last map: (a0..ak, b0..bk) -> (a0, b0, a1, b1, ...)."""
    *lead, c = x.shape
    return x.view(*lead, groups, c // groups).transpose(-1, -2).reshape(*lead, c)


class VSSBlock(nn.Module):
    """VMamba's block: ``x + DropPath(SS2D(LN(x)))``, then ``x + DropPath(MLP(LN(x)))`` if ``mlp_ratio > 0``."""

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        mlp_ratio: float = 0.0,
        scan_backend: str | None = None,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ss2d = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, scan_backend=scan_backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp = None
        if mlp_ratio > 0:
            self.mlp_norm = nn.LayerNorm(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.ss2d(self.norm(x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.mlp_norm(x)))
        return x


class SSConvSSM(nn.Module):
    """MedMamba's SS-Conv-SSM block: split channels in half; conv branch on one half, SS2D branch on the other;
    concatenate, shuffle the two groups' channels, add the input.

    Conv branch: BN -> Conv3x3 -> BN -> ReLU -> Conv3x3 -> BN -> ReLU -> Conv1x1 -> ReLU (C/2 -> C/2).
    SS2D branch: LN -> SS2D(C/2) -> DropPath.
    """

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        scan_backend: str | None = None,
    ) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"SSConvSSM: dim must be even to split into conv and SSM halves, got {dim}")
        half = dim // 2
        self.norm = nn.LayerNorm(half)
        self.ss2d = SS2D(half, d_state=d_state, ssm_ratio=ssm_ratio, scan_backend=scan_backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.conv = nn.Sequential(
            nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 3, padding=1),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, padding=1),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        left, right = x.chunk(2, dim=-1)
        right = self.drop_path(self.ss2d(self.norm(right)))
        left = self.conv(left.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return channel_shuffle(torch.cat([left, right], dim=-1), groups=2) + x


BLOCKS: dict[str, Callable[..., nn.Module]] = {"ss_conv_ssm": SSConvSSM, "vss": VSSBlock}


class PatchMerging(nn.Module):
    """Halve H and W, double C: concatenate the four 2x2 sub-grids -> LN(4C) -> Linear(4C -> 2C, no bias).

    An odd H or W is zero-padded at the bottom / right first.
    """

    def __init__(self, dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim or 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[1:3]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class SeqMoEGate(nn.Module):
    """Mammo-Mamba's sequential mixture-of-experts depth gate: ``B_i = G * Block_i(X_i) + (1 - G) * B_{i-1}``.

    The paper computes G from mean-pooled representations but gives no exact form. Our choice (documented, not
    the authors'): ``G = sigmoid(W [mean_HW(Block_i(X_i)); mean_HW(B_{i-1})] + b)``, one value per sample and
    channel, broadcast over positions. With the encoders' init (W ~ N(0, 0.02), b = 0) G starts near 0.5.
    ``last_gate`` keeps the most recent ``(B, C)`` gate values (detached) for logging.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * dim, dim)
        self.last_gate: Tensor | None = None

    def forward(self, block_out: Tensor, previous: Tensor) -> Tensor:
        pooled = torch.cat([block_out.mean(dim=(1, 2)), previous.mean(dim=(1, 2))], dim=-1)
        gate = torch.sigmoid(self.proj(pooled))
        self.last_gate = gate.detach()
        gate = gate[:, None, None, :]
        return gate * block_out + (1 - gate) * previous


class VSSStage(nn.Module):
    """``depth`` blocks at width ``dim`` (optionally SeqMoE-gated), then optional patch merging to ``out_dim``."""

    def __init__(
        self,
        dim: int,
        depth: int,
        block: str = "ss_conv_ssm",
        drop_path: Sequence[float] = (),
        seqmoe: bool = False,
        out_dim: int | None = None,
        **block_kwargs,
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown VSSM block {block!r}; known: {', '.join(sorted(BLOCKS))}")
        rates = list(drop_path) or [0.0] * depth
        if len(rates) != depth:
            raise ValueError(f"VSSStage: {len(rates)} drop-path rates for {depth} blocks")
        self.blocks = nn.ModuleList(BLOCKS[block](dim, drop_path=rate, **block_kwargs) for rate in rates)
        self.gates = nn.ModuleList(SeqMoEGate(dim) for _ in rates) if seqmoe else None
        self.downsample = PatchMerging(dim, out_dim) if out_dim else None
        self.grad_checkpointing = False

    def _step(self, i: int, x: Tensor) -> Tensor:
        out = self.blocks[i](x)
        return self.gates[i](out, x) if self.gates is not None else out

    def forward(self, x: Tensor) -> Tensor:
        for i in range(len(self.blocks)):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(self._step, i, x, use_reentrant=False)
            else:
                x = self._step(i, x)
        return self.downsample(x) if self.downsample is not None else x

    def gate_values(self) -> list[Tensor]:
        """The SeqMoE gates of the last forward, ``(B, C)`` per block; empty without SeqMoE or before a forward."""
        if self.gates is None:
            return []
        return [g.last_gate for g in self.gates if g.last_gate is not None]


def init_vssm(module: nn.Module) -> None:
    """MedMamba's init, for ``module.apply``: trunc_normal(0.02) Linear weights with zero bias, kaiming_normal
    (fan_out) Conv2d weights, unit LayerNorm. SS2D's SSM parameters are not Linear modules and keep Mamba's init."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
