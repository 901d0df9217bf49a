"""Mammo-Mamba's dual-stream classifier: lesion crops and whole images of a breast's CC and MLO views.

Each stream (``crop``, ``whole``) has its own backbone (by default ``mambavision_hybrid`` with SeqMoE; the paper's
size L with stages 1-2 frozen is configs/dual_stream/dual_stream.yaml). A stream embeds each present view (global
average pool of the feature map; a missing view is a zero embedding) and concatenates CC and MLO. The two stream
embeddings are fused by a gate, ``g = sigmoid(W [e_crop; e_whole] + b)`` per channel, ``e = g * e_crop + (1 - g) *
e_whole`` (the paper gives no formula; this is our choice, the same form as the SeqMoE gate), then an MLP predicts
benign vs malignant. One stream (the ablations) skips the fusion::

    model = MammoMamba(MammoMambaModelConfig(streams=["crop", "whole"]))
    out = model({"crop": (crops, crop_mask), "whole": (images, image_mask)})   # images (B, 2, 1, H, W), mask (B, 2)
    out["logits"]          # (B, 2)
    out["fusion_gate"]     # (B, D) per-channel weight of the crop stream (absent with one stream)
    model.breast_gates(inputs, out)   # {"crop.stage3.block0": (B,), ..., "fusion": (B,)} mean gate per breast
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from downstream.dual_stream.config import STREAMS, MammoMambaConfig, MammoMambaModelConfig
from downstream.dual_stream.data import resize_input
from mvmlm import checkpoint
from mvmlm.bundle import Bundle
from mvmlm.models.image_encoders import create_image_encoder

__all__ = [
    "STREAMS",
    "MammoMambaModelConfig",
    "ViewStream",
    "GatedStreamFusion",
    "MammoMamba",
    "DualStreamBundle",
    "load_dual_stream",
]


class ViewStream(nn.Module):
    """One backbone over a breast's views: ``(B, V, 1, H, W)`` + mask ``(B, V)`` -> ``(B, V * C)``; missing views
    are not run through the backbone and give zero embeddings."""

    def __init__(self, backbone: str, views: int = 2, **kwargs: Any) -> None:
        super().__init__()
        self.backbone = create_image_encoder(backbone, **kwargs)
        self.views = views
        self.out_dim = views * self.backbone.out_channels

    def forward(self, images: Tensor, mask: Tensor) -> Tensor:
        b, v = mask.shape
        if images.shape[:2] != (b, v) or v != self.views:
            raise ValueError(f"ViewStream: images {tuple(images.shape)} and mask {tuple(mask.shape)} disagree")
        flat = mask.reshape(-1)
        embeddings = images.new_zeros(b * v, self.backbone.out_channels)
        if flat.any():
            pooled = self.backbone(images.flatten(0, 1)[flat]).mean(dim=(2, 3))
            embeddings = embeddings.index_put((flat.nonzero()[:, 0],), pooled.to(embeddings.dtype))
        return embeddings.view(b, self.out_dim)


class GatedStreamFusion(nn.Module):
    """``g = sigmoid(W [a; b] + b0)`` per channel, ``g * a + (1 - g) * b``; ``last_gate`` keeps g (detached)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * dim, dim)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        self.last_gate: Tensor | None = None

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        gate = torch.sigmoid(self.proj(torch.cat([first, second], dim=-1)))
        self.last_gate = gate.detach()
        return gate * first + (1 - gate) * second


class MammoMamba(nn.Module):
    """Streams -> (gated fusion) -> LayerNorm -> Linear -> GELU -> Dropout -> Linear -> class logits."""

    def __init__(self, cfg: MammoMambaModelConfig) -> None:
        super().__init__()
        streams = list(cfg.streams)
        if not streams or any(s not in STREAMS for s in streams) or len(set(streams)) != len(streams):
            raise ValueError(f"model.streams: one or both of {list(STREAMS)}, got {streams}")
        self.stream_names = [s for s in STREAMS if s in streams]
        self.streams = nn.ModuleDict({s: ViewStream(cfg.backbone, **cfg.backbone_kwargs) for s in self.stream_names})
        dim = self.streams[self.stream_names[0]].out_dim
        self.fusion = GatedStreamFusion(dim) if len(self.stream_names) == 2 else None
        self.head = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, cfg.hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.num_classes),
        )

    def forward(self, inputs: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        missing = [s for s in self.stream_names if s not in inputs]
        if missing:
            raise ValueError(f"MammoMamba: no input for stream(s) {missing}")
        embedded = [self.streams[s](*inputs[s]) for s in self.stream_names]
        fused = self.fusion(*embedded) if self.fusion is not None else embedded[0]
        out = {"logits": self.head(fused)}
        if self.fusion is not None:
            out["fusion_gate"] = self.fusion.last_gate
        return out

    def seqmoe_gates(self) -> dict[str, list[Tensor]]:
        """SeqMoE gates of the last forward per stream and backbone stage, ``{"crop.stage3": [(N, C), ...]}``."""
        gates = {}
        for name, stream in self.streams.items():
            values = getattr(stream.backbone, "gate_values", dict)()
            gates.update({f"{name}.{stage}": blocks for stage, blocks in values.items() if blocks})
        return gates

    def breast_gates(self, inputs: dict[str, tuple[Tensor, Tensor]], out: dict[str, Tensor]) -> dict[str, Tensor]:
        """Mean gate value per breast ``(B,)`` of the forward ``out = self(inputs)``: every SeqMoE block's gates
        averaged over channels, windows and the breast's present views (``"crop.stage3.block0"``), and the stream
        fusion gate averaged over channels (``"fusion"``)."""
        values = {}
        for name, blocks in self.seqmoe_gates().items():
            mask = inputs[name.split(".")[0]][1]
            owner = mask.reshape(-1).nonzero()[:, 0] // mask.shape[1]  # the breast of each present view
            count = mask.sum(1).clamp(min=1)
            for j, gate in enumerate(blocks):
                per_view = gate.float().mean(-1).view(len(owner), -1).mean(1)
                total = per_view.new_zeros(mask.shape[0]).index_add(0, owner, per_view)
                values[f"{name}.block{j}"] = total / count
        if "fusion_gate" in out:
            values["fusion"] = out["fusion_gate"].float().mean(-1)
        return values


def load_dual_stream(directory: str | Path) -> tuple[MammoMamba, MammoMambaConfig]:
    """The model saved in a run's ``best/`` (``model.safetensors`` + ``config.yaml``), in eval mode, and its config."""
    cfg = checkpoint.load_checkpoint_config(directory, MammoMambaConfig)
    model = MammoMamba(cfg.model)
    model.load_state_dict(checkpoint.load_weights(directory))
    return model.eval(), cfg


class DualStreamBundle(Bundle):
    """The dual-stream classifier as a bundle: a breast's CC and MLO whole images (and, with the crop stream, their
    lesion crops: ``mvmlm predict --rois FILE.csv``) -> benign / malignant probabilities."""

    kind = "dual-stream"
    level = "breast"

    @property
    def needs_rois(self) -> bool:  # type: ignore[override]
        return "crop" in self.module.stream_names

    def write_files(self, directory: Path) -> None:
        checkpoint.save_checkpoint(directory, self.module.state_dict(), OmegaConf.create(self.config["model"]))

    @classmethod
    def read_module(cls, directory: Path, config: dict) -> MammoMamba:
        return load_dual_stream(directory)[0]

    def input_transform(self, image: Tensor) -> Tensor:
        """Resized to the network input, as the evaluation's loader (``DualStreamDataset``) does."""
        return resize_input(image, self.config["model"]["data"]["image_size"])

    def predict_views(self, images: Tensor, mask: Tensor, crops: tuple[Tensor, Tensor] | None = None) -> dict:
        inputs = {"whole": (images, mask), **({"crop": crops} if crops is not None else {})}
        out = self.module({s: inputs[s] for s in self.module.stream_names})
        (head,) = self.heads
        return {head: out["logits"].float().softmax(dim=-1)}
