"""``mvmlm export``: the ONNX file of a fine-tuned classifier and of an MV-CLIP image tower gives PyTorch's outputs
(onnxruntime, 1e-4) on real preprocessed views, for any batch size; a failed export leaves no file."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from mvmlm.data.preprocess import load_cached, read_cached_table

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="the optional extra 'export' (onnx, onnxscript, onnxruntime) is not installed",
)


def _views(text_image_set, count: int) -> np.ndarray:
    table = read_cached_table(text_image_set(64, test_fraction=0.35).table)
    return np.stack([load_cached(p)[None] for p in table["cache_path"].head(count)]).astype(np.float32)


def test_exported_classifier_matches_pytorch_on_cached_views(finetune_run, text_image_set, tmp_path):
    import mvmlm
    from mvmlm.cli import main as cli
    from mvmlm.inference.export import onnx_outputs

    (bundle_dir,) = (finetune_run / "models").iterdir()
    views = _views(text_image_set, 3)
    np.save(tmp_path / "views.npy", views)
    out = tmp_path / "onnx"
    assert cli(["export", "--model", str(bundle_dir), "--out", str(out), f"images={tmp_path / 'views.npy'}"]) == 0
    info = json.loads((out / "export.json").read_text())
    assert info["max_abs_diff"] <= 1e-4 and set(info["outputs"]) == {"embedding", "logits"}

    bundle = mvmlm.load_model(bundle_dir)
    more = np.concatenate([views, views[:2]])  # another batch size than the export's
    embedding, logits = onnx_outputs(out / "model.onnx", more)
    with torch.no_grad():
        images = torch.from_numpy(more)
        breast = bundle.predict_views(images[None, :2], torch.ones(1, 2, dtype=torch.bool))["mass"][0].numpy()
        np.testing.assert_allclose(embedding, bundle.embed_images(images).numpy(), atol=1e-4)
    mean_logits = logits[:2].mean(axis=0)  # a mean-pooling breast = softmax of its views' mean logits
    np.testing.assert_allclose(np.exp(mean_logits) / np.exp(mean_logits).sum(), breast, atol=1e-4)


def test_exported_mvclip_tower_matches_pytorch(text_image_set, tmp_path):
    from mvmlm.inference.export import export_onnx, onnx_outputs
    from mvmlm.models.mvclip import MVCLIP, ImageTowerConfig, MVCLIPBundle, MVCLIPConfig, TextTowerConfig, TokenConfig

    config = MVCLIPConfig(
        image=ImageTowerConfig(encoder="timm:test_resnet", encoder_kwargs={"in_chans": 1}, image_size=[64, 48]),
        text=TextTowerConfig(model=str(text_image_set(64, test_fraction=0.35).text_model), revision=None),
        tokens=TokenConfig(num_tokens=8, width=32, depth=1, heads=4),
        embed_dim=16,
    )
    torch.manual_seed(0)
    bundle = MVCLIPBundle(MVCLIP(config, load_pretrained=False).eval(), {"heads": {}})
    views = _views(text_image_set, 2)
    info = export_onnx(bundle, tmp_path, torch.from_numpy(views))
    (embedding,) = onnx_outputs(tmp_path / "model.onnx", views[:1])
    with torch.no_grad():
        expected = bundle.embed_images(torch.from_numpy(views[:1])).numpy()
    assert info["max_abs_diff"] <= 1e-4
    np.testing.assert_allclose(embedding, expected, atol=1e-4)


def test_a_kind_without_export_is_refused_and_leaves_no_file(tmp_path):
    from downstream.multiview.model import ModelConfig, MultiViewClassifier
    from downstream.multiview.train import MultiviewBundle
    from mvmlm.inference.export import ExportError, export_onnx

    model = MultiViewClassifier(ModelConfig(backbone="timm:test_resnet", backbone_kwargs={"in_chans": 1}), {"l": 2})
    with pytest.raises(ExportError, match="multiview bundle has no ONNX export; exportable: finetune, mvclip"):
        export_onnx(MultiviewBundle(model, {"heads": {}}), tmp_path, torch.zeros(1, 1, 64, 48))
    assert not (tmp_path / "model.onnx").exists()
