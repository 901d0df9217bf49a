"""Image encoder registry: timm CNN entries, grayscale handling, local weights, clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from mvmlm.models.image_encoders import TimmEncoder, create_image_encoder, image_encoder_names

CNN_ENTRIES = {  # name: (out_channels, stride)
    "resnet18": (512, 32),
    "resnet34": (512, 32),
    "resnet50": (2048, 32),
    "efficientnet_b5": (2048, 32),
    "timm:test_resnet": (96, 32),
    "timm:test_efficientnet": (256, 32),
}


def test_registry_lists_the_cnn_entries():
    names = image_encoder_names()
    for name in ("resnet18", "resnet34", "resnet50", "efficientnet_b5", "timm:<name>"):
        assert name in names


@pytest.mark.parametrize("name", CNN_ENTRIES)
def test_cnn_entry_forward_backward(name):
    torch.manual_seed(0)
    encoder = create_image_encoder(name, in_chans=1, pretrained=False)
    assert (encoder.out_channels, encoder.stride) == CNN_ENTRIES[name]
    images = torch.randn(2, 1, 80, 40, requires_grad=True)
    features = encoder(images)
    assert features.shape == (2, encoder.out_channels, math.ceil(80 / encoder.stride), math.ceil(40 / encoder.stride))
    features.square().mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown image encoder 'resnet9'.*resnet34"):
        create_image_encoder("resnet9")
    with pytest.raises(ValueError, match="unknown image encoder 'timm:'"):
        create_image_encoder("timm:")
    with pytest.raises(ValueError, match="timm has no model 'no_such_net'"):
        create_image_encoder("timm:no_such_net")


def test_wrong_input_channels_are_refused():
    encoder = create_image_encoder("timm:test_resnet", in_chans=1)
    with pytest.raises(ValueError, match=r"expected images \(B, 1, H, W\)"):
        encoder(torch.zeros(1, 3, 32, 32))


def test_non_cnn_timm_model_is_refused():
    encoder = create_image_encoder("timm:test_vit", in_chans=1, img_size=32)
    with pytest.raises(ValueError, match="not a feature map"):
        encoder(torch.zeros(1, 1, 32, 32))


@pytest.fixture(scope="module")
def rgb_weights(tmp_path_factory):
    """A 3-channel timm test_resnet state dict saved as safetensors, as a user's local weight file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model.state_dict()


def test_pretrained_path_loads_local_weights(rgb_weights):
    path, state = rgb_weights
    encoder = TimmEncoder("test_resnet", in_chans=1, replicate_gray=True, pretrained_path=str(path))
    loaded = encoder.trunk.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_gray_stem_equals_replicated_gray(rgb_weights):
    """Summing a pretrained stem's RGB kernels (in_chans=1) == feeding the gray image as 3 equal channels."""
    path, _ = rgb_weights
    summed = TimmEncoder("test_resnet", in_chans=1, pretrained_path=str(path)).eval()
    replicated = TimmEncoder("test_resnet", in_chans=1, replicate_gray=True, pretrained_path=str(path)).eval()
    stem = summed.trunk.pretrained_cfg["first_conv"] + ".weight"
    assert summed.trunk.get_parameter(stem).shape[1] == 1 and replicated.trunk.get_parameter(stem).shape[1] == 3
    images = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(summed(images), replicated(images), rtol=1e-4, atol=1e-5)


def test_missing_pretrained_path_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        create_image_encoder("resnet18", pretrained_path=str(tmp_path / "nope.safetensors"))


def test_replicate_gray_needs_one_channel():
    with pytest.raises(ValueError, match="replicate_gray needs in_chans=1"):
        create_image_encoder("timm:test_resnet", in_chans=3, replicate_gray=True)


def test_unreachable_hub_weights_say_how_to_provide_them(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError) as info:
        create_image_encoder("resnet34", pretrained=True)
    message = str(info.value)
    for hint in ("resnet34", "timm/resnet34", "pretrained_path=", "huggingface-cli download", "pretrained: false"):
        assert hint in message


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    encoder = create_image_encoder("timm:test_resnet", in_chans=1)
    images = torch.randn(2, 1, 64, 64)

    def grads(enable: bool) -> list[torch.Tensor]:
        encoder.zero_grad()
        encoder.set_grad_checkpointing(enable)
        encoder(images.requires_grad_(True)).sum().backward()
        return [p.grad.clone() for p in encoder.parameters()]

    for plain, checkpointed in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(plain, checkpointed)
