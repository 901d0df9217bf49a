"""The four-view classifier's model, loss, targets and class weights on tiny tensors and tables (no training)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from downstream.multiview.config import ModelConfig, TaskConfig
from downstream.multiview.data import check_task, class_weights, exam_targets, num_classes
from downstream.multiview.model import VIEWS, GatedAttentionFusion, MultiViewClassifier
from downstream.multiview.train import MultiTaskLoss
from mvmlm.config import ConfigError
from mvmlm.data.exams import build_exams

TINY = {"backbone": "timm:test_resnet", "backbone_kwargs": {"in_chans": 1}, "fusion_hidden": 16}
#: every presence pattern with at least one view
PATTERNS = [m for m in itertools.product([True, False], repeat=4) if any(m)]


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "view-specific"])
def test_forward_backward_for_every_missing_view_pattern(shared):
    torch.manual_seed(0)
    model = MultiViewClassifier(ModelConfig(shared=shared, **TINY), {"label": 2, "birads": 3})
    mask = torch.tensor(PATTERNS)
    images = torch.rand(len(PATTERNS), 4, 1, 32, 32) * mask[:, :, None, None, None]  # missing views are zeros
    out = model(images, mask)
    assert out["logits"]["label"].shape == (len(PATTERNS), 2, 2)
    assert out["logits"]["birads"].shape == (len(PATTERNS), 2, 3)
    alpha = out["attention"]
    assert torch.all(alpha[~mask] == 0)
    assert torch.allclose(alpha.sum(dim=1), torch.ones(len(PATTERNS)))
    (out["logits"]["label"].sum() + out["logits"]["birads"].sum()).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    for backbone in model.backbones.values():
        assert any(p.grad.abs().sum() > 0 for p in backbone.parameters())


def test_unmasked_attention_gives_missing_views_weight():
    torch.manual_seed(0)
    fusion = GatedAttentionFusion(dim=8, hidden=16, mask_missing=False)
    mask = torch.tensor([[True, False, True, False]])
    fused, alpha = fusion(torch.rand(1, 4, 8), mask)
    assert torch.all(alpha > 0) and torch.allclose(alpha.sum(), torch.tensor(1.0))
    assert fused.shape == (1, 32)


def test_fused_features_are_the_weighted_concatenation():
    torch.manual_seed(0)
    fusion = GatedAttentionFusion(dim=5, hidden=7)
    features = torch.rand(3, 4, 5)
    mask = torch.tensor([[True] * 4, [True, True, False, False], [False, True, False, False]])
    fused, alpha = fusion(features, mask)
    expected = torch.cat([alpha[:, i : i + 1] * features[:, i] for i in range(4)], dim=1)
    assert torch.allclose(fused, expected)
    assert torch.equal(alpha[2], torch.tensor([0.0, 1.0, 0.0, 0.0]))  # the only present view takes all the weight
    assert torch.all(fused[1, 10:] == 0)  # a missing right breast contributes nothing


def test_an_exam_without_views_is_an_error():
    fusion = GatedAttentionFusion(dim=4, hidden=8)
    with pytest.raises(ValueError, match=r"batch rows \[1\]"):
        fusion(torch.rand(2, 4, 4), torch.tensor([[True, False, False, False], [False] * 4]))


def test_view_specific_model_sends_cc_and_mlo_to_their_own_backbone():
    torch.manual_seed(0)
    model = MultiViewClassifier(ModelConfig(shared=False, **TINY), {"label": 2}).eval()
    images = torch.rand(2, 4, 1, 32, 32)
    before = model.view_features(images)
    with torch.no_grad():
        for p in model.backbones["CC"].parameters():
            p.add_(0.5)
    after = model.view_features(images)
    cc = [VIEWS.index("L_CC"), VIEWS.index("R_CC")]
    mlo = [VIEWS.index("L_MLO"), VIEWS.index("R_MLO")]
    assert not torch.allclose(before[:, cc], after[:, cc])
    assert torch.equal(before[:, mlo], after[:, mlo])


def test_single_task_model_has_only_its_heads():
    model = MultiViewClassifier(ModelConfig(**TINY), {"birads": 5})
    assert sorted(model.heads) == ["birads_L", "birads_R"]
    with pytest.raises(ValueError, match="expected images"):
        model(torch.rand(2, 3, 1, 32, 32), torch.ones(2, 3, dtype=torch.bool))


def test_ignored_labels_contribute_nothing_to_the_loss():
    torch.manual_seed(0)
    weights = {"label": torch.tensor([0.7, 2.0]), "birads": torch.tensor([1.0, 0.5, 3.0])}
    loss_fn = MultiTaskLoss(weights, {"label": 0.5, "birads": 0.5})
    logits = {"label": torch.randn(4, 2, 2, requires_grad=True), "birads": torch.randn(4, 2, 3, requires_grad=True)}
    targets = {
        "label": torch.tensor([[1, -1], [0, 1], [-1, -1], [1, 0]]),
        "birads": torch.tensor([[2, 0], [-1, 1], [0, -1], [-1, -1]]),
    }
    total, parts = loss_fn(logits, targets)
    total.backward()
    for task in logits:
        ignored = targets[task] < 0
        assert torch.all(logits[task].grad[ignored] == 0) and logits[task].grad[~ignored].abs().sum() > 0
    # the paper's form: per task, the mean over sides of PyTorch's weighted cross-entropy with ignore_index=-1
    for task, part in parts.items():
        sides = [
            F.cross_entropy(logits[task][:, j], targets[task][:, j], weight=weights[task], ignore_index=-1)
            for j in range(2)
        ]
        assert part.item() == pytest.approx(torch.stack(sides).mean().item(), rel=1e-6)
    assert total.item() == pytest.approx(0.5 * parts["label"].item() + 0.5 * parts["birads"].item(), rel=1e-6)


def test_a_batch_without_labels_gives_zero_loss_with_a_graph():
    loss_fn = MultiTaskLoss({"label": torch.ones(2)}, {"label": 0.5, "birads": 0.5})
    logits = torch.randn(3, 2, 2, requires_grad=True)
    total, _ = loss_fn({"label": logits}, {"label": torch.full((3, 2), -1)})
    total.backward()
    assert total.item() == 0 and torch.all(logits.grad == 0)


def test_class_weights_are_inverse_frequencies():
    targets = np.array([[0, 0], [0, 1], [-1, 0], [1, -1]])  # class 0: 4, class 1: 2, class 2: none
    weights = class_weights(targets, 3)
    assert weights.tolist() == pytest.approx([6 / (3 * 4), 6 / (3 * 2), 0.0])


def _image(image_id, laterality, view, exam, **labels):
    return {
        "dataset": "toy",
        "patient_id": exam,
        "exam_id": exam,
        "image_id": image_id,
        "path": f"{image_id}.dcm",
        "laterality": laterality,
        "view": view,
        "split": "train",
        **labels,
    }


@pytest.fixture
def exams() -> pd.DataFrame:
    """e1: L BI-RADS 5 malignant, R BI-RADS 1. e2: L BI-RADS 3 benign (CC only), no right breast.
    e3: L BI-RADS 4 malignant, R BI-RADS 2 benign (MLO only)."""
    rows = [
        _image("a", "L", "CC", "e1", birads=5, malignant=1),
        _image("b", "L", "MLO", "e1", birads=5, malignant=1),
        _image("c", "R", "CC", "e1", birads=1, malignant=0),
        _image("d", "R", "MLO", "e1", birads=1, malignant=0),
        _image("e", "L", "CC", "e2", birads=3, malignant=0),
        _image("f", "L", "CC", "e3", birads=4, malignant=1),
        _image("g", "L", "MLO", "e3", birads=4, malignant=1),
        _image("h", "R", "MLO", "e3", birads=2, malignant=0),
    ]
    return build_exams(pd.DataFrame(rows))


@pytest.mark.parametrize(
    ("setting", "birads", "label"),
    [
        ("binary", [[1, 0], [-1, -1], [-1, -1]], [[1, 0], [-1, -1], [-1, -1]]),
        ("ternary", [[2, 0], [1, -1], [-1, -1]], [[1, 0], [0, -1], [-1, -1]]),
        ("five", [[4, 0], [2, -1], [3, 1]], [[1, 0], [0, -1], [1, 0]]),
    ],
)
def test_task_settings_choose_birads_classes_and_subset_the_label(exams, setting, birads, label):
    targets = exam_targets(exams, TaskConfig(setting=setting), "malignant")
    assert targets["birads"].tolist() == birads
    assert targets["label"].tolist() == label
    assert num_classes(TaskConfig(setting=setting))["birads"] == {"binary": 2, "ternary": 3, "five": 5}[setting]


def test_without_subset_the_label_keeps_breasts_outside_the_setting(exams):
    targets = exam_targets(exams, TaskConfig(setting="binary", subset=False, tasks=["label"]), "malignant")
    assert list(targets) == ["label"]
    assert targets["label"].tolist() == [[1, 0], [0, -1], [1, 0]]


def test_birads_surrogate_label(exams):
    targets = exam_targets(exams, TaskConfig(setting="five", tasks=["label"]), "birads_4_5")
    assert targets["label"].tolist() == [[1, 0], [0, -1], [1, 0]]


@pytest.mark.parametrize(
    ("task", "label_from", "key"),
    [
        (TaskConfig(setting="quaternary"), "malignant", "task.setting"),
        (TaskConfig(tasks=["label", "density"]), "malignant", "task.tasks"),
        (TaskConfig(tasks=[]), "malignant", "task.tasks"),
        (TaskConfig(weights={"label": 1.0}), "malignant", "task.weights"),
        (TaskConfig(), "pathology", "data.label_from"),
    ],
)
def test_bad_task_configs_name_the_key(task, label_from, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_task(task, label_from)
