"""Image augmentation for training; evaluation uses the cached images as they are (already cropped and resized).

Training follows the hybrid ResNet-VSSM paper (3.1): a random affine map with rotation within +-10 degrees,
translation within +-5 % of the image size and scaling in [0.95, 1.05]. The paper also flips horizontally with
probability 0.5; that moves the chest wall to the right, so it is off by default here (``hflip``).

With a ``torch.Generator`` the parameters come from it (reproducible); without, from torch's global generator,
which a DataLoader seeds per worker from its own generator, so seeded loaders are reproducible too.
:mod:`mvmlm.data.device_augment` applies the same draws to whole batches on the training device.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from mvmlm.config import AugmentConfig

__all__ = ["AugmentConfig", "RandomAffine", "build_transform", "derive_seed", "SeededItems"]

Transform = Callable[[torch.Tensor], torch.Tensor]


class RandomAffine:
    """Random rotation, translation, scaling (and optional flip) of a ``(C, H, W)`` image; shape is kept."""

    def __init__(self, cfg: AugmentConfig | None = None, generator: torch.Generator | None = None):
        self.cfg = cfg or AugmentConfig()
        low, high = self.cfg.scale
        if not 0 < low <= high or self.cfg.degrees < 0 or not 0 <= self.cfg.translate < 1:
            raise ValueError(f"invalid augmentation {self.cfg}: need degrees >= 0, 0 <= translate < 1, 0 < scale")
        self.generator = generator

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=self.generator).item()

    def sample(self, height: int, width: int) -> dict:
        """One draw of the parameters for an image of ``height x width``."""
        cfg = self.cfg
        return {
            "angle": self._uniform(-cfg.degrees, cfg.degrees),
            "translate": [
                round(self._uniform(-cfg.translate, cfg.translate) * width),
                round(self._uniform(-cfg.translate, cfg.translate) * height),
            ],
            "scale": self._uniform(*cfg.scale),
            "flip": self._uniform(0.0, 1.0) < cfg.hflip,
        }

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        params = self.sample(*image.shape[-2:])
        out = F.affine(
            image,
            angle=params["angle"],
            translate=params["translate"],
            scale=params["scale"],
            shear=[0.0, 0.0],
            interpolation=InterpolationMode.BILINEAR,
            fill=0.0,
        )
        return F.horizontal_flip(out) if params["flip"] else out


def _identity(image: torch.Tensor) -> torch.Tensor:
    return image


def build_transform(
    train: bool, cfg: AugmentConfig | None = None, generator: torch.Generator | None = None
) -> Transform:
    """The training augmentation (when ``cfg.enabled``), or the identity for evaluation."""
    return RandomAffine(cfg, generator) if train and (cfg is None or cfg.enabled) else _identity


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (independent streams for different ``(seed, epoch, index)``)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class SeededItems(Dataset):
    """A training set whose items draw their randomness (augmentation) from ``(seed, epoch, index)`` alone.

    Each item is made under a forked torch generator seeded by :func:`derive_seed`, so a resumed run redraws exactly
    what the interrupted one drew: the generator state saved with a checkpoint is already past the draws of the
    batch the loader prefetched, and worker processes draw in any order. The engine calls :meth:`set_epoch`.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, self.epoch, index))
            return self.dataset[index]
