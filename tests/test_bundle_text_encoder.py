"""``--include-text-encoder``: an MV-CLIP bundle with its frozen text encoder vendored embeds texts exactly as before
once the referenced encoder is gone, the vendored files are hashed like the others, and push can include it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import mvmlm
from mvmlm.bundle import MANIFEST_NAME, BundleError, include_text_encoder

from .downstream.conftest import tiny_config

TEXTS = ["There is a mass.", "No calcifications are identified."]


@pytest.fixture
def mvclip_bundle(text_image_set, tmp_path) -> tuple[Path, Path]:
    """A tiny MV-CLIP bundle referencing a copy of the tiny BERT (the copy plays the Hub's role), and the copy."""
    from mvmlm.bundle import bundle_config
    from mvmlm.models.mvclip import MVCLIP, MVCLIPBundle

    referenced = Path(shutil.copytree(text_image_set(64, test_fraction=0.35).text_model, tmp_path / "hub_bert"))
    torch.manual_seed(0)
    model = MVCLIP(tiny_config(referenced))
    directory = tmp_path / "bundle"
    MVCLIPBundle(model, bundle_config({}, {}, {"height": 64, "width": 48})).save_pretrained(directory)
    return directory, referenced


def _embed(directory: Path) -> torch.Tensor:
    with torch.no_grad():
        return mvmlm.load_model(directory).module.encode_text(TEXTS, normalize=True)


def test_a_bundle_with_its_text_encoder_needs_nothing_else(mvclip_bundle, monkeypatch):
    directory, referenced = mvclip_bundle
    before = _embed(directory)
    include_text_encoder(directory)
    shutil.rmtree(referenced)  # the encoder the bundle names is gone, and the Hub is off
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.testing.assert_close(_embed(directory), before, rtol=0, atol=1e-6)
    bundle = mvmlm.load_model(directory)
    assert Path(bundle.frozen_text_encoder().model_name) == directory / "text_encoder"
    assert f"`{referenced}` (revision `None`), included in `text_encoder/`" in (directory / "README.md").read_text()


def test_the_vendored_files_are_checked_like_the_others(mvclip_bundle):
    directory, _ = mvclip_bundle
    include_text_encoder(directory)
    files = (directory / MANIFEST_NAME).read_text()
    assert "text_encoder/config.json" in files and "text_encoder/model.safetensors" in files
    with open(directory / "text_encoder" / "model.safetensors", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match=r"text_encoder/model.safetensors: altered"):
        mvmlm.load_model(directory)


def test_push_include_text_encoder_uploads_it(mvclip_bundle, tmp_path, monkeypatch):
    import huggingface_hub.hub_mixin

    from mvmlm.cli import main as cli

    from .test_bundle import _StandInApi

    directory, _ = mvclip_bundle
    _StandInApi.remote, _StandInApi.calls = tmp_path / "remote", []
    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", _StandInApi)
    assert cli(["push", "--model", str(directory), "--repo-id", "org/mvclip", "--include-text-encoder"]) == 0
    assert (tmp_path / "remote" / "org/mvclip" / "text_encoder" / "model.safetensors").is_file()
