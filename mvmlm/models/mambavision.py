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
from collections.abc import Sequence
from pathlib import Path

from timm.layers import trunc_normal_
from torch import Tensor, nn

from mvmlm.models.image_encoders import ImageEncoder, register_image_encoder
from mvmlm.models.mambavision_blocks import ConvStage, HybridStage

log = logging.getLogger(__name__)

__all__ = ["SIZES", "MambaVisionHybrid"]

#: size -> depths (4 stages), stem width (in_dim), stage-1 width (dim, doubled per stage), heads, layer scale
SIZES: dict[str, dict] = {
    "T": dict(depths=(1, 3, 8, 4), in_dim=32, dim=80, heads=(2, 4, 8, 16), layer_scale=None),
    "S": dict(depths=(3, 3, 7, 5), in_dim=32, dim=96, heads=(2, 4, 8, 16), layer_scale=None),
    "B": dict(depths=(3, 3, 10, 5), in_dim=64, dim=128, heads=(2, 4, 8, 16), layer_scale=1e-5),
    "L": dict(depths=(3, 3, 10, 5), in_dim=64, dim=196, heads=(4, 8, 16, 32), layer_scale=1e-5),
}


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
        self.stages = nn.ModuleList([ConvStage(widths[i], depths[i], rates[i]) for i in range(2)])
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
