"""Augmentation on the training device (``data.augment_on``): the loader reads, the accelerator transforms.

With device augmentation the loader workers only read the cache's stored uint16 values and draw each image's affine
parameters (:meth:`DeviceAugment.draw`: the same draws, in the same order, as :class:`~mvmlm.data.transforms.
RandomAffine` would make in their place, so a seed gives the same parameters either way and a resumed run redraws
them exactly). Batches travel as uint16 (half the bytes of float32; pinned memory, non-blocking copies) and the
trainer's batch hook (``Engine.fit(on_device=...)``, built on :meth:`DeviceAugment.__call__`) converts them to float
[0, 1] on the device, resizes them to the network input and applies the whole batch's affine maps in one
``affine_grid`` / ``grid_sample``. Evaluation batches are read as float and never augmented.

The result equals the CPU transform up to float rounding of the sampling grid: max abs difference <= 1e-3 on [0, 1]
images (:data:`TOLERANCE`; measured ~1e-5 on smooth images, up to 3e-4 next to one-pixel steps at 1520x912).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mvmlm.config import AugmentConfig, ConfigError, DataConfig
from mvmlm.data.cache import CACHE_SCALE
from mvmlm.data.transforms import RandomAffine

__all__ = [
    "AUGMENT_ON",
    "TOLERANCE",
    "IDENTITY",
    "augment_on_device",
    "device_augment_for",
    "pack_params",
    "affine_theta",
    "affine_batch",
    "to_float",
    "DeviceAugment",
]

AUGMENT_ON = ("auto", "loader", "device")
#: max abs difference between :func:`affine_batch` and the CPU transform on [0, 1] images (grid rounding)
TOLERANCE = 1e-3
#: the packed parameters of no change: angle (degrees), translate x, y (pixels), scale, flip (0 / 1)
IDENTITY = (0.0, 0.0, 0.0, 1.0, 0.0)

#: ``resize(images (N, C, H, W), size) -> (N, C, *size)``: a trainer's resize to its network input
Resize = Callable[[Tensor, Sequence[int]], Tensor]


def augment_on_device(setting: str, device: torch.device) -> bool:
    """``data.augment_on`` for a run on ``device``: ``device``, or ``auto`` on a CUDA device."""
    if setting not in AUGMENT_ON:
        raise ConfigError(f"key 'data.augment_on': must be one of {', '.join(AUGMENT_ON)}, got {setting!r}")
    return setting == "device" or (setting == "auto" and torch.device(device).type == "cuda")


def device_augment_for(
    data: DataConfig, device: torch.device, size: Sequence[int] = (), resize: Resize | None = None
) -> DeviceAugment | None:
    """A training run's :class:`DeviceAugment` of ``data.augment`` where ``data.augment_on`` puts it on ``device``;
    None where the loader augments."""
    return DeviceAugment(data.augment, size, resize) if augment_on_device(data.augment_on, device) else None


def pack_params(params: dict) -> Tensor:
    """One draw of :meth:`RandomAffine.sample` as a ``(5,)`` float32 tensor (angle, tx, ty, scale, flip)."""
    (tx, ty), flip = params["translate"], float(params["flip"])
    return torch.tensor([params["angle"], tx, ty, params["scale"], flip])


def affine_theta(params: Tensor, height: int, width: int) -> Tensor:
    """``(N, 2, 3)`` ``affine_grid`` matrices (``align_corners=False``) of packed ``params`` ``(N, 5)``.

    The inverse map torchvision's ``affine`` builds about the image centre (no shear), in normalised coordinates;
    a flip after it mirrors the output, i.e. negates the first column.
    """
    params = params.to(torch.float64 if params.device.type != "mps" else torch.float32)
    angle, tx, ty, scale, flip = params.unbind(-1)
    rad = angle * (math.pi / 180.0)
    cos, sin = torch.cos(rad) / scale, torch.sin(rad) / scale
    sign = 1.0 - 2.0 * flip
    row0 = [cos * sign, sin * (height / width), (-cos * tx - sin * ty) * (2.0 / width)]
    row1 = [-sin * (width / height) * sign, cos, (sin * tx - cos * ty) * (2.0 / height)]
    return torch.stack([torch.stack(row0, -1), torch.stack(row1, -1)], -2)


def _grid(theta: Tensor, height: int, width: int) -> Tensor:
    """``F.affine_grid(theta, (N, C, H, W), align_corners=False)`` as two broadcast sums (a quarter of its time on
    CPU, where it is a matrix product per pixel)."""
    kw = {"device": theta.device, "dtype": theta.dtype}
    xs = torch.linspace(-1.0, 1.0, width, **kw) * ((width - 1) / width)
    ys = (torch.linspace(-1.0, 1.0, height, **kw) * ((height - 1) / height))[:, None]
    t = theta[:, :, :, None, None]
    grid = torch.empty(theta.shape[0], height, width, 2, **kw)
    for k in range(2):
        torch.add(t[:, k, 0] * xs, t[:, k, 1] * ys + t[:, k, 2], out=grid[..., k])
    return grid


def affine_batch(images: Tensor, params: Tensor) -> Tensor:
    """Each image of ``images`` ``(N, C, H, W)`` (float) transformed by its row of ``params`` ``(N, 5)``.

    Bilinear, zero outside; as torchvision's ``fill=0``, a ones channel sampled alongside weights the border pixels
    by their in-bounds share.
    """
    height, width = images.shape[-2:]
    grid = _grid(affine_theta(params, height, width).to(device=images.device, dtype=images.dtype), height, width)
    ones = torch.ones_like(images[:, :1])
    out = F.grid_sample(torch.cat([images, ones], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, :-1] * out[:, -1:]


def to_float(values: Tensor) -> Tensor:
    """Stored uint16 values as float32 [0, 1] (what :func:`~mvmlm.data.cache.from_cache_values` gives on the CPU)."""
    return values.to(torch.float32) * (1.0 / CACHE_SCALE)


class DeviceAugment:
    """The two halves of device augmentation for one trainer.

    Args:
        cfg: the affine's ranges (None, or ``enabled: false``: convert and resize only).
        size: the network input ``(H, W)`` (empty: as cached); parameters are drawn for it.
        resize: the trainer's resize to ``size`` (the same function its CPU path uses; batched).
    """

    def __init__(self, cfg: AugmentConfig | None, size: Sequence[int] = (), resize: Resize | None = None) -> None:
        self.affine = RandomAffine(cfg) if cfg is not None and cfg.enabled else None
        self.size, self.resize = tuple(size), resize
        if self.size and resize is None:
            raise ValueError("DeviceAugment: a size needs its resize function")

    def draw(self, shape: Sequence[int], generator: torch.Generator | None = None) -> Tensor:
        """Loader side: the packed parameters for an image read at ``shape`` (``(..., H, W)``), from ``generator``
        (else torch's global generator, as ``RandomAffine`` draws inside ``SeededItems``)."""
        if self.affine is None:
            return torch.tensor(IDENTITY)
        height, width = self.size or tuple(shape[-2:])
        return pack_params(RandomAffine(self.affine.cfg, generator).sample(height, width))

    def __call__(self, values: Tensor, params: Tensor | None = None) -> Tensor:
        """Device side: uint16 ``values`` ``(..., C, H, W)`` -> float, resized and (with ``params`` ``(..., 5)``)
        transformed, shaped ``(..., C, *size)``."""
        lead, (channels, height, width) = values.shape[:-3], values.shape[-3:]
        images = to_float(values.reshape(-1, channels, height, width))
        if self.size and (height, width) != self.size:
            images = self.resize(images, self.size)
        if params is not None and self.affine is not None:
            images = affine_batch(images, params.reshape(-1, params.shape[-1]))
        return images.reshape(*lead, *images.shape[1:])

    def images(self, batch: dict) -> dict:
        """The engine's batch hook for batches of ``images`` ``(B, V, 1, H, W)`` and ``affine`` ``(B, V, 5)``."""
        return {**batch, "images": self(batch["images"], batch["affine"])}
