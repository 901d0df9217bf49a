"""``mvmlm export``: the ONNX file of a fine-tuned classifier, an MV-CLIP image tower, a four-view and a dual-stream
model gives PyTorch's outputs (onnxruntime, 1e-4) on real preprocessed views, for any batch size and missing views;
a selective-scan encoder is refused at once; a failed export leaves no file."""

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


def test_exported_four_view_model_gives_pytorchs_side_probabilities_and_attention(text_image_set, tmp_path):
    from downstream.multiview.model import ModelConfig, MultiViewClassifier
    from downstream.multiview.train import MultiviewBundle
    from mvmlm.inference.export import export_onnx, onnx_outputs

    torch.manual_seed(0)
    cfg = ModelConfig(backbone="timm:test_resnet", backbone_kwargs={"in_chans": 1}, fusion_hidden=8)
    bundle = MultiviewBundle(MultiViewClassifier(cfg, {"label": 2}).eval(), {"heads": {"label": ["neg", "pos"]}})
    views = torch.from_numpy(_views(text_image_set, 3))
    info = export_onnx(bundle, tmp_path, views)
    assert info["inputs"] == {"images": ["N", 4, 1, 64, 48], "mask": ["N", 4]} and info["max_abs_diff"] <= 1e-4
    exams = torch.stack([views.roll(k, 0) for k in (0, 1, 0, 2)], dim=1)[:2]  # another batch, other views missing
    mask = torch.tensor([[True, False, True, True], [False, True, True, False]])
    logits, attention = onnx_outputs(tmp_path / "model.onnx", exams.numpy(), mask.numpy())
    with torch.no_grad():
        expected = bundle.predict_views(exams, mask)
    np.testing.assert_allclose(torch.from_numpy(logits).softmax(-1).numpy(), expected["label"].numpy(), atol=1e-5)
    np.testing.assert_allclose(attention, expected["attention"].numpy(), atol=1e-5)
    assert (attention[~mask.numpy()] == 0).all()


def test_exported_dual_stream_model_gives_pytorchs_probabilities_from_views_and_crops(text_image_set, tmp_path):
    from downstream.dual_stream.config import MammoMambaModelConfig
    from downstream.dual_stream.model import DualStreamBundle, MammoMamba
    from mvmlm.inference.export import export_onnx, onnx_outputs

    torch.manual_seed(0)
    model = MammoMamba(MammoMambaModelConfig(backbone="timm:test_resnet", backbone_kwargs={"in_chans": 1}, hidden=8))
    bundle = DualStreamBundle(model.eval(), {"heads": {"pathology": ["benign", "malignant"]}})
    views = torch.from_numpy(_views(text_image_set, 3))
    info = export_onnx(bundle, tmp_path, views)
    assert list(info["inputs"]) == ["crops", "crop_mask", "images", "mask"] and info["max_abs_diff"] <= 1e-4
    images, crops = torch.stack([views[:2], views[1:]], dim=1), torch.stack([views[1:], views[:2]], dim=1)
    mask, crop_mask = torch.tensor([[True, True], [True, False]]), torch.tensor([[False, True], [True, True]])
    (logits,) = onnx_outputs(tmp_path / "model.onnx", crops.numpy(), crop_mask.numpy(), images.numpy(), mask.numpy())
    with torch.no_grad():
        expected = bundle.predict_views(images, mask, (crops, crop_mask))["pathology"].numpy()
    np.testing.assert_allclose(torch.from_numpy(logits).softmax(-1).numpy(), expected, atol=1e-5)


def test_a_selective_scan_encoder_is_refused_at_once_naming_it_and_leaves_no_file(tmp_path):
    import time

    from downstream.common.embed import Backbone
    from downstream.finetune.model import BreastClassifier, FinetunedBundle
    from mvmlm.inference.export import ExportError, export_onnx
    from mvmlm.models.image_encoders import create_image_encoder

    encoder = create_image_encoder("vssm", in_chans=1, depths=[1, 1], dims=[8, 16], d_state=4, patch_size=4)
    module = BreastClassifier(Backbone(encoder, encoder.out_channels, pool=True), 2).eval()
    config = {"heads": {"mass": ["no", "yes"]}, "model": {"encoder": {"name": "vssm"}}}
    start = time.monotonic()
    with pytest.raises(ExportError, match=r"^encoder 'vssm' cannot be exported to ONNX: its selective scan"):
        export_onnx(FinetunedBundle(module, config), tmp_path, torch.zeros(2, 1, 64, 48))
    assert time.monotonic() - start < 5 and not (tmp_path / "model.onnx").exists()


def test_a_kind_without_export_is_refused_and_leaves_no_file(tmp_path):
    from mvmlm.bundle import Bundle
    from mvmlm.inference.export import ExportError, export_onnx

    class RiskBundle(Bundle):
        kind = "risk-hazard"

    with pytest.raises(
        ExportError, match="risk-hazard bundle has no ONNX export; exportable: dual-stream, finetune, multiview, mvclip"
    ):
        export_onnx(RiskBundle(torch.nn.Linear(1, 1), {"heads": {}}), tmp_path, torch.zeros(1, 1, 64, 48))
    assert not (tmp_path / "model.onnx").exists()
