"""Frozen text encoder and its on-disk feature cache, with a tiny random BERT (offline)."""

from __future__ import annotations

import pytest
import torch

from mvmlm.models.text_encoders import FrozenTextEncoder, TextFeatureCache, TextModelUnavailableError


class CountingEncoder(FrozenTextEncoder):
    """Records every text the frozen model is asked to encode."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[list[str]] = []

    def encode(self, texts, device=None):
        self.calls.append(list(texts))
        return super().encode(texts, device)


@pytest.fixture
def encoder(tiny_bert_dir) -> CountingEncoder:
    return CountingEncoder(str(tiny_bert_dir), max_length=24, local_files_only=True)


def test_encoder_is_frozen_and_returns_hidden_states_with_mask(encoder, reports):
    hidden, mask = encoder.encode(reports[:3])
    assert hidden.dtype == torch.float32 and hidden.shape[:2] == mask.shape and hidden.shape[2] == 32
    assert mask.shape[1] <= 24 and mask.dtype == torch.bool
    expected = encoder._tokenizer(reports[:3], padding=True, truncation=True, max_length=24)["attention_mask"]
    assert mask.tolist() == [[bool(v) for v in row] for row in expected]
    assert not hidden.requires_grad
    assert not encoder._model.training
    assert not any(p.requires_grad for p in encoder._model.parameters())


def test_hidden_size_comes_from_the_config(encoder):
    assert encoder.hidden_size == 32
    assert encoder._model is None  # reading the size does not load the weights


def test_missing_model_offline_says_how_to_download():
    encoder = FrozenTextEncoder("nobody/no-such-clinical-bert", revision="abc123", local_files_only=True)
    with pytest.raises(TextModelUnavailableError) as info:
        encoder.load()
    message = str(info.value)
    assert "text model 'nobody/no-such-clinical-bert'" in message
    assert "huggingface-cli download nobody/no-such-clinical-bert --revision abc123" in message
    assert "HF_HUB_OFFLINE=1" in message and "local directory" in message and "\n" not in message


def test_cache_miss_encodes_once_then_hits_without_the_model(tmp_path, encoder, reports):
    cache = TextFeatureCache(tmp_path, encoder, store_dtype="float32")
    first_hidden, first_mask = cache(reports[:3] + reports[:1])  # a duplicate is encoded once
    assert sorted(sum(encoder.calls, [])) == sorted(reports[:3])
    encoder.calls.clear()
    hidden, mask = cache([reports[2], reports[0]])
    assert encoder.calls == []
    assert torch.equal(mask[0], first_mask[2]) and torch.equal(hidden[0][mask[0]], first_hidden[2][first_mask[2]])
    assert torch.equal(hidden[1][mask[1]], first_hidden[0][first_mask[0]])
    cache([reports[0], reports[3]])
    assert encoder.calls == [[reports[3]]]  # only the new text


def test_cached_features_equal_the_encoder_output(tmp_path, encoder, reports):
    cache = TextFeatureCache(tmp_path, encoder, store_dtype="float32")
    cache(reports)
    hidden, mask = cache(reports)
    direct_hidden, direct_mask = encoder.encode(reports)
    assert torch.equal(mask, direct_mask)  # right-padded tokenizer: same mask
    assert torch.equal(hidden[mask], direct_hidden[direct_mask])


def test_cache_is_reused_across_runs_and_keyed_by_settings(tmp_path, encoder, tiny_bert_dir, reports):
    TextFeatureCache(tmp_path, encoder)(reports)
    again = CountingEncoder(str(tiny_bert_dir), max_length=24, local_files_only=True)
    later_run = TextFeatureCache(tmp_path, again)
    assert len(later_run) == len(reports)
    later_run(reports)
    assert again.calls == []
    shorter = CountingEncoder(str(tiny_bert_dir), max_length=8, local_files_only=True)
    other = TextFeatureCache(tmp_path, shorter)
    assert other.directory != later_run.directory and len(other) == 0
    other(reports[:2])
    assert shorter.calls == [reports[:2]]


def test_fp16_storage_and_no_temporary_files(tmp_path, encoder, reports):
    cache = TextFeatureCache(tmp_path, encoder)
    hidden, mask = cache(reports[:2])
    direct, _ = encoder.encode(reports[:2])
    assert hidden.dtype == torch.float32
    torch.testing.assert_close(hidden[mask], direct[mask], rtol=1e-3, atol=1e-3)
    names = [p.name for p in cache.directory.iterdir()]
    assert "key.json" in names and not any(".tmp-" in n for n in names)


def test_another_process_shards_are_picked_up(tmp_path, encoder, tiny_bert_dir, reports):
    reader = TextFeatureCache(tmp_path, encoder)
    writer = TextFeatureCache(tmp_path, CountingEncoder(str(tiny_bert_dir), max_length=24, local_files_only=True))
    writer(reports[:2])
    reader(reports[:2])
    assert encoder.calls == []


def test_unknown_dtype_is_refused(tiny_bert_dir):
    with pytest.raises(ValueError, match="unknown torch dtype 'float33'"):
        FrozenTextEncoder(str(tiny_bert_dir), dtype="float33")


@pytest.mark.parametrize("name", ["/nowhere/bert", "./nowhere/bert", "runs/pretrain/bert"])
def test_a_missing_local_model_is_named_as_a_folder_without_a_download_hint(name):
    with pytest.raises(TextModelUnavailableError) as info:
        FrozenTextEncoder(name, local_files_only=True).load()
    message = str(info.value)
    assert message.startswith(f"text model directory not found: {name} (") and "\n" not in message, message
    assert "huggingface-cli" not in message


def test_an_unreadable_local_model_is_named_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TextModelUnavailableError) as info:
        FrozenTextEncoder(str(tmp_path), local_files_only=True).load()
    message = str(info.value)
    assert message.startswith(f"text model directory {tmp_path} could not be loaded: ") and "\n" not in message
    assert "huggingface-cli" not in message
