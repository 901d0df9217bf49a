"""Token transformer: shapes, resolution handling, padding masks, checkpointing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mvmlm.models.token_transformer import TokenLayer, TokenTransformer, linear

SMALL = dict(num_tokens=8, width=32, depth=2, heads=4)


@pytest.fixture
def image_side() -> TokenTransformer:
    torch.manual_seed(0)
    return TokenTransformer(24, 16, grid=(4, 3), **SMALL)


@pytest.fixture
def text_side() -> TokenTransformer:
    torch.manual_seed(0)
    return TokenTransformer(20, 16, **SMALL)


def test_feature_map_to_embedding_and_tokens(image_side):
    embedding, tokens = image_side(torch.randn(2, 24, 4, 3), return_tokens=True)
    assert embedding.shape == (2, 16)
    assert tokens.shape == (2, 8, 32)
    assert image_side.token_map.weight.shape == (8, 12)


def test_embedding_is_the_projected_max_over_tokens(image_side):
    embedding, tokens = image_side(torch.randn(2, 24, 4, 3), return_tokens=True)
    torch.testing.assert_close(embedding, image_side.proj(tokens.amax(dim=1)))


def test_other_resolution_is_resized_to_the_built_grid(image_side):
    larger = torch.randn(2, 24, 8, 6)
    resized = F.interpolate(larger, size=(4, 3), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(image_side(larger), image_side(resized))
    smaller = torch.randn(1, 24, 2, 2)
    assert image_side(smaller).shape == (1, 16)


@pytest.mark.parametrize("training", [True, False])
def test_padding_does_not_change_the_pooled_output(text_side, training):
    text_side.train(training)
    tokens = torch.randn(2, 5, 20)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    padded = torch.cat([tokens, 100 * torch.randn(2, 4, 20)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.long)], dim=1)
    with torch.set_grad_enabled(training):
        reference = text_side(tokens, mask)
        torch.testing.assert_close(text_side(padded, padded_mask), reference, rtol=1e-5, atol=1e-5)
        # a row's padded tokens are ignored: the short row equals itself unpadded
        torch.testing.assert_close(text_side(tokens[1:, :3]), reference[1:], rtol=1e-5, atol=1e-5)


def test_mask_must_match_and_leave_a_token(text_side):
    tokens = torch.randn(2, 5, 20)
    with pytest.raises(ValueError, match="does not match"):
        text_side(tokens, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="no unmasked token"):
        text_side(tokens, torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]))


def test_bad_inputs_are_refused(image_side, text_side):
    with pytest.raises(ValueError, match="built for token sequences"):
        text_side(torch.randn(1, 20, 4, 3))
    with pytest.raises(ValueError, match="not to feature maps"):
        image_side(torch.randn(1, 24, 4, 3), torch.ones(1, 12))
    with pytest.raises(ValueError, match=r"expected a feature map"):
        image_side(torch.randn(24, 4))
    with pytest.raises(ValueError, match="not divisible by heads"):
        TokenTransformer(8, 8, width=30, heads=8)


def test_grad_checkpointing_gives_the_same_gradients(image_side):
    features = torch.randn(2, 24, 4, 3)

    def grads(enable: bool) -> list[torch.Tensor]:
        image_side.zero_grad()
        image_side.set_grad_checkpointing(enable)
        image_side(features).sum().backward()
        return [p.grad.clone() for p in image_side.parameters()]

    for plain, checkpointed in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(plain, checkpointed)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("out_features", [5, 9])  # fewer and more than the 7 inputs
def test_linear_equals_f_linear_with_gradients(bias, out_features):
    torch.manual_seed(0)
    x = torch.randn(3, 7, 6).transpose(1, 2).requires_grad_()  # (3, 6, 7), not contiguous
    weight = torch.randn(out_features, 7, requires_grad=True)
    b = torch.randn(out_features, requires_grad=True) if bias else None
    leaves = [x, weight] + ([b] if bias else [])
    outputs = {}
    for name, fn in {"ours": linear, "torch": F.linear}.items():
        y = fn(x, weight, b)
        outputs[name] = (y, *torch.autograd.grad((y * torch.arange(float(out_features))).sum(), leaves))
    for ours, reference in zip(outputs["ours"], outputs["torch"], strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padded", [False, True])
def test_token_layer_equals_torch_encoder_layer(padded):
    """Same parameters (the checkpoint loads strictly), same outputs and gradients as nn.TransformerEncoderLayer."""
    torch.manual_seed(0)
    ours = TokenLayer(32, 4, 64, dropout=0.0)
    reference = torch.nn.TransformerEncoderLayer(32, 4, 64, 0.0, activation="gelu", batch_first=True, norm_first=True)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 9, 32, requires_grad=True)
    padding = torch.tensor([[False] * 9, [False] * 6 + [True] * 3]) if padded else None
    results = []
    for layer, call in (
        (ours, lambda: ours(x, padding)),
        (reference, lambda: reference(x, src_key_padding_mask=padding)),
    ):
        y = call()
        results.append((y, *torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
