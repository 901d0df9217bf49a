"""Image encoder registry: a name -> a module turning images ``(B, in_chans, H, W)`` into a map ``(B, C, h, w)``.

Entries: ``resnet18``, ``resnet34``, ``resnet50``, ``efficientnet_b5`` (timm CNNs), ``timm:<model name>`` (any timm
CNN, e.g. the tiny ``timm:test_resnet`` used by tests), and ``vssm`` / ``hybrid_resnet_vssm`` from
:mod:`mvmlm.models.vssm_encoders`::

    encoder = create_image_encoder("resnet34", in_chans=1, pretrained=True)
    features = encoder(images)            # (B, encoder.out_channels, ~H / encoder.stride, ~W / encoder.stride)

Grayscale: with ``in_chans=1`` the CNN stem is built for one channel. A pretrained 3-channel stem is then adapted
by timm, which sums its RGB kernels: the same stem output as replicating the gray image to 3 channels, at a third
of the stem's input cost. ``replicate_gray=True`` instead keeps the 3-channel stem and repeats the gray channel in
``forward`` (the weights then stay interchangeable with RGB timm checkpoints). Random-init models use one channel.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mvmlm.registry import Registry, UnknownNameError

__all__ = [
    "ImageEncoder",
    "TimmEncoder",
    "register_image_encoder",
    "create_image_encoder",
    "image_encoder_names",
    "image_encoder_accepts",
]


class ImageEncoder(nn.Module):
    """Base class of every registered encoder.

    Attributes:
        out_channels: channels ``C`` of the returned feature map.
        stride: input pixels per feature-map cell (the feature map is about ``H / stride`` x ``W / stride``).
    """

    out_channels: int
    stride: int

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_chans, H, W)`` images -> ``(B, out_channels, h, w)`` feature map."""
        raise NotImplementedError

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward instead of storing them (less memory, about 30% more compute)."""
        raise NotImplementedError


#: name -> ``fn(**kwargs) -> ImageEncoder``; a name ending in ``:`` is a family: ``create_image_encoder(
#: "family:variant", **kw)`` calls ``fn(variant, **kw)``
IMAGE_ENCODERS: Registry[Callable[..., ImageEncoder]] = Registry("image encoder")
register_image_encoder = IMAGE_ENCODERS.register


def image_encoder_names() -> list[str]:
    """The registered names (families shown as ``family:<name>``)."""
    return sorted(f"{name}<name>" if name.endswith(":") else name for name in IMAGE_ENCODERS)


def create_image_encoder(name: str, **kwargs: Any) -> ImageEncoder:
    """Build the encoder registered as ``name`` (or ``family:variant``) with ``kwargs``.

    Raises:
        ValueError: unknown name, listing the known ones.
    """
    family, sep, variant = name.partition(":")
    build = _builder(name)
    if sep and not variant:
        raise UnknownNameError(f"unknown image encoder {name!r}; known: {', '.join(image_encoder_names())}")
    return build(variant, **kwargs) if sep else build(**kwargs)


def _builder(name: str) -> Callable[..., ImageEncoder]:
    family, sep, _ = name.partition(":")
    if family + sep not in IMAGE_ENCODERS:
        raise UnknownNameError(f"unknown image encoder {name!r}; known: {', '.join(image_encoder_names())}")
    return IMAGE_ENCODERS.get(family + sep)


def image_encoder_accepts(name: str, argument: str) -> bool:
    """Whether the encoder registered as ``name`` takes keyword ``argument`` (e.g. ``pretrained``)."""
    parameters = inspect.signature(_builder(name)).parameters
    return argument in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _pretrained_error(model_name: str, hub_id: str | None, exc: Exception) -> RuntimeError:
    where = f"hub id {hub_id!r}" if hub_id else "its download URL"
    return RuntimeError(
        f"could not load pretrained weights of timm model {model_name!r} ({where}): {exc}\n"
        f"Provide them in one of these ways: pretrained_path=/path/to/weights.safetensors (a timm state dict); "
        f"pre-download into the Hugging Face cache on a machine with internet "
        f"(`huggingface-cli download {hub_id or 'timm/<model>'}`) and set HF_HUB_OFFLINE=1; "
        f"or train from scratch with `pretrained: false`."
    )


class TimmEncoder(ImageEncoder):
    """A timm CNN trunk without its head; ``forward`` returns ``forward_features`` (the last stage's feature map).

    Args:
        model_name: a timm model name (a CNN: its ``forward_features`` must return ``(B, C, h, w)``).
        in_chans: channels of the input images (1 for mammograms).
        pretrained: load timm's ImageNet weights (Hugging Face hub or its cache).
        pretrained_path: load a local timm state dict file (``.safetensors`` or a weights-only ``.pth``) instead.
        replicate_gray: with ``in_chans=1``, keep a 3-channel stem and repeat the gray channel in ``forward``.
        drop_path_rate: stochastic depth rate.
        **timm_kwargs: passed to ``timm.create_model``.
    """

    def __init__(
        self,
        model_name: str,
        *,
        in_chans: int = 1,
        pretrained: bool = False,
        pretrained_path: str | None = None,
        replicate_gray: bool = False,
        drop_path_rate: float = 0.0,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        import timm

        if replicate_gray and in_chans != 1:
            raise ValueError(f"replicate_gray needs in_chans=1, got in_chans={in_chans}")
        self.model_name = model_name
        self.in_chans = in_chans
        self.replicate_gray = replicate_gray
        kwargs: dict[str, Any] = dict(num_classes=0, global_pool="", drop_path_rate=drop_path_rate, **timm_kwargs)
        if pretrained_path:
            path = Path(pretrained_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"pretrained_path for timm model {model_name!r} not found: {path}")
            kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
        stem_chans = 3 if replicate_gray else in_chans
        load = bool(pretrained or pretrained_path)
        try:
            self.trunk = timm.create_model(model_name, pretrained=load, in_chans=stem_chans, **kwargs)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ValueError(f"timm has no model {model_name!r}") from None
            raise
        except OSError as exc:  # hub/cache/URL unreachable: huggingface_hub and urllib errors are OSErrors
            if not load or pretrained_path:
                raise
            cfg = timm.models.get_pretrained_cfg(model_name)
            raise _pretrained_error(model_name, getattr(cfg, "hf_hub_id", None), exc) from exc
        self.out_channels = int(self.trunk.num_features)
        self.stride = int(self.trunk.feature_info[-1]["reduction"])

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{self.model_name}: expected images (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        if self.replicate_gray:
            x = x.expand(-1, 3, -1, -1)
        features = self.trunk.forward_features(x)
        if features.ndim != 4:
            raise ValueError(
                f"timm model {self.model_name!r} returns {tuple(features.shape)} from forward_features, "
                "not a feature map (B, C, h, w); use a CNN"
            )
        return features

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)


for _name in ("resnet18", "resnet34", "resnet50", "efficientnet_b5"):
    register_image_encoder(_name)(functools.partial(TimmEncoder, _name))
register_image_encoder("timm:")(TimmEncoder)


# Encoders defined in their own modules register themselves when imported (after the registry above exists).
for _module in ("mvmlm.models.vssm_encoders", "mvmlm.models.mambavision"):
    importlib.import_module(_module)
