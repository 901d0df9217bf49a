"""The four-view classifier end to end on synthetic VinDr-format exams: learning, class weights, resume, grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from downstream.multiview.config import GridConfig, MultiviewConfig
from downstream.multiview.data import class_weights, load_splits, make_loader
from downstream.multiview.grid import main as grid_main
from downstream.multiview.grid import plan_runs, run_settings
from downstream.multiview.model import VIEWS
from downstream.multiview.run import main
from downstream.multiview.train import MultiTaskLoss, load_classifier
from mvmlm.config import ConfigError, build_config
from mvmlm.data.exams import build_exams
from mvmlm.data.preprocess import PreprocessParams, cache_folder, preprocess_table, read_cached_table
from mvmlm.data.splits import patient_split
from mvmlm.sweep import settings_key

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "multiview"
TINY = CONFIGS / "tiny.yaml"
#: small inputs for the tests that check mechanics rather than learning
SMALL = ["data.image_size=[48,32]", "eval.bootstrap=0", "eval.plots=false"]


@pytest.fixture(scope="module")
def table(synthetic_dataset, tmp_path_factory) -> str:
    """64 synthetic VinDr exams (lesions planted; VinDr has no pathology, so labels use BI-RADS 4-5) cached 96x64,
    VinDr's test split kept and the other patients split 70 / 30 into train / val (as `mvmlm split` would)."""
    root, truth = synthetic_dataset("vindr", exams=64, seed=0)
    test = truth["split"].where(truth["split"].eq("test"))
    truth = truth.assign(split=patient_split(truth["patient_id"], seed=0, val_fraction=0.3, fixed=test))
    cache = tmp_path_factory.mktemp("multiview_cache")
    params = PreprocessParams(height=96, width=64)
    preprocess_table(truth, root, cache, params, workers=1, progress=False)
    return str(cache_folder(cache, params) / "table.parquet")


def _args(table: str, out: Path, *extra: str) -> list[str]:
    return ["--config", str(TINY), f"data.table={table}", "data.label_from=birads_4_5", f"out={out}", *extra]


def _steps(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_classifier_learns_planted_lesions(table, tmp_path):
    results = main(_args(table, tmp_path, "eval.splits=[test]", "eval.bootstrap=20", "train.epochs=10"))  # 96x64
    test = results["eval"]["test"]["tasks"]["label"]["pooled"]
    scores = [h["val/score"] for h in results["history"]]
    assert len(scores) == 10 and results["best_epoch"] == 1 + int(np.argmax(scores))
    assert results["history"][results["best_epoch"] - 1]["val/label_auc"] > 0.7  # selected on val: optimistic
    assert test["auc"] > 0.65 and test["n"] >= 20  # held-out test split (chance: 0.5)
    assert test["auc_low"] <= test["auc"] <= test["auc_high"]
    lines = results["summary_lines"]
    assert "(test split)" in lines[0] and "label" in lines[1] and all(view in lines[-1] for view in VIEWS)

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
    results = main(_args(table, tmp_path, "train.epochs=1", *SMALL))
    cfg = build_config(MultiviewConfig, [TINY], [f"data.table={table}", "data.label_from=birads_4_5"])
    splits = load_splits(cfg.data, cfg.task, ["val", "test"])
    everything = {t: np.concatenate([s.targets[t] for s in splits.values()]) for t in cfg.task.tasks}
    for task, used in results["class_weights"].items():
        assert used == pytest.approx(class_weights(splits["train"].targets[task], len(used)).tolist())
        assert used != pytest.approx(class_weights(everything[task], len(used)).tolist())


def test_an_interrupted_run_resumes_to_the_same_result(table, tmp_path, monkeypatch):
    args = ["train.epochs=2", "train.save_every=3", *SMALL]  # 5 steps per epoch: states at steps 3, 6, 9, 10
    straight = main(_args(table, tmp_path / "straight", *args))
    forward, calls = MultiTaskLoss.forward, []

    def interrupted(self, logits, targets):
        calls.append(1)
        if len(calls) == 8:  # like Ctrl-C in step 8 (in epoch 2, after the state of step 6)
            raise KeyboardInterrupt
        return forward(self, logits, targets)

    monkeypatch.setattr(MultiTaskLoss, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(_args(table, tmp_path / "resumed", *args))
    monkeypatch.setattr(MultiTaskLoss, "forward", forward)
    resumed = main(_args(table, tmp_path / "resumed", *args, "--resume", "latest"))

    assert [s["step"] for s in _steps(tmp_path / "resumed")] == list(range(1, 11))
    for a, b in zip(_steps(tmp_path / "straight"), _steps(tmp_path / "resumed"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert [h["step"] for h in resumed["history"]] == [5, 10]
    for a, b in zip(straight["history"], resumed["history"], strict=True):
        assert a["val/score"] == pytest.approx(b["val/score"], rel=1e-5)
    assert resumed["headline"] == pytest.approx(straight["headline"], rel=1e-5)


def test_a_new_run_into_a_trained_folder_is_refused_and_leaves_it_alone(table, tmp_path):
    (tmp_path / "checkpoints" / "step_00000005").mkdir(parents=True)
    (tmp_path / "config.yaml").write_text("the earlier run's config\n")
    with pytest.raises(ConfigError, match="resume"):
        main(_args(table, tmp_path, *SMALL))
    assert (tmp_path / "config.yaml").read_text() == "the earlier run's config\n"


def test_old_split_keys_name_the_table_split(table, tmp_path):
    with pytest.raises(ConfigError, match="val_fraction.*split column"):
        main(_args(table, tmp_path, "data.val_fraction=0.2"))


def test_a_task_without_training_targets_is_an_error(table, tmp_path):
    with pytest.raises(ValueError, match="no training target for task 'label'.*label_from=malignant"):
        main(_args(table, tmp_path, "data.label_from=malignant", *SMALL))  # VinDr has no pathology


GRID = """
run: {{data: {{table: {table}, image_size: [48, 32], label_from: birads_4_5}}, train: {{epochs: 1}}}}
rows:
  - {{key: shared, name: Tiny ResNet (Shared), backbone: "timm:test_resnet", backbone_kwargs: {{in_chans: 1}}}}
  - {{key: specific, name: Tiny ResNet (View-specific), backbone: "timm:test_resnet", shared: false, lr: {lr}}}
settings: [ternary, five]
"""


def _grid_args(tmp_path: Path, table: str, lr: float = 1.0e-3) -> list[str]:
    config = tmp_path / f"grid_{lr}.yaml"
    config.write_text(GRID.format(table=table, lr=lr))
    return ["--config", str(CONFIGS / "tiny_grid.yaml"), "--config", str(config), f"out={tmp_path}"]


def test_grid_writes_the_paper_table_with_every_configured_row(table, tmp_path):
    args = _grid_args(tmp_path, table)
    summary = grid_main([*args, "only=[ternary/*]"])
    assert summary["runs"] == 6 and summary["done"] == 6 and not summary["failed"]
    assert sorted(p.name for p in (tmp_path / "ternary").iterdir()) == ["shared", "specific"]
    assert sorted(p.name for p in (tmp_path / "ternary" / "specific").iterdir()) == ["birads", "label", "multi"]
    assert {s["lr"] for s in _steps(tmp_path / "ternary/specific/label")} == {1.0e-3}  # the row's learning rate

    results = pd.read_csv(tmp_path / "results.csv")
    assert results[["setting", "key"]].values.tolist() == [
        ["ternary", "shared"],
        ["ternary", "specific"],
        ["five", "shared"],
        ["five", "specific"],
    ]
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


def test_grid_reuses_unchanged_runs_and_retrains_changed_ones(table, tmp_path):
    only = ["only=[ternary/*/multi]"]
    first = grid_main([*_grid_args(tmp_path, table, lr=1.0e-3), *only])
    assert sorted(first["seconds"]) == ["ternary/shared/multi", "ternary/specific/multi"]
    again = grid_main([*_grid_args(tmp_path, table, lr=1.0e-3), *only])
    assert again["seconds"] == {} and again["headlines"] == first["headlines"]

    changed = grid_main([*_grid_args(tmp_path, table, lr=2.0e-3), *only])  # the specific row's learning rate
    assert list(changed["seconds"]) == ["ternary/specific/multi"] and not changed["failed"]
    steps = _steps(tmp_path / "ternary/specific/multi")
    assert {s["lr"] for s in steps} == {2.0e-3} and steps[0]["step"] == 1  # trained again from scratch
    assert changed["headlines"]["ternary/shared/multi"] == first["headlines"]["ternary/shared/multi"]


def test_grid_settings_key_ignores_folders_and_workers(table, tmp_path):
    def key(*overrides: str) -> str:
        cfg = build_config(GridConfig, [CONFIGS / "tiny_grid.yaml"], [f"run.data.table={table}", *overrides])
        return settings_key(run_settings(dict(plan_runs(cfg))["five/shared/multi"], "digest"))

    assert key() == key("out=elsewhere", "run.data.num_workers=4", "run.train.progress=true")
    assert key() != key("run.train.epochs=3")
    assert key() != key("run.data.augment.degrees=5")


def test_paper_grid_config_plans_the_54_runs_of_tables_2_to_4():
    cfg = build_config(GridConfig, [CONFIGS / "grid_paper.yaml"], ["run.data.table=cache/table.parquet"])
    runs = dict(plan_runs(cfg))
    assert len(runs) == 54 and len({c.out for c in runs.values()}) == 54
    vssm = runs["five/vssm_specific/birads"]
    assert (vssm.model.backbone, vssm.model.shared, vssm.optim.lr, vssm.task.tasks) == ("vssm", False, 1e-5, ["birads"])
    hybrid = runs["binary/hybrid_shared/multi"]
    assert hybrid.model.backbone_kwargs == {"pretrained": True, "resnet_until": "layer3", "depths": [2]}
    assert (hybrid.optim.lr, hybrid.task.setting, hybrid.task.tasks) == (1e-4, "binary", ["label", "birads"])
    assert (hybrid.data.image_size, hybrid.model.dropout, hybrid.optim.weight_decay) == ([512, 512], 0.5, 0.05)
    assert (hybrid.optim.schedule, hybrid.train.select, hybrid.train.resume) == ("plateau", "val/score", "latest")


def test_grid_rejects_a_selection_that_matches_nothing(table, tmp_path):
    with pytest.raises(ConfigError, match="only"):
        grid_main([*_grid_args(tmp_path, table), "only=[binary/nothing/*]"])


def test_training_augmentation_is_drawn_per_epoch_and_sample(table):
    cfg = build_config(MultiviewConfig, [TINY], [f"data.table={table}", "data.label_from=birads_4_5"])
    split = load_splits(cfg.data, cfg.task, [])["train"]
    dataset = make_loader(split, cfg.data, train=True, seed=0).dataset
    first = dataset[3]["images"]
    torch.rand(5)  # the global generator plays no part
    assert torch.equal(dataset[3]["images"], first)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[3]["images"], first)


def test_device_augmentation_resizes_and_augments_as_the_loader_does(table):
    from downstream.multiview.data import resize_views
    from mvmlm.data.device_augment import TOLERANCE, DeviceAugment

    overrides = [f"data.table={table}", "data.label_from=birads_4_5", "data.image_size=[48,32]", "data.batch_size=4"]
    cfg = build_config(MultiviewConfig, [TINY], overrides)
    split = load_splits(cfg.data, cfg.task, [])["train"]
    device = DeviceAugment(cfg.data.augment, cfg.data.image_size, resize_views)
    cpu = next(iter(make_loader(split, cfg.data, train=True, seed=0)))
    raw = next(iter(make_loader(split, cfg.data, train=True, seed=0, device=device)))
    assert raw["images"].dtype == torch.uint16 and raw["images"].shape[-2:] == (96, 64)
    moved = device.images(raw)["images"]
    assert moved.shape == cpu["images"].shape == (4, 4, 1, 48, 32)
    assert (moved - cpu["images"]).abs().max() <= TOLERANCE


def test_device_augmentation_trains_as_loader_augmentation(table, tmp_path, monkeypatch):
    from mvmlm.data.device_augment import DeviceAugment

    hooked, images = [], DeviceAugment.images
    monkeypatch.setattr(DeviceAugment, "images", lambda self, batch: hooked.append(1) or images(self, batch))
    losses = {}
    for where in ("loader", "device"):
        main(_args(table, tmp_path / where, *SMALL, "train.epochs=1", f"data.augment_on={where}"))
        losses[where] = [step["loss"] for step in _steps(tmp_path / where)]
    assert len(hooked) == len(losses["device"])  # one batch per step, augmented on the device
    assert losses["device"] and losses["device"] == pytest.approx(losses["loader"], rel=1e-4)


def test_a_classifier_on_a_frozen_mv_mlm_tower_keeps_it_and_its_bundle_needs_no_pretraining_files(
    table, random_checkpoint, tmp_path
):
    import shutil

    import mvmlm
    from mvmlm.models.mvclip import load_image_tower

    tower = Path(shutil.copytree(random_checkpoint, tmp_path / "tower"))
    frozen = ["train.epochs=1", *SMALL, f"model.checkpoint={tower}", "optim.lr_scales={backbones: 0.0}"]
    main(_args(table, tmp_path / "run", *frozen))
    trained = load_classifier(tmp_path / "run" / "best")[0]
    pretrained = dict(load_image_tower(tower).named_parameters())
    for name, param in trained.backbones["all"].tower.named_parameters():
        assert torch.equal(param, pretrained[name]), name  # scale 0: the tower's weights are kept
    assert (tmp_path / "run" / "best" / "encoder" / "config.yaml").is_file()

    shutil.rmtree(tower)  # the bundle carries the tower's architecture; its weights are the classifier's
    bundle = mvmlm.load_model(shutil.copytree(tmp_path / "run" / "best", tmp_path / "moved"))
    images, mask = torch.rand(2, len(VIEWS), 1, 48, 32), torch.ones(2, len(VIEWS), dtype=torch.bool)
    with torch.no_grad():
        expected, got = trained(images, mask)["logits"]["label"], bundle.module(images, mask)["logits"]["label"]
    torch.testing.assert_close(got, expected)
