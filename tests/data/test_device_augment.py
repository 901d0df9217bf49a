"""Device augmentation: the same parameters as the CPU transform, the same images within the documented tolerance,
reproducible per seed, and applied by the engine to each training batch before the loss."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mvmlm.config import AugmentConfig, ConfigError, OptimConfig, TrainConfig
from mvmlm.data import schema
from mvmlm.data.cache import from_cache_values, read_cache_values, save_cached, to_cache_values
from mvmlm.data.device_augment import TOLERANCE, DeviceAugment, affine_batch, augment_on_device
from mvmlm.data.exams import BreastDataset, build_breasts
from mvmlm.data.transforms import RandomAffine, SeededItems
from mvmlm.training import Engine, Loss

WIDE = AugmentConfig(degrees=30.0, translate=0.1, scale=[0.8, 1.2], hflip=0.5)  # every parameter moves


def _images(n: int, height: int = 48, width: int = 28, seed: int = 0) -> torch.Tensor:
    """Smooth random images with a bright one-pixel line (a sharp edge), float [0, 1] as the cache stores them."""
    g = torch.Generator().manual_seed(seed)
    images = F.interpolate(torch.rand(n, 1, 6, 4, generator=g), (height, width), mode="bilinear")
    images[..., height // 3, 4:20] = 1.0
    return torch.from_numpy(from_cache_values(to_cache_values(images.numpy())))


def _as_float(values: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(from_cache_values(values.numpy()))


def test_device_result_equals_the_cpu_transform_with_the_same_seed():
    values = torch.from_numpy(to_cache_values(_images(12).numpy()))
    augment = DeviceAugment(WIDE)
    params = torch.stack([augment.draw(values.shape, torch.Generator().manual_seed(s)) for s in range(12)])
    device = augment(values, params)
    cpu = torch.stack(
        [RandomAffine(WIDE, torch.Generator().manual_seed(s))(_as_float(v)) for s, v in enumerate(values)]
    )
    assert params[:, 4].sum() not in (0, 12)  # flipped and unflipped samples in one batch
    assert device.shape == cpu.shape == (12, 1, 48, 28) and device.dtype == torch.float32
    assert (device - cpu).abs().max() <= TOLERANCE
    assert (device - _as_float(values)).abs().max() > 0.1  # it did transform


def test_draws_are_the_parameters_random_affine_samples():
    drawn = DeviceAugment(WIDE).draw((1, 48, 28), torch.Generator().manual_seed(5))
    sampled = RandomAffine(WIDE, torch.Generator().manual_seed(5)).sample(48, 28)
    expected = [sampled["angle"], *sampled["translate"], sampled["scale"], float(sampled["flip"])]
    assert drawn.tolist() == pytest.approx(expected)


def test_draws_are_reproducible_per_seed():
    augment = DeviceAugment(WIDE)
    first = [augment.draw((48, 28), torch.Generator().manual_seed(3)) for _ in range(2)]
    other = augment.draw((48, 28), torch.Generator().manual_seed(4))
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], other)
    images = _images(1)
    assert torch.equal(affine_batch(images, first[0][None]), affine_batch(images, first[1][None]))


def test_draws_follow_the_network_input_size_and_resize_on_the_device():
    augment = DeviceAugment(AugmentConfig(translate=0.2), size=(24, 14), resize=lambda x, s: F.interpolate(x, s))
    draws = torch.stack([augment.draw((48, 28), torch.Generator().manual_seed(s)) for s in range(200)])
    assert draws[:, 1].abs().max() <= round(0.2 * 14) and draws[:, 2].abs().max() > round(0.2 * 14)
    out = augment(torch.zeros(3, 2, 1, 48, 28, dtype=torch.uint16), draws[:6].reshape(3, 2, 5))
    assert out.shape == (3, 2, 1, 24, 14)


def test_disabled_augmentation_only_converts():
    values = torch.from_numpy(to_cache_values(_images(2).numpy()))
    augment = DeviceAugment(AugmentConfig(enabled=False))
    params = torch.stack([augment.draw(values.shape) for _ in range(2)])
    assert torch.equal(augment(values, params), _as_float(values))


def test_augment_on_resolves_auto_by_the_device_and_rejects_unknown_values():
    assert augment_on_device("auto", torch.device("cuda", 0)) and not augment_on_device("auto", torch.device("cpu"))
    assert augment_on_device("device", torch.device("cpu")) and not augment_on_device("loader", torch.device("cuda"))
    with pytest.raises(ConfigError, match="data.augment_on"):
        augment_on_device("gpu", torch.device("cpu"))


@pytest.fixture
def breasts(tmp_path) -> pd.DataFrame:
    """Three breasts (one without an MLO view) of cached smooth images."""
    images = _images(5, seed=1).numpy()[:, 0]
    rows = []
    for i, (patient, laterality, view) in enumerate(
        [("p1", "L", "CC"), ("p1", "L", "MLO"), ("p1", "R", "CC"), ("p2", "L", "CC"), ("p2", "L", "MLO")]
    ):
        image_id = f"{patient}{laterality}{view}"
        path = save_cached(tmp_path / f"{image_id}.npy", images[i])
        rows.append(
            {
                "dataset": "toy",
                "patient_id": patient,
                "exam_id": "e1",
                "image_id": image_id,
                "path": f"{image_id}.dcm",
                "laterality": laterality,
                "view": view,
                "split": "train",
                "cache_path": str(path),
            }
        )
    return build_breasts(schema.conform(pd.DataFrame(rows)))


def test_seeded_training_items_give_the_same_images_on_the_loader_and_on_the_device(breasts):
    loader_side = SeededItems(BreastDataset(breasts, labels=(), transform=RandomAffine(WIDE)), seed=9)
    augment = DeviceAugment(WIDE)
    device_side = SeededItems(BreastDataset(breasts, labels=(), device=augment), seed=9)
    drawn = []
    for epoch in (0, 1):
        loader_side.set_epoch(epoch)
        device_side.set_epoch(epoch)
        cpu = next(iter(DataLoader(loader_side, batch_size=3)))
        raw = next(iter(DataLoader(device_side, batch_size=3)))
        assert raw["images"].dtype == torch.uint16 and raw["affine"].shape == (3, 2, 5)
        assert torch.equal(raw["mask"], cpu["mask"]) and not raw["mask"].all()
        moved = augment.images(raw)["images"]
        assert (moved - cpu["images"]).abs().max() <= TOLERANCE
        drawn.append(raw["affine"])
    assert not torch.equal(*drawn)  # each epoch draws anew


def test_device_items_hold_the_stored_values(breasts):
    item = BreastDataset(breasts, labels=(), device=DeviceAugment(None))[0]
    stored = read_cache_values(breasts.loc[0, "CC_cache_path"])
    assert torch.equal(item["images"][0, 0], torch.from_numpy(stored))
    assert item["affine"].tolist() == [[0.0, 0.0, 0.0, 1.0, 0.0]] * 2


def test_engine_applies_the_hook_to_training_batches_before_the_loss(tmp_path):
    seen = []

    def loss(model: nn.Module, batch: dict) -> Loss:
        seen.append(batch["x"].dtype)
        return Loss(model(batch["x"]).pow(2).mean())

    data = [{"x": torch.full((3,), i, dtype=torch.uint16)} for i in range(4)]
    engine = Engine(TrainConfig(epochs=1, device="cpu", progress=False), OptimConfig(), tmp_path)
    engine.fit(nn.Linear(3, 1), DataLoader(data, batch_size=2), loss=loss, on_device=lambda b: {"x": b["x"].float()})
    assert seen == [torch.float32, torch.float32]
