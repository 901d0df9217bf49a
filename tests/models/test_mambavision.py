"""The ``mambavision_hybrid`` backbone at tiny sizes: forward/backward, frozen stages, SeqMoE gates, windows."""

from __future__ import annotations

import pytest
import torch

from mvmlm.models.image_encoders import create_image_encoder
from mvmlm.models.mambavision import SIZES, MambaVisionHybrid
from mvmlm.models.mambavision_blocks import HybridStage, window_partition, window_reverse

TINY = dict(depths=[1, 1, 2, 2], dim=8, in_dim=4, heads=[1, 1, 2, 2], drop_path_rate=0.0)


def _tiny(**kwargs) -> MambaVisionHybrid:
    torch.manual_seed(0)
    return create_image_encoder("mambavision_hybrid", **{**TINY, **kwargs})


@pytest.mark.parametrize("seqmoe", [True, False])
def test_forward_backward_shape_and_gradients(seqmoe):
    model = _tiny(seqmoe=seqmoe)
    out = model(torch.randn(2, 1, 64, 96))
    assert out.shape == (2, model.out_channels, 2, 3) and model.out_channels == 64 and model.stride == 32
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert bool(model.seqmoe_gates()) == seqmoe


def test_pretrained_weights_load_by_prefix_and_a_mismatch_is_refused(tmp_path, caplog):
    from safetensors.torch import save_file

    source = _tiny().eval()
    path = tmp_path / "model.safetensors"
    save_file({f"image.encoder.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(path))
    with caplog.at_level("WARNING"):
        loaded = _tiny(pretrained_path=str(path), pretrained_prefix="image.encoder.", freeze_stages=2).eval()
    assert "randomly initialised" not in caplog.text
    torch.manual_seed(1)
    x = torch.randn(1, 1, 64, 64)
    torch.testing.assert_close(loaded(x), source(x))
    with pytest.raises(ValueError, match="does not fit"):
        _tiny(dim=16, pretrained_path=str(path), pretrained_prefix="image.encoder.")
    with pytest.raises(ValueError, match="no tensor named"):
        _tiny(pretrained_path=str(path), pretrained_prefix="text.")
    _tiny(freeze_stages=1)
    assert "freezing 1 randomly initialised stage" in caplog.text


def test_frozen_stages_get_no_gradient_and_keep_batchnorm_statistics():
    model = _tiny(freeze_stages=2).train()
    frozen = dict(model.stages[:2].named_parameters())
    running = model.stages[0].blocks[0].body[1].running_mean.clone()
    model(torch.randn(2, 1, 64, 64)).mean().backward()
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen.values())
    assert model.stem[0].weight.grad is not None  # the patch embedding is fine-tuned
    assert model.stages[2].blocks[0].mixer.in_proj.weight.grad is not None
    torch.testing.assert_close(model.stages[0].blocks[0].body[1].running_mean, running)
    assert not model.stages[1].training and model.stages[2].training


def test_seqmoe_gates_are_logged_per_block_and_inside_0_1():
    model = _tiny(seqmoe=True)
    model(torch.randn(3, 1, 64, 64))
    gates = model.gate_values()
    assert list(gates) == ["stage3", "stage4"] and [len(g) for g in gates.values()] == [2, 2]
    assert gates["stage3"][0].shape == (3, 32)  # one window per image at the default window (the whole map)
    for values in gates.values():
        for gate in values:
            assert ((gate > 0) & (gate < 1)).all()
    assert set(model.seqmoe_gates()) == {"stage3.block0", "stage3.block1", "stage4.block0", "stage4.block1"}


def test_hybrid_stage_puts_mamba_first_and_attention_second():
    stage = HybridStage(8, 3, heads=2, downsample=False)
    assert [block.attention for block in stage.blocks] == [False, False, True]


def _global_attention(block, x: torch.Tensor) -> torch.Tensor:
    """Reference: one attention over every position of ``(B, C, H, W)``, with the block's weights."""
    tokens = block.norm1(x.flatten(2).transpose(1, 2))
    b, n, c = tokens.shape
    q, k, v = block.mixer.qkv(tokens).view(b, n, 3, 2, c // 2).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-1, -2) / (c // 2) ** 0.5).softmax(-1)
    mixed = block.mixer.proj((weights @ v).transpose(1, 2).reshape(b, n, c))
    out = x.flatten(2).transpose(1, 2) + mixed
    out = out + block.mlp(block.norm2(out))
    return out.transpose(1, 2).reshape(x.shape)


@pytest.mark.parametrize("window", [0, 5, 16])
def test_window_covering_the_map_equals_global_attention(window):
    torch.manual_seed(0)
    stage = HybridStage(8, 1, heads=2, window_size=window, downsample=False)
    stage.blocks[0] = type(stage.blocks[0])(8, "attention", heads=2)  # a single attention block
    x = torch.randn(2, 8, 5, 4)
    torch.testing.assert_close(stage(x), _global_attention(stage.blocks[0], x), rtol=1e-4, atol=1e-5)


def test_small_window_is_local_and_padding_does_not_leak():
    torch.manual_seed(0)
    stage = HybridStage(8, 1, heads=2, window_size=3, downsample=False)
    stage.blocks[0] = type(stage.blocks[0])(8, "attention", heads=2)
    x = torch.randn(1, 8, 5, 4)
    assert not torch.allclose(stage(x), _global_attention(stage.blocks[0], x), atol=1e-4)
    out = stage(x)
    corner = x[..., 3:5, 3:4]  # the bottom-right window: 2 real tokens and 7 padded ones, which must be ignored
    torch.testing.assert_close(out[..., 3:5, 3:4], _global_attention(stage.blocks[0], corner), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[..., :3, :3], _global_attention(stage.blocks[0], x[..., :3, :3]))


def test_window_partition_round_trips_with_padding():
    x = torch.randn(2, 5, 7, 3)
    tokens, valid, padded = window_partition(x, (2, 3))
    assert tokens.shape == (2 * 3 * 3, 6, 3) and padded == (6, 9) and int(valid.sum()) == 2 * 35
    torch.testing.assert_close(window_reverse(tokens, (2, 3), padded, (5, 7)), x)


def test_sizes_match_mambavision_parameter_counts():
    with torch.device("meta"):  # counts only, no memory or init work
        model = MambaVisionHybrid(size="T", seqmoe=False)
    backbone = sum(p.numel() for p in model.parameters())
    assert abs(backbone + 640 * 1000 + 1000 - 31.8e6) < 0.1e6  # MambaVision-T: 31.8 M with its 1000-class head
    assert SIZES["L"]["dim"] == 196 and SIZES["L"]["depths"] == (3, 3, 10, 5)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown size"):
        MambaVisionHybrid(size="XXL")
    with pytest.raises(ValueError, match="freeze_stages"):
        _tiny(freeze_stages=5)
    with pytest.raises(ValueError, match="heads"):
        _tiny(heads=[1, 1, 3, 2])
    with pytest.raises(ValueError, match="expected images"):
        _tiny()(torch.randn(1, 3, 32, 32))


def test_grad_checkpointing_gives_the_same_gradients():
    model = _tiny()
    x = torch.randn(1, 1, 64, 64)
    model(x).sum().backward()
    expected = model.stem[0].weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    torch.testing.assert_close(model.stem[0].weight.grad, expected, rtol=1e-4, atol=1e-6)
