"""MV-CLIP: both towers, logit scale, checkpoint round trip, image tower for downstream use."""

from __future__ import annotations

import math

import pytest
import torch

from mvmlm.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_weights
from mvmlm.models.mvclip import MVCLIP, load_image_tower


@pytest.fixture
def model(tiny_mvclip_config) -> MVCLIP:
    torch.manual_seed(0)
    return MVCLIP(tiny_mvclip_config).eval()


def test_forward_gives_normalised_features_and_the_initial_scale(model, reports):
    image_features, text_features, scale = model(torch.rand(3, 1, 64, 64), reports[:2])
    assert image_features.shape == (3, 16) and text_features.shape == (2, 16)
    torch.testing.assert_close(image_features.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text_features.norm(dim=-1), torch.ones(2))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_logit_scale_is_clamped_at_100(model):
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500.0))
    assert model.logit_scale_exp().item() == pytest.approx(100.0)


def test_text_hidden_size_is_read_and_kept_in_the_config(model):
    assert model.config.text.hidden_size == 32
    assert model.text.channel_map.in_features == 32


def test_encode_text_from_texts_equals_from_cached_states(model, reports, tmp_path):
    from_texts = model.encode_text(reports)
    cache = model.use_text_cache(tmp_path, store_dtype="float32")
    hidden, mask = cache(reports)
    torch.testing.assert_close(model.encode_text(hidden=hidden, mask=mask), from_texts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.encode_text(reports), from_texts, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="either texts or hidden"):
        model.encode_text(reports, hidden=hidden, mask=mask)


def test_save_load_round_trip_is_bit_exact(model, reports, tmp_path):
    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    model.save(tmp_path / "ckpt", metadata={"step": "7"})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    loaded = MVCLIP.load(tmp_path / "ckpt").eval()
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(model.encode_image(images), loaded.encode_image(images))
    assert torch.equal(model.encode_text(reports), loaded.encode_text(reports))


def test_frozen_text_weights_are_referenced_not_stored(model, tiny_bert_dir, tmp_path):
    model.save(tmp_path)
    keys = load_weights(tmp_path).keys()
    assert {k.split(".")[0] for k in keys} == {"image", "text", "logit_scale"}
    assert not any("embeddings" in k or "attention.self" in k for k in keys)
    assert str(tiny_bert_dir) in (tmp_path / CONFIG_NAME).read_text()


def test_load_image_tower_matches_the_full_model(model, tmp_path):
    model.save(tmp_path)
    tower = load_image_tower(tmp_path).eval()
    images = torch.rand(2, 1, 64, 64)
    embedding, tokens = tower(images, return_tokens=True)
    assert torch.equal(embedding, model.encode_image(images))
    assert tokens.shape == (2, 8, 32)


def test_loading_ignores_the_initial_pretrained_weights(tiny_mvclip_config, tmp_path):
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "init.safetensors"
    save_file(
        {k: v.contiguous() for k, v in timm.create_model("test_resnet", in_chans=1).state_dict().items()}, str(weights)
    )
    tiny_mvclip_config.image.encoder_kwargs["pretrained_path"] = str(weights)
    MVCLIP(tiny_mvclip_config).save(tmp_path / "ckpt")
    weights.unlink()  # the checkpoint no longer needs the initial weights
    assert isinstance(load_image_tower(tmp_path / "ckpt"), torch.nn.Module)


def test_pickle_checkpoints_are_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin, which is not loaded"):
        load_weights(tmp_path)


def test_grad_checkpointing_gives_the_same_gradients(model, reports):
    model.train()
    images = torch.rand(2, 1, 64, 64)
    hidden, mask = model.text_features(reports[:2])

    def grads(enable: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        image_features, text_features, scale = model(images, text_hidden=hidden, text_mask=mask)
        (scale * image_features @ text_features.T).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and any(k.startswith("text.") for k in plain)
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], msg=name)
