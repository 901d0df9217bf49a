"""Heatmaps: every encoder family gives a map per present view; four-view maps come with attention weights; MV-CLIP
maps a prompt's similarity; ``mvmlm explain`` writes maps, overlays and their table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mvmlm.inference.explain import explain_views
from mvmlm.models.image_encoders import create_image_encoder

H, W = 64, 48
FAMILIES = {
    "timm:test_resnet": dict(in_chans=1),
    "vssm": dict(in_chans=1, depths=[1, 1], dims=[8, 16], d_state=4, patch_size=4),
    "hybrid_resnet_vssm": dict(in_chans=1, resnet_until="layer2", depths=[1], d_state=4, ssm_ratio=1.0),
    "mambavision_hybrid": dict(in_chans=1, depths=[1, 1, 1, 1], dim=8, in_dim=4, heads=[1, 1, 2, 2]),
}


def _images(batch: int, views: int) -> torch.Tensor:
    return torch.rand(batch, views, 1, H, W, generator=torch.Generator().manual_seed(0))


def _finetuned(name: str):
    from downstream.common.embed import Backbone
    from downstream.finetune.model import BreastClassifier, FinetunedBundle

    torch.manual_seed(0)
    encoder = create_image_encoder(name, **FAMILIES[name])
    module = BreastClassifier(Backbone(encoder, encoder.out_channels, pool=True), 2).eval()
    return FinetunedBundle(module, {"heads": {"mass": ["no_mass", "mass"]}})


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_encoder_family_gives_a_map_per_present_view(name):
    bundle = _finetuned(name)
    mask = torch.tensor([[True, True], [True, False]])
    maps = explain_views(bundle, _images(2, 2), mask, "gradcam++", target="mass")
    assert [(m.row, m.view) for m in maps] == [(0, 0), (0, 1), (1, 0)]
    for m in maps:
        assert m.heatmap.shape == (H, W) and np.isfinite(m.heatmap).all()
        assert m.heatmap.max() == pytest.approx(1.0, abs=1e-4) and m.heatmap.min() >= 0  # not a constant map
        assert m.target == "mass" and 0 < m.score < 1


def test_a_view_map_depends_on_that_view_only_where_the_model_pools_views():
    """The map of view 0 is the same whether view 1 holds noise or another image (mean pooling is linear)."""
    bundle = _finetuned("timm:test_resnet")
    images = _images(1, 2)
    other = images.clone()
    other[0, 1] = torch.rand(1, H, W, generator=torch.Generator().manual_seed(5))
    first = explain_views(bundle, images, torch.ones(1, 2, dtype=torch.bool), target="mass")[0].heatmap
    second = explain_views(bundle, other, torch.ones(1, 2, dtype=torch.bool), target="mass")[0].heatmap
    np.testing.assert_allclose(first, second, atol=1e-4)


def test_an_unknown_target_class_is_refused_naming_the_classes():
    from mvmlm.bundle import BundleError

    with pytest.raises(BundleError, match="no_mass, mass"):
        explain_views(_finetuned("timm:test_resnet"), _images(1, 2), torch.ones(1, 2, dtype=torch.bool), target="x")


@pytest.mark.parametrize("shared", [True, False])
def test_four_view_maps_come_with_the_views_attention_weights(shared):
    from downstream.multiview.model import ModelConfig, MultiViewClassifier
    from downstream.multiview.train import MultiviewBundle

    torch.manual_seed(0)
    cfg = ModelConfig(backbone="timm:test_resnet", backbone_kwargs={"in_chans": 1}, shared=shared, fusion_hidden=8)
    bundle = MultiviewBundle(MultiViewClassifier(cfg, {"label": 2}).eval(), {"heads": {"label": ["neg", "pos"]}})
    mask = torch.tensor([[True, True, True, True], [True, False, True, True]])
    maps = explain_views(bundle, _images(2, 4), mask, "gradcam++")
    assert [(m.row, m.view) for m in maps] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]
    assert all(m.heatmap.shape == (H, W) and m.heatmap.max() > 0.99 for m in maps)
    for row in (0, 1):
        assert sum(m.attention for m in maps if m.row == row) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        expected = bundle.predict_views(_images(2, 4), mask)["label"][:, :, 1]
    pos = [m for m in maps if m.target == "pos"]
    for m in pos:  # each view explains the probability of its own side (L_CC, L_MLO, R_CC, R_MLO)
        assert m.score == pytest.approx(float(expected[m.row, m.view // 2]), abs=1e-5)


def _tiny_mvclip(text_image_set):
    """A seeded random-init MV-CLIP bundle (tiny image and text towers) for the prompt-map tests."""
    from mvmlm.models.mvclip import MVCLIP, ImageTowerConfig, MVCLIPBundle, MVCLIPConfig, TextTowerConfig, TokenConfig

    config = MVCLIPConfig(
        image=ImageTowerConfig(encoder="timm:test_resnet", encoder_kwargs={"in_chans": 1}, image_size=[H, W]),
        text=TextTowerConfig(model=str(text_image_set(16).text_model), revision=None, max_length=24),
        tokens=TokenConfig(num_tokens=8, width=32, depth=1, heads=4),
        embed_dim=16,
    )
    torch.manual_seed(0)
    bundle = MVCLIPBundle(MVCLIP(config, load_pretrained=False).eval(), {"heads": {}})
    return bundle


def test_mvclip_maps_the_similarity_to_a_prompt(text_image_set):

    bundle = _tiny_mvclip(text_image_set)
    mask = torch.tensor([[True, False]])
    maps = explain_views(bundle, _images(1, 2), mask, prompt="spiculated mass")
    assert len(maps) == 1 and maps[0].heatmap.shape == (H, W) and maps[0].target == "spiculated mass"
    with torch.no_grad():
        text = bundle.module.encode_text(["spiculated mass"], normalize=True)[0]
        image = bundle.module.encode_image(_images(1, 2)[0, :1], normalize=True)[0]
    assert maps[0].score == pytest.approx(float(image @ text), abs=1e-5)


def test_explain_command_writes_a_map_and_overlay_per_view(finetune_run, synthetic_dataset, tmp_path):
    from PIL import Image

    from mvmlm.cli import main as cli

    root, table = synthetic_dataset("vindr", exams=64, seed=0)
    exam = table[table["exam_id"] == table["exam_id"].iloc[0]]
    (bundle,) = (finetune_run / "models").iterdir()
    out = tmp_path / "explain"
    files = [str(root / p) for p in exam["path"]]
    assert cli(["explain", "--model", str(bundle), "--input", *files, "--out", str(out), "method=gradcam++"]) == 0
    views = pd.read_csv(out / "explanations.csv")
    assert len(views) == len(exam) and set(views["slot"]) == {"CC", "MLO"}
    heatmap = np.load(out / views["map_file"].iloc[0])
    overlay = Image.open(out / views["overlay_file"].iloc[0])
    assert heatmap.ndim == 2 and overlay.size == heatmap.shape[::-1] and overlay.mode == "RGB"


def test_a_trained_classifier_points_at_the_planted_lesions_better_than_its_random_init(
    text_image_set, synthetic_dataset, tmp_path
):
    """benchmarks/explain.py on the shared 64x48 synthetic cache: Grad-CAM of a fine-tuned tiny CNN against the
    synthetic writer's lesion masks, beside the same architecture untrained and a uniform map."""
    from benchmarks.explain import compare, fine_tune

    table = text_image_set(64, test_fraction=0.35).table
    root, _ = synthetic_dataset("vindr", exams=64, seed=0)
    result = compare(fine_tune(table, tmp_path / "finetune", epochs=8), table, root)
    trained, untrained, chance = result["trained"], result["untrained"], result["chance"]
    assert result["views"] >= 15
    assert trained["mass_inside"] > 2 * max(untrained["mass_inside"], chance["mass_inside"])  # seen: 0.018 vs 0.006
    assert trained["pointing"] > max(untrained["pointing"], chance["pointing"]) + 0.2  # seen: 0.38 vs 0.04 / 0.09


def test_mvclip_without_a_prompt_maps_every_zero_shot_class(text_image_set, tmp_path):
    """One map per view and class of the prompts file, scored by the cosine to the class's ensemble embedding; the
    class with the highest score is the zero-shot prediction."""
    from mvmlm.inference.zeroshot import class_embeddings

    bundle = _tiny_mvclip(text_image_set)
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("mass:\n  no mass: [No mass is seen., There is no mass.]\n  mass: [There is a mass.]\n")
    maps = explain_views(bundle, _images(1, 2), torch.tensor([[True, True]]), prompts=str(prompts))
    assert [(m.view, m.target) for m in maps] == [(0, "mass: no mass"), (0, "mass: mass"), (1, "mass: no mass"),
                                                  (1, "mass: mass")]  # fmt: skip
    assert all(m.heatmap.shape == (H, W) for m in maps)
    with torch.no_grad():
        classes = class_embeddings(bundle.module, [["No mass is seen.", "There is no mass."], ["There is a mass."]])
        image = bundle.module.encode_image(_images(1, 2)[0, 1:], normalize=True)[0]
    np.testing.assert_allclose([m.score for m in maps[2:]], (classes @ image).numpy(), atol=1e-5)


def test_several_maps_of_one_view_are_written_to_files_named_by_their_class(tmp_path):
    from mvmlm.inference.explain import Explanation, write_explanation

    rows = [{"unit": 0, "slot": "CC", "target": t, "score": 0.1} for t in ("mass: no mass", "mass: mass")]
    image, heatmap = np.zeros((8, 6), np.float32), np.ones((8, 6), np.float32)
    skipped = pd.DataFrame(columns=["path", "reason"])
    write_explanation(Explanation(pd.DataFrame(rows), [heatmap, heatmap], [image, image], skipped), tmp_path)
    table = pd.read_csv(tmp_path / "explanations.csv")
    assert table["map_file"].tolist() == ["00000_CC_mass_no_mass.npy", "00000_CC_mass_mass.npy"]
    assert all((tmp_path / name).is_file() for name in [*table["map_file"], *table["overlay_file"]])
