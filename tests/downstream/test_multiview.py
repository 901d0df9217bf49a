"""The four-view classifier end to end on synthetic VinDr-format exams: learning, class weights, resume, grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from downstream.multiview import main, summary_lines
from downstream.multiview_data import class_weights, exam_targets
from downstream.multiview_grid import GridConfig, plan_runs
from downstream.multiview_model import VIEWS
from downstream.multiview_train import MultiviewConfig, build, load_classifier, make_accelerator
from mvmlm.config import ConfigError, build_config
from mvmlm.data.exams import build_exams
from mvmlm.data.preprocess import PreprocessParams, cache_folder, preprocess_table, read_cached_table
from mvmlm.rundir import RunDir

TINY = Path(__file__).resolve().parents[2] / "configs" / "downstream" / "multiview" / "tiny.yaml"
#: small inputs for the tests that check mechanics rather than learning
SMALL = ["data.image_size=[48,32]", "eval.bootstrap=0", "eval.plots=false"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def table(synthetic_dataset, tmp_path_factory) -> str:
    """64 synthetic VinDr exams (lesions planted; VinDr has no pathology, so labels use BI-RADS 4-5) cached 96x64."""
    root, truth = synthetic_dataset("vindr", exams=64, seed=0)
    cache = tmp_path_factory.mktemp("multiview_cache")
    params = PreprocessParams(height=96, width=64)
    preprocess_table(truth, root, cache, params, workers=1, progress=False)
    return str(cache_folder(cache, params) / "table.parquet")


def _args(table: str, out: Path, *extra: str) -> list[str]:
    return ["--config", str(TINY), f"data.table={table}", "data.label_from=birads_4_5", f"out={out}", *extra]


def test_classifier_learns_planted_lesions(table, tmp_path):
    results = main(_args(table, tmp_path, "eval.bootstrap=50"))  # tiny.yaml: 6 epochs, 96x64 inputs
    test = results["eval"]["test"]["tasks"]["label"]["pooled"]
    assert results["eval"]["val"]["headline"]["label_auc"] > 0.7  # selected on val: optimistic
    assert test["auc"] > 0.65 and test["n"] >= 20  # held-out test split (chance: 0.5)
    assert test["auc_low"] <= test["auc"] <= test["auc_high"]
    assert results["best_epoch"] == 1 + int(np.argmax([h["val_score"] for h in results["history"]]))
    lines = summary_lines(results, "test")
    assert "label" in lines[1] and all(view in lines[-1] for view in VIEWS)

    predictions = pd.read_csv(tmp_path / "predictions_test.csv")
    alpha = predictions[[f"attention_{v}" for v in VIEWS]].to_numpy()
    assert np.allclose(alpha.sum(axis=1), 1.0)
    exams = build_exams(read_cached_table(table)).set_index("exam_id").loc[predictions["exam_id"]]
    present = exams[[f"{v}_present" for v in VIEWS]].to_numpy(bool)
    assert (~present).any() and np.all(alpha[~present] == 0)  # the planted missing view gets no attention
    assert (predictions["pattern"] != "complete").sum() == (~present.all(axis=1)).sum()
    for name in ("attention_test.png", "roc_test_label.png", "confusion_test_birads.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 0

    model, cfg = load_classifier(tmp_path / "best")
    assert cfg.task.tasks == ["label", "birads"] and not model.training
    assert sorted(model.heads) == ["birads_L", "birads_R", "label_L", "label_R"]


def test_class_weights_come_from_the_training_split(table, tmp_path):
    overrides = [f"data.table={table}", "data.label_from=birads_4_5", f"out={tmp_path}", *SMALL]
    cfg = build_config(MultiviewConfig, [TINY], overrides)
    accelerator = make_accelerator(cfg)
    session = build(cfg, accelerator, RunDir.create(cfg.out, cfg))
    train = session.exams["train"]
    all_exams = pd.concat(session.exams.values())
    for task in cfg.task.tasks:
        used = getattr(session.loss, f"class_weight_{task}")
        k = len(used)
        expected = class_weights(exam_targets(train, cfg.task, cfg.data.label_from)[task], k)
        everything = class_weights(exam_targets(all_exams, cfg.task, cfg.data.label_from)[task], k)
        assert torch.allclose(used, expected)
        assert not torch.allclose(used, everything)
    assert set(train["patient_id"]).isdisjoint(session.exams["val"]["patient_id"])
    accelerator.end_training()


def test_resume_continues_where_it_stopped(table, tmp_path):
    straight = main(_args(table, tmp_path / "straight", "train.epochs=2", *SMALL))
    main(_args(table, tmp_path / "resumed", "train.epochs=1", *SMALL))
    resumed = main(_args(table, tmp_path / "resumed", "train.epochs=2", "--resume", "latest", *SMALL))
    assert resumed["epochs_run"] == 2 and len(resumed["history"]) == 2
    for a, b in zip(straight["history"], resumed["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["val_score"] == pytest.approx(b["val_score"], rel=1e-5)
    lines = (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


GRID = """
run: {{data: {{table: {table}, image_size: [48, 32], label_from: birads_4_5}}, train: {{epochs: 1}}}}
rows:
  - {{key: shared, name: Tiny ResNet (Shared), backbone: "timm:test_resnet", backbone_kwargs: {{in_chans: 1}}}}
  - {{key: specific, name: Tiny ResNet (View-specific), backbone: "timm:test_resnet", shared: false, lr: 1.0e-3}}
settings: [ternary, five]
"""


def test_grid_writes_the_paper_table_with_every_configured_row(table, tmp_path):
    config = tmp_path / "grid.yaml"
    config.write_text(GRID.format(table=table))
    args = ["grid", "--config", str(TINY.parent / "tiny_grid.yaml"), "--config", str(config), f"out={tmp_path}"]
    summary = main([*args, "only=[ternary/*]"])
    assert summary["runs"] == 6 and summary["done"] == 6 and not summary["failed"]
    assert sorted(p.name for p in (tmp_path / "ternary").iterdir()) == ["shared", "specific"]
    assert sorted(p.name for p in (tmp_path / "ternary" / "specific").iterdir()) == ["birads", "label", "multi"]
    specific = json.loads((tmp_path / "ternary/specific/label/metrics.json").read_text())
    assert specific["history"][0]["lr"] == 1.0e-3  # the row's learning rate

    results = pd.read_csv(tmp_path / "results.csv")
    assert results[["setting", "key"]].values.tolist() == [
        ["ternary", "shared"], ["ternary", "specific"], ["five", "shared"], ["five", "specific"]
    ]  # fmt: skip
    cells = [
        f"{mode}_{task}_{m}"
        for mode in ("multi", "single")
        for task in ("label", "birads")
        for m in ("auc", "f1_macro")
    ]
    assert list(results.columns[3:]) == cells
    assert results.loc[results.setting == "ternary", cells].notna().all().all()
    assert results.loc[results.setting == "five", cells].isna().all().all()  # not selected, still a row
    markdown = (tmp_path / "results.md").read_text()
    assert "BI-RADS {1, 3, 5}" in markdown and markdown.count("Tiny ResNet (View-specific)") == 2

    again = main([*args, "only=[ternary/*]"])  # finished runs are picked up, not retrained
    assert again["done"] == 6 and again["seconds"] == {} and again["headlines"] == summary["headlines"]


def test_paper_grid_config_plans_the_54_runs_of_tables_2_to_4():
    cfg = build_config(GridConfig, [TINY.parent / "grid_paper.yaml"], ["run.data.table=cache/table.parquet"])
    runs = dict(plan_runs(cfg))
    assert len(runs) == 54 and len({c.out for c in runs.values()}) == 54
    vssm = runs["five/vssm_specific/birads"]
    assert (vssm.model.backbone, vssm.model.shared, vssm.optim.lr, vssm.task.tasks) == ("vssm", False, 1e-5, ["birads"])
    hybrid = runs["binary/hybrid_shared/multi"]
    assert hybrid.model.backbone_kwargs == {"pretrained": True, "resnet_until": "layer3", "depths": [2]}
    assert (hybrid.optim.lr, hybrid.task.setting, hybrid.task.tasks) == (1e-4, "binary", ["label", "birads"])
    assert (hybrid.data.image_size, hybrid.model.dropout, hybrid.optim.weight_decay) == ([512, 512], 0.5, 0.05)


def test_a_task_without_training_targets_is_an_error(table, tmp_path):
    with pytest.raises(ValueError, match="no training target for task 'label'.*label_from=malignant"):
        main(_args(table, tmp_path, "data.label_from=malignant", *SMALL))  # VinDr has no pathology


def test_grid_rejects_a_selection_that_matches_nothing(table, tmp_path):
    config = tmp_path / "grid.yaml"
    config.write_text(GRID.format(table=table))
    with pytest.raises(ConfigError, match="only"):
        main(["grid", "--config", str(config), f"out={tmp_path}", "only=[binary/nothing/*]"])
