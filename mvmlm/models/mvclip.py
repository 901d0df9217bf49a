"""MV-CLIP: an image tower and a text tower embedding mammograms and reports into one space, plus a logit scale.

Image tower = a registered image encoder + a token transformer (which ends in the projection to ``embed_dim``).
Text tower = a frozen Hugging Face encoder (or its cached hidden states) + its own token transformer. A checkpoint
is a directory with ``model.safetensors`` and ``config.yaml``; the frozen text encoder's weights are not stored in
it, only its name and revision. The config dataclasses live in the torch-free :mod:`mvmlm.models.configs`
(re-exported here)::

    model = MVCLIP(MVCLIPConfig())
    model.save("runs/pretrain/final")
    tower = load_image_tower("runs/pretrain/final")     # downstream: images -> embeddings (and tokens)

A pretraining run saves its model as a bundle (:class:`MVCLIPBundle`, kind ``mvclip``): the checkpoint above plus
``config.json``, ``manifest.json`` and a model card, loadable with ``mvmlm.load_model`` (which embeds images).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvmlm.bundle import Bundle
from mvmlm.checkpoint import load_checkpoint_config, load_weights, save_checkpoint
from mvmlm.models.configs import ImageTowerConfig, MVCLIPConfig, TextTowerConfig, TokenConfig
from mvmlm.models.image_encoders import ImageEncoder, create_image_encoder
from mvmlm.models.text_encoders import FrozenTextEncoder, TextFeatureCache
from mvmlm.models.token_transformer import TokenTransformer

__all__ = [
    "ImageTowerConfig",
    "TextTowerConfig",
    "TokenConfig",
    "MVCLIPConfig",
    "ImageTower",
    "MVCLIP",
    "load_image_tower",
    "MVCLIPBundle",
]


class ImageTower(nn.Module):
    """Images ``(B, in_chans, H, W)`` -> embeddings ``(B, embed_dim)`` (and tokens ``(B, N, width)``).

    The token map is built for the feature grid ``ceil(image_size / encoder.stride)``; other sizes are resized
    to it (see :mod:`mvmlm.models.token_transformer`).
    """

    def __init__(self, config: ImageTowerConfig, tokens: TokenConfig, embed_dim: int, load_pretrained: bool = True):
        super().__init__()
        kwargs = dict(config.encoder_kwargs)
        if not load_pretrained:
            kwargs = {key: value for key, value in kwargs.items() if not key.startswith("pretrained")}
        self.encoder: ImageEncoder = create_image_encoder(config.encoder, **kwargs)
        grid = (
            math.ceil(config.image_size[0] / self.encoder.stride),
            math.ceil(config.image_size[1] / self.encoder.stride),
        )
        self.tokens = TokenTransformer(self.encoder.out_channels, embed_dim, grid=grid, **dataclasses.asdict(tokens))

    def forward(self, images: Tensor, return_tokens: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        return self.tokens(self.encoder(images), return_tokens=return_tokens)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)
        self.tokens.set_grad_checkpointing(enable)


class MVCLIP(nn.Module):
    """The two towers and a learnable logit scale (``exp`` of a parameter, initialised to ``1 / 0.07``).

    Args:
        config: the model config.
        text_encoder: the frozen encoder to use for raw texts (default: built from ``config.text``, loaded lazily).
        load_pretrained: honour ``pretrained*`` encoder kwargs (False when weights come from a checkpoint).
    """

    def __init__(
        self, config: MVCLIPConfig, text_encoder: FrozenTextEncoder | None = None, load_pretrained: bool = True
    ) -> None:
        super().__init__()
        text = config.text
        self.text_encoder = text_encoder or FrozenTextEncoder(text.model, text.revision, text.max_length, text.dtype)
        if text.hidden_size is None:
            config = dataclasses.replace(
                config, text=dataclasses.replace(text, hidden_size=self.text_encoder.hidden_size)
            )
        self.config = config
        self.text_cache: TextFeatureCache | None = None
        self.image = ImageTower(config.image, config.tokens, config.embed_dim, load_pretrained)
        self.text = TokenTransformer(config.text.hidden_size, config.embed_dim, **dataclasses.asdict(config.tokens))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale_init)))

    def use_text_cache(self, root: str | Path, store_dtype: str = "float16") -> TextFeatureCache:
        """Serve ``encode_text(texts)`` from an on-disk cache of the frozen encoder's hidden states."""
        self.text_cache = TextFeatureCache(root, self.text_encoder, store_dtype)
        return self.text_cache

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.image.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def logit_scale_exp(self) -> Tensor:
        """The temperature-inverse used by the loss: ``exp(logit_scale)`` clamped at ``logit_scale_max``."""
        return self.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def encode_image(
        self, images: Tensor, normalize: bool = False, return_tokens: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Images ``(B, in_chans, H, W)`` -> ``(B, embed_dim)`` (L2-normalised if ``normalize``) [, tokens]."""
        out = self.image(images, return_tokens=return_tokens)
        return _normalize(out, normalize)

    def text_features(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Frozen hidden states ``(B, L, H)`` and mask ``(B, L)`` of ``texts`` (from the cache when one is used)."""
        device = self.logit_scale.device
        if self.text_cache is not None:
            hidden, mask = self.text_cache(texts, device=device)
        else:
            hidden, mask = self.text_encoder.encode(texts, device)
        return hidden.to(device), mask.to(device)

    def encode_text(
        self,
        texts: Sequence[str] | None = None,
        *,
        hidden: Tensor | None = None,
        mask: Tensor | None = None,
        normalize: bool = False,
        return_tokens: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Embed raw ``texts``, or precomputed frozen ``hidden`` states ``(B, L, H)`` with their ``mask (B, L)``."""
        if (texts is None) == (hidden is None):
            raise ValueError("encode_text takes either texts or hidden (+ mask), not both or neither")
        if texts is not None:
            hidden, mask = self.text_features(texts)
        out = self.text(hidden, mask=mask, return_tokens=return_tokens)
        return _normalize(out, normalize)

    def forward(
        self,
        images: Tensor,
        texts: Sequence[str] | None = None,
        *,
        text_hidden: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Both towers in one call (what DDP wraps): L2-normalised image and text features and the logit scale.

        ``images`` may stack several views of a batch (e.g. CC then MLO); the caller splits the result.
        """
        image_features = self.encode_image(images, normalize=True)
        text_features = self.encode_text(texts, hidden=text_hidden, mask=text_mask, normalize=True)
        return image_features, text_features, self.logit_scale_exp()

    def save(self, directory: str | Path, metadata: dict[str, str] | None = None) -> Path:
        """Write ``model.safetensors`` + ``config.yaml`` (the frozen text encoder is referenced, not stored)."""
        return save_checkpoint(directory, self.state_dict(), self.config, metadata)

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu", text_encoder: FrozenTextEncoder | None = None) -> MVCLIP:
        """Rebuild the model saved by :meth:`save` (no pretrained download; weights must match exactly)."""
        model = cls(load_checkpoint_config(directory, MVCLIPConfig), text_encoder, load_pretrained=False)
        model.load_state_dict(load_weights(directory))
        return model.to(device)


def _normalize(out: Tensor | tuple[Tensor, Tensor], normalize: bool) -> Tensor | tuple[Tensor, Tensor]:
    if not normalize:
        return out
    if isinstance(out, tuple):
        return F.normalize(out[0], dim=-1), out[1]
    return F.normalize(out, dim=-1)


def load_image_tower(directory: str | Path, device: str = "cpu", weights: bool = True) -> ImageTower:
    """The image tower of an MV-CLIP checkpoint directory, for embedding, probing and fine-tuning.

    Args:
        weights: load the checkpoint's weights; False builds the architecture from ``config.yaml`` alone (random
            init; for models whose own weights file holds the tower's, and for random-init baselines).
    """
    config = load_checkpoint_config(directory, MVCLIPConfig)
    tower = ImageTower(config.image, config.tokens, config.embed_dim, load_pretrained=False)
    if weights:
        state = load_weights(directory)
        tower.load_state_dict({key[len("image.") :]: v for key, v in state.items() if key.startswith("image.")})
    return tower.to(device)


class MVCLIPBundle(Bundle):
    """A pretrained MV-CLIP as a bundle: its image tower embeds breasts' views (``mvmlm embed``)."""

    kind = "mvclip"
    level = "breast"

    def write_files(self, directory: Path) -> None:
        self.module.save(directory, metadata={"step": str(self.config.get("step", ""))})

    @classmethod
    def read_module(cls, directory: Path, config: dict) -> MVCLIP:
        return MVCLIP.load(directory).eval()

    def embed_images(self, images: Tensor) -> Tensor:
        return self.module.encode_image(images)
