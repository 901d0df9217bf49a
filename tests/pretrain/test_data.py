"""Breast-level pretraining data: report corpus reading, missing views, one variant per epoch, fixed order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mvmlm import cli
from mvmlm.data import schema
from mvmlm.data.leakage import SplitError
from mvmlm.data.preprocess import save_cached
from pretrain.data import Collate, EpochSampler, PretrainDataset, load_breasts, make_loader, read_reports

SHAPE = (8, 6)


def _write_corpus(folder, rows) -> None:
    parts = folder / "parts"
    parts.mkdir(parents=True)
    pd.DataFrame(rows, columns=["breast_id", "variant", "report"]).to_parquet(parts / "part-00000-000000.parquet")


@pytest.fixture
def cached(tmp_path):
    """Breast p1/L has CC + MLO, p1/R has CC only, p2/L has no report; all train."""
    rows = []
    for patient, side, view in [("p1", "L", "CC"), ("p1", "L", "MLO"), ("p1", "R", "CC"), ("p2", "L", "MLO")]:
        image_id = f"{patient}{side}{view}"
        rows.append(
            {
                "dataset": "toy",
                "patient_id": patient,
                "exam_id": "e",
                "image_id": image_id,
                "path": f"{image_id}.dcm",
                "laterality": side,
                "view": view,
                "split": "train",
            }
        )
    rng = np.random.default_rng(0)
    for row in rows:
        row["cache_path"] = f"{row['image_id']}.npy"
        save_cached(tmp_path / row["cache_path"], rng.random(SHAPE))
    schema.write_table(schema.conform(pd.DataFrame(rows)), tmp_path / "table.parquet")
    _write_corpus(
        tmp_path / "corpus",
        [
            ("toy/p1/e/L", 0, "left report a"),
            ("toy/p1/e/L", 1, "left report b"),
            ("toy/p1/e/L", 2, "left report c"),
            ("toy/p1/e/R", 0, "right report"),
        ],
    )
    return tmp_path


def test_breasts_without_a_report_are_left_out_and_single_views_kept(cached):
    breasts = load_breasts(cached / "table.parquet", "train", read_reports(cached / "corpus"))
    assert breasts["breast_id"].tolist() == ["toy/p1/e/L", "toy/p1/e/R"]
    assert breasts["reports"].tolist() == [["left report a", "left report b", "left report c"], ["right report"]]
    item = PretrainDataset(breasts, seed=0, train=False)[1]
    assert item["mask"].tolist() == [True, False] and item["images"].shape == (2, 1, *SHAPE)
    assert item["images"][1].abs().sum() == 0 and item["text"] == "right report"


def test_one_variant_is_drawn_per_epoch_deterministically(cached):
    breasts = load_breasts(cached / "table.parquet", "train", read_reports(cached / "corpus"))
    dataset = PretrainDataset(breasts, seed=0, train=True)
    drawn = []
    for epoch in range(12):
        dataset.set_epoch(epoch)
        drawn.append(dataset[0]["text"])
        assert dataset[0]["text"] == drawn[-1]  # same epoch, same draw
    assert set(drawn) == {"left report a", "left report b", "left report c"}
    evaluation = PretrainDataset(breasts, seed=0, train=False)
    evaluation.set_epoch(5)
    assert evaluation[0]["text"] == "left report a"


def test_augmentation_depends_on_seed_epoch_and_index_only(cached):
    from mvmlm.data.transforms import AugmentConfig

    breasts = load_breasts(cached / "table.parquet", "train", read_reports(cached / "corpus"))
    first = PretrainDataset(breasts, seed=3, train=True, augment=AugmentConfig(degrees=30))
    second = PretrainDataset(breasts, seed=3, train=True, augment=AugmentConfig(degrees=30))
    torch.manual_seed(123)  # the global random state plays no part
    assert torch.equal(first[0]["images"], second[0]["images"])
    second.set_epoch(1)
    assert not torch.equal(first[0]["images"], second[0]["images"])


def test_sampler_order_is_a_function_of_seed_and_epoch():
    sampler = EpochSampler(10, seed=0)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(10)) and list(sampler) == epoch0
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    assert list(EpochSampler(10, seed=0, shuffle=False)) == list(range(10))


def test_training_loader_drops_the_incomplete_batch_and_collates_masks(cached):
    breasts = load_breasts(cached / "table.parquet", "train", read_reports(cached / "corpus"))
    dataset = PretrainDataset(pd.concat([breasts] * 3, ignore_index=True), seed=0, train=True)
    loader = make_loader(dataset, 4, train=True, seed=0, num_workers=0, text_cache=None)
    batches = list(loader)
    assert len(batches) == 1 and batches[0]["cc"].shape == (4, 1, *SHAPE)
    assert batches[0]["cc_present"].all()
    assert batches[0]["mlo_present"].tolist() == [i.endswith("/L") for i in batches[0]["ids"]]
    assert batches[0]["text_ids"].shape == (4,) and "text_hidden" not in batches[0]
    with pytest.raises(ValueError, match="fewer than one batch"):
        make_loader(dataset, 7, train=True, seed=0, num_workers=0, text_cache=None)


def test_identical_reports_get_the_same_text_id():
    items = [
        {"images": torch.zeros(2, 1, 2, 2), "mask": torch.tensor([True, True]), "text": text, "id": str(i), "index": i}
        for i, text in enumerate(["BI-RADS 1.", "BI-RADS  1.", "BI-RADS 2."])
    ]
    ids = Collate()(items)["text_ids"]
    assert ids[0] == ids[1] != ids[2]


def test_bad_corpora_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no report corpus"):
        read_reports(tmp_path)
    (tmp_path / "parts").mkdir()
    pd.DataFrame({"breast_id": ["a"], "text": ["x"]}).to_parquet(tmp_path / "parts" / "part-00000-000000.parquet")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['report', 'variant'\]"):
        read_reports(tmp_path)
    _write_corpus(tmp_path / "empty", [("a", 0, "  ")])
    with pytest.raises(ValueError, match="1 empty report"):
        read_reports(tmp_path / "empty")


def test_a_patient_in_two_splits_is_refused(cached):
    table = schema.read_table(cached / "table.parquet")
    leaking = table.assign(split=["train", "train", "val", "train"])  # p1's right breast in val
    schema.write_table(leaking, cached / "table.parquet")
    with pytest.raises(SplitError, match=r"1 patient\(s\) have images in more than one split \(e\.g\. toy/p1\)"):
        load_breasts(cached / "table.parquet", "val", read_reports(cached / "corpus"))
    schema.write_table(leaking.assign(split=["train", "train", "train", "val"]), cached / "table.parquet")
    assert len(load_breasts(cached / "table.parquet", "val", read_reports(cached / "corpus"))) == 0  # p2 has no report


def test_a_model_size_other_than_the_cache_size_is_a_one_line_error(pretrain_inputs, tmp_path, capsys):
    argv = pretrain_inputs.argv(tmp_path / "run", "model.image.image_size=[32,24]")
    assert cli.main(["pretrain", *argv]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error, error
    assert "model.image.image_size': [32, 24]" in error and "cached at [64, 48]" in error, error


def test_device_augmentation_gives_the_loader_images_and_texts(cached):
    from mvmlm.data.device_augment import TOLERANCE, DeviceAugment
    from mvmlm.data.transforms import AugmentConfig
    from pretrain.data import device_hook

    breasts = load_breasts(cached / "table.parquet", "train", read_reports(cached / "corpus"))
    augment = AugmentConfig(degrees=30, translate=0.2, hflip=0.5)
    device = DeviceAugment(augment)
    loader_side = make_loader(
        PretrainDataset(breasts, 3, train=True, augment=augment), 2, train=True, seed=3, num_workers=0, text_cache=None
    )
    device_side = make_loader(
        PretrainDataset(breasts, 3, train=True, device=device), 2, train=True, seed=3, num_workers=0, text_cache=None
    )
    for epoch in (0, 1):
        for loader in (loader_side, device_side):
            loader.sampler.set_epoch(epoch)
            loader.dataset.set_epoch(epoch)
        cpu, raw = next(iter(loader_side)), next(iter(device_side))
        assert raw["cc"].dtype == torch.uint16 and raw["texts"] == cpu["texts"]
        moved = device_hook(device)(raw)
        for view in ("cc", "mlo"):
            assert (moved[view] - cpu[view]).abs().max() <= TOLERANCE
