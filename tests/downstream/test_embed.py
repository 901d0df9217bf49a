"""Embeddings: checkpoint / random / timm encoders, the on-disk cache and its key, pooling views per breast."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import downstream.common.embed as embed
from downstream.common.embed import (
    EmbedConfig,
    EncoderConfig,
    breast_embeddings,
    build_backbone,
    image_embeddings,
    pool_views,
)
from mvmlm.checkpoint import load_checkpoint_config, load_weights, save_checkpoint
from mvmlm.config import ConfigError
from mvmlm.data.exams import build_breasts
from mvmlm.data.preprocess import load_cached, read_cached_table
from mvmlm.models.mvclip import MVCLIPConfig, load_image_tower


@pytest.fixture(scope="module")
def table(downstream_data):
    return read_cached_table(downstream_data.table)


def _cfg(tmp_path, **kwargs) -> EmbedConfig:
    return EmbedConfig(**{"batch_size": 64, "cache": str(tmp_path / "emb"), "device": "cpu", **kwargs})


def test_checkpoint_embeddings_are_the_image_tower_outputs(table, random_checkpoint, tmp_path):
    out = image_embeddings(table, EncoderConfig(checkpoint=str(random_checkpoint)), _cfg(tmp_path))
    assert out.vectors.shape == (len(table), 16) and out.paths == sorted(table.cache_path)
    tower = load_image_tower(random_checkpoint).eval()
    with torch.no_grad():
        direct = tower(torch.from_numpy(load_cached(out.paths[3]))[None, None]).numpy()
    np.testing.assert_allclose(out.vectors[3], direct[0], rtol=1e-4, atol=1e-5)


def test_encoder_features_are_the_towers_pooled_feature_map_and_key_their_own_cache(table, random_checkpoint, tmp_path):
    encoder = EncoderConfig(checkpoint=str(random_checkpoint), features="encoder")
    out = image_embeddings(table, encoder, _cfg(tmp_path))
    tower = load_image_tower(random_checkpoint).eval()
    assert out.vectors.shape == (len(table), tower.encoder.out_channels)
    with torch.no_grad():
        direct = tower.encoder(torch.from_numpy(load_cached(out.paths[3]))[None, None]).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(out.vectors[3], direct[0], rtol=1e-4, atol=1e-5)
    image_embeddings(table, EncoderConfig(checkpoint=str(random_checkpoint)), _cfg(tmp_path))
    assert len(list((tmp_path / "emb").iterdir())) == 2  # the projected embedding is cached apart
    with pytest.raises(ConfigError, match="encoder features must be one of"):
        image_embeddings(table, EncoderConfig(checkpoint=str(random_checkpoint), features="tokens"), _cfg(tmp_path))


def test_cache_is_reused_and_keyed_by_the_weights(table, random_checkpoint, tmp_path, monkeypatch):
    encoder = EncoderConfig(checkpoint=str(random_checkpoint))
    first = image_embeddings(table, encoder, _cfg(tmp_path))
    monkeypatch.setattr(embed, "build_backbone", lambda cfg: pytest.fail("cache not used"))
    np.testing.assert_array_equal(image_embeddings(table, encoder, _cfg(tmp_path)).vectors, first.vectors)
    monkeypatch.undo()
    changed = tmp_path / "changed"
    weights = load_weights(random_checkpoint)
    weights["image.tokens.proj.weight"] = weights["image.tokens.proj.weight"] * 2  # a linear last layer: 2x output
    save_checkpoint(changed, weights, load_checkpoint_config(random_checkpoint, MVCLIPConfig))
    second = image_embeddings(table, EncoderConfig(checkpoint=str(changed)), _cfg(tmp_path))
    np.testing.assert_allclose(second.vectors, 2 * first.vectors, rtol=1e-4, atol=1e-5)
    assert len(list((tmp_path / "emb").iterdir())) == 2


def test_random_init_is_the_same_architecture_seeded(table, random_checkpoint, tmp_path):
    cfg = _cfg(tmp_path, cache="")
    subset = table.head(6)
    trained = image_embeddings(subset, EncoderConfig(checkpoint=str(random_checkpoint)), cfg).vectors
    random = [
        image_embeddings(subset, EncoderConfig(checkpoint=str(random_checkpoint), init="random", seed=s), cfg)
        for s in (1, 1, 2)
    ]
    assert random[0].vectors.shape == trained.shape
    np.testing.assert_array_equal(random[0].vectors, random[1].vectors)
    assert not np.allclose(random[0].vectors, random[2].vectors)
    assert not np.allclose(random[0].vectors, trained)


def test_timm_random_encoder_gives_pooled_features(table, tmp_path):
    out = image_embeddings(
        table.head(4), EncoderConfig(source="timm", name="timm:test_resnet", init="random"), _cfg(tmp_path)
    )
    assert out.vectors.shape == (4, 96) and np.isfinite(out.vectors).all()


def test_breasts_pool_their_present_views(table, random_checkpoint, tmp_path):
    breasts = build_breasts(table)
    out = image_embeddings(table, EncoderConfig(checkpoint=str(random_checkpoint)), _cfg(tmp_path))
    one_view = np.flatnonzero(~(breasts.CC_present & breasts.MLO_present).to_numpy())
    assert one_view.size, "the synthetic set plants an exam with a missing view"
    i = one_view[0]
    slot = "CC" if breasts.CC_present.iloc[i] else "MLO"
    for pool in ("mean", "max"):
        pooled = breast_embeddings(breasts, out, pool)
        np.testing.assert_allclose(pooled[i], out.rows([breasts[f"{slot}_cache_path"].iloc[i]])[0], rtol=1e-6)
    both = np.flatnonzero((breasts.CC_present & breasts.MLO_present).to_numpy())[0]
    views = out.rows([breasts.CC_cache_path.iloc[both], breasts.MLO_cache_path.iloc[both]])
    np.testing.assert_allclose(breast_embeddings(breasts, out, "max")[both], views.max(0), rtol=1e-6)


def test_bad_inputs_name_the_problem(table, tmp_path):
    with pytest.raises(ValueError, match="needs checkpoint"):
        image_embeddings(table, EncoderConfig(), _cfg(tmp_path))
    with pytest.raises(ValueError, match="unknown encoder source 'dino'"):
        image_embeddings(table, EncoderConfig(source="dino"), _cfg(tmp_path))
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        image_embeddings(table, EncoderConfig(checkpoint=str(tmp_path)), _cfg(tmp_path))
    with pytest.raises(ValueError, match="cache_path"):
        image_embeddings(table.drop(columns="cache_path"), EncoderConfig(), _cfg(tmp_path))
    with pytest.raises(ValueError, match="no present view"):
        pool_views(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.bool), "mean")
    with pytest.raises(ValueError, match="pooling"):
        pool_views(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), "median")


def test_timm_weights_from_a_file_are_loaded_and_key_the_cache(table, tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    reference = timm.create_model("test_resnet", in_chans=1, num_classes=0, global_pool="").eval()
    weights = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    kwargs = {"in_chans": 1, "pretrained_path": str(weights)}
    encoder = EncoderConfig(source="timm", name="timm:test_resnet", kwargs=kwargs)
    out = image_embeddings(table.head(3), encoder, _cfg(tmp_path))
    with torch.no_grad():
        direct = reference.forward_features(torch.from_numpy(load_cached(out.paths[0]))[None, None]).mean((2, 3))
    np.testing.assert_allclose(out.vectors[0], direct[0].numpy(), rtol=1e-4, atol=1e-5)
    before = embed.encoder_fingerprint(encoder)
    state = reference.state_dict()
    state["conv1.0.weight"] = state["conv1.0.weight"] + 1.0
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    assert embed.encoder_fingerprint(encoder)["weights"] != before["weights"]  # new weights, new cache entry


def test_encoders_without_downloadable_weights_take_local_ones(tmp_path):
    """mambavision_hybrid has no ``pretrained`` flag: ``init: pretrained`` passes only its pretrained_* arguments."""
    from safetensors.torch import save_file

    from mvmlm.models.image_encoders import create_image_encoder

    tiny = {"depths": [1, 1, 1, 1], "dim": 8, "in_dim": 4, "heads": [1, 1, 2, 2], "in_chans": 1}
    torch.manual_seed(3)
    source = create_image_encoder("mambavision_hybrid", **tiny).eval()
    weights = tmp_path / "model.safetensors"
    save_file({f"image.encoder.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    kwargs = {**tiny, "pretrained_path": str(weights), "pretrained_prefix": "image.encoder."}
    backbone = build_backbone(EncoderConfig(source="timm", name="mambavision_hybrid", kwargs=kwargs))
    images = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(images), source(images).mean((2, 3)))
    random = EncoderConfig(source="timm", name="mambavision_hybrid", kwargs=kwargs, init="random")
    assert "pretrained_path" not in embed.encoder_fingerprint(random)["kwargs"]
