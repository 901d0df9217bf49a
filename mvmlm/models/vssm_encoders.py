"""VSSM image encoders for the registry: ``vssm`` (MedMamba-T-like) and ``hybrid_resnet_vssm`` (ResNet-18 early
layers, then SS-Conv-SSM blocks, as in the hybrid CNN-VSSM paper). Both return ``(B, C, h, w)`` feature maps::

    encoder = create_image_encoder("hybrid_resnet_vssm", in_chans=1, resnet_until="layer3", pretrained=True)
    encoder = create_image_encoder("vssm", depths=[1, 1], dims=[16, 32], seqmoe=True)   # a tiny test config
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mvmlm.models.image_encoders import ImageEncoder, TimmEncoder, register_image_encoder
from mvmlm.models.vssm import VSSStage, init_vssm

__all__ = ["HybridResNetVSSM", "VSSMEncoder"]

_RESNET_LAYERS = ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3")
_RESNET_UNTIL = {"layer2": (128, 8), "layer3": (256, 16)}  # ResNet-18: channels, stride


def _stages(
    dims: Sequence[int], depths: Sequence[int], drop_path_rate: float, block: str, seqmoe: bool, **block_kwargs
) -> nn.ModuleList:
    """One :class:`VSSStage` per depth; each but the last ends in patch merging to the next width."""
    if len(dims) != len(depths) or not depths or min(depths) < 1:
        raise ValueError(f"VSSM: need one positive depth per width, got depths={list(depths)} dims={list(dims)}")
    rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
    stages, start = [], 0
    for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
        out_dim = dims[i + 1] if i + 1 < len(dims) else None
        stages.append(VSSStage(dim, depth, block, rates[start : start + depth], seqmoe, out_dim, **block_kwargs))
        start += depth
    return nn.ModuleList(stages)


class _VSSMEncoderBase(ImageEncoder):
    """Shared forward: ``embed`` (images -> channels-last map), the stages, back to channels-first."""

    in_chans: int
    stages: nn.ModuleList

    def embed(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{type(self).__name__}: expected images (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        x = self.embed(x)
        for stage in self.stages:
            x = stage(x)
        return x.permute(0, 3, 1, 2).contiguous()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each VSSM block in backward (the CNN stem of the hybrid is not checkpointed)."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def seqmoe_gates(self) -> dict[str, float]:
        """Mean SeqMoE gate per block from the last forward, ``{"stage0.block1": 0.53, ...}``; empty without SeqMoE."""
        return {
            f"stage{i}.block{j}": gate.float().mean().item()
            for i, stage in enumerate(self.stages)
            for j, gate in enumerate(stage.gate_values())
        }


@register_image_encoder("vssm")
class VSSMEncoder(_VSSMEncoderBase):
    """MedMamba-T-like pure VSSM: Conv(patch, stride patch) + LN patch embedding, then stages of SS-Conv-SSM blocks
    with patch merging between them; no final norm. Output stride ``patch_size * 2 ** (len(depths) - 1)``.

    Args:
        in_chans: image channels.
        depths: blocks per stage (MedMamba-T: 2, 2, 4, 2).
        dims: widths per stage, or the first width (doubled at every stage).
        patch_size: patch embedding size and stride.
        d_state, ssm_ratio: SS2D state size and expansion.
        drop_path_rate: stochastic depth, rising linearly over the blocks to this value.
        block: ``ss_conv_ssm`` (MedMamba) or ``vss`` (VMamba, no MLP).
        seqmoe: gate every block with :class:`~mvmlm.models.vssm.SeqMoEGate`.
        scan_backend: ``auto`` / ``cuda`` / ``torch`` for the selective scan (None: auto or ``MVMLM_SCAN_BACKEND``).
    """

    def __init__(
        self,
        in_chans: int = 1,
        depths: Sequence[int] = (2, 2, 4, 2),
        dims: Sequence[int] | int = 96,
        patch_size: int = 4,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        drop_path_rate: float = 0.1,
        block: str = "ss_conv_ssm",
        seqmoe: bool = False,
        scan_backend: str | None = None,
    ) -> None:
        super().__init__()
        dims = [dims * 2**i for i in range(len(depths))] if isinstance(dims, int) else list(dims)
        self.in_chans = in_chans
        self.patch_embed = nn.Conv2d(in_chans, dims[0], patch_size, stride=patch_size)
        self.embed_norm = nn.LayerNorm(dims[0])
        self.stages = _stages(
            dims, depths, drop_path_rate, block, seqmoe, d_state=d_state, ssm_ratio=ssm_ratio, scan_backend=scan_backend
        )
        self.out_channels = dims[-1]
        self.stride = patch_size * 2 ** (len(depths) - 1)
        self.apply(init_vssm)

    def embed(self, x: Tensor) -> Tensor:
        return self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))


@register_image_encoder("hybrid_resnet_vssm")
class HybridResNetVSSM(_VSSMEncoderBase):
    """ResNet-18 (timm) from its stem through ``layer2`` (128 ch, stride 8) or ``layer3`` (256 ch, stride 16), its
    feature map then read as tokens by SS-Conv-SSM blocks (2 by default, half the pure model's 4).

    Args:
        in_chans: image channels; with 1 and pretrained weights timm sums the RGB stem kernels.
        resnet_until: ``layer2`` or ``layer3``.
        depths: VSSM blocks per stage; more than one stage adds patch merging (width doubles, stride doubles).
        pretrained: timm's ImageNet weights for the CNN (hub or its cache).
        pretrained_path: a local timm ``resnet18`` state dict (``.safetensors`` or weights-only ``.pth``) instead.
        d_state, ssm_ratio, drop_path_rate, block, seqmoe, scan_backend: as :class:`VSSMEncoder`.
    """

    def __init__(
        self,
        in_chans: int = 1,
        resnet_until: str = "layer3",
        depths: Sequence[int] = (2,),
        pretrained: bool = False,
        pretrained_path: str | None = None,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        drop_path_rate: float = 0.1,
        block: str = "ss_conv_ssm",
        seqmoe: bool = False,
        scan_backend: str | None = None,
    ) -> None:
        super().__init__()
        if resnet_until not in _RESNET_UNTIL:
            raise ValueError(f"hybrid_resnet_vssm: resnet_until must be one of {', '.join(_RESNET_UNTIL)}")
        channels, stride = _RESNET_UNTIL[resnet_until]
        resnet = TimmEncoder("resnet18", in_chans=in_chans, pretrained=pretrained, pretrained_path=pretrained_path)
        keep = _RESNET_LAYERS[: _RESNET_LAYERS.index(resnet_until) + 1]
        self.in_chans = in_chans
        self.cnn = nn.Sequential(OrderedDict((name, getattr(resnet.trunk, name)) for name in keep))
        dims = [channels * 2**i for i in range(len(depths))]
        self.stages = _stages(
            dims, depths, drop_path_rate, block, seqmoe, d_state=d_state, ssm_ratio=ssm_ratio, scan_backend=scan_backend
        )
        self.stages.apply(init_vssm)
        self.out_channels = dims[-1]
        self.stride = stride * 2 ** (len(depths) - 1)

    def embed(self, x: Tensor) -> Tensor:
        return self.cnn(x).permute(0, 2, 3, 1)
