import pytest
import torch

from mvmlm.data.transforms import AugmentConfig, RandomAffine, build_transform


def _image() -> torch.Tensor:
    image = torch.zeros(1, 40, 24)
    image[:, 5:35, :15] = torch.linspace(0.2, 1.0, 15)  # a breast-like block against the left edge
    return image


def test_train_augmentation_keeps_shape_and_changes_pixels():
    out = build_transform(True, generator=torch.Generator().manual_seed(0))(_image())
    assert out.shape == (1, 40, 24) and out.dtype == torch.float32
    assert not torch.equal(out, _image())


def test_augmentation_is_reproducible_with_a_seeded_generator():
    first = build_transform(True, generator=torch.Generator().manual_seed(7))
    second = build_transform(True, generator=torch.Generator().manual_seed(7))
    other = build_transform(True, generator=torch.Generator().manual_seed(8))
    outs = [first(_image()), first(_image())]
    assert torch.equal(outs[0], second(_image())) and torch.equal(outs[1], second(_image()))
    assert not torch.equal(outs[0], outs[1])  # each call draws new parameters
    assert not torch.equal(outs[0], other(_image()))


def test_sampled_parameters_stay_within_the_hybrid_paper_ranges():
    transform = RandomAffine(generator=torch.Generator().manual_seed(0))
    draws = [transform.sample(100, 60) for _ in range(300)]
    angles = [d["angle"] for d in draws]
    assert -10 <= min(angles) < -8 and 8 < max(angles) <= 10
    assert all(abs(d["translate"][0]) <= 3 and abs(d["translate"][1]) <= 5 for d in draws)
    assert all(0.95 <= d["scale"] <= 1.05 for d in draws)
    assert not any(d["flip"] for d in draws)  # off by default: the chest wall stays on the left


def test_flip_only_config_mirrors_the_image():
    cfg = AugmentConfig(degrees=0.0, translate=0.0, scale=[1.0, 1.0], hflip=1.0)
    out = RandomAffine(cfg, torch.Generator().manual_seed(0))(_image())
    assert torch.allclose(out, torch.flip(_image(), dims=[-1]))


def test_eval_transform_is_the_identity():
    image = _image()
    assert build_transform(False)(image) is image


BAD_CONFIGS = [
    AugmentConfig(scale=[0.0, 1.0]),
    AugmentConfig(scale=[1.1, 0.9]),
    AugmentConfig(degrees=-1),
    AugmentConfig(translate=1),
]


@pytest.mark.parametrize("cfg", BAD_CONFIGS)
def test_invalid_augmentation_is_rejected(cfg):
    with pytest.raises(ValueError, match="invalid augmentation"):
        RandomAffine(cfg)
