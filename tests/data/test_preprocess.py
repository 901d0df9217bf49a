import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mvmlm.config import ConfigError
from mvmlm.data import schema
from mvmlm.data.preprocess import (
    FAILURES_FILE,
    ROI_TABLE_FILE,
    TABLE_FILE,
    PreprocessParams,
    RoiParams,
    breast_bbox,
    cache_folder,
    load_cached,
    preprocess_image,
    preprocess_table,
    read_cached_table,
    resize_pad,
    save_cached,
)
from mvmlm.data.preprocess_command import main

SMALL = PreprocessParams(height=48, width=32)


@pytest.mark.parametrize("background", [0.0, 0.15])  # a SIGMOID VOI leaves the background above 0
def test_bbox_is_the_largest_bright_component_not_a_marker(background):
    image = np.full((100, 80), background, dtype=np.float32)
    image[10:90, 0:50] = 0.6  # breast against the chest wall
    image[2:6, 70:78] = 1.0  # a burnt-in marker
    assert breast_bbox(image, 0.05) == (10, 90, 0, 50)


def test_all_zero_image_is_kept_whole_and_stays_zero():
    image = np.zeros((60, 40), dtype=np.float32)
    assert breast_bbox(image, 0.05) == (0, 60, 0, 40)
    out = preprocess_image(image, SMALL)
    assert out.shape == (48, 32) and not out.any()


@pytest.mark.parametrize(("shape", "content"), [((100, 25), (48, 12)), ((30, 40), (24, 32))])
def test_resize_keeps_aspect_and_pads_right_and_bottom(shape, content):
    out = resize_pad(np.ones(shape, dtype=np.float32), 48, 32)
    assert out.shape == (48, 32) and out.dtype == np.float32
    rows, cols = np.nonzero(out)
    assert (rows.max() + 1, cols.max() + 1) == content and rows.min() == 0 and cols.min() == 0
    assert np.allclose(out[: content[0], : content[1]], 1.0)


def test_crop_then_resize_puts_the_breast_against_the_left_edge():
    image = np.zeros((200, 160), dtype=np.float32)
    image[20:180, 0:60] = 0.5
    out = preprocess_image(image, SMALL)
    assert out[:, 0].min() > 0.4  # the crop fills the full height, chest wall at column 0
    assert not out[:, 31].any()  # a 160x60 breast is narrower than 48x32: right padding


def test_cache_round_trip_is_lossless_at_16_bits(tmp_path):
    image = np.random.default_rng(0).random((48, 32)).astype(np.float32)
    path = save_cached(tmp_path / "a" / "x.npy", image)
    assert np.abs(load_cached(path) - image).max() <= 0.5 / 65535 + 1e-7
    assert [p.name for p in path.parent.iterdir()] == ["x.npy"]  # no temporary file left behind


def test_load_cached_rejects_a_file_that_is_not_a_cached_image(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((4, 4), dtype=np.float64))
    with pytest.raises(ValueError, match="bad.npy"):
        load_cached(tmp_path / "bad.npy")


@pytest.mark.parametrize(("override", "key"), [("height=0", "height"), ("crop_threshold=1.5", "crop_threshold")])
def test_invalid_parameters_are_config_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        main(["--table=t.parquet", "--root=.", "--out=cache", override])


def test_cache_folder_is_keyed_by_every_parameter_and_the_table(synthetic_dataset, tmp_path):
    _, table = synthetic_dataset("vindr")
    variants = [
        SMALL,
        PreprocessParams(48, 33),
        PreprocessParams(48, 32, crop=False),
        PreprocessParams(48, 32, crop_threshold=0.1),
        PreprocessParams(48, 32, for_processing=True),
    ]
    keys = {cache_folder(tmp_path, p, table).name for p in variants}
    assert len(keys) == 5 and cache_folder(tmp_path, SMALL, table).name.startswith(f"{SMALL.key()}-")
    assert cache_folder(tmp_path, SMALL, table) == cache_folder(tmp_path, PreprocessParams(height=48, width=32), table)
    relabeled = table.assign(birads=table["birads"].fillna(1).astype(int) % 5 + 1)
    tables = {cache_folder(tmp_path, SMALL, t) for t in (table, relabeled, table.iloc[:-1], table.copy())}
    assert len(tables) == 3  # any change of content is another folder; a copy is the same


def test_roi_parameters_key_the_cache_folder_only_when_crops_are_made():
    unused = PreprocessParams(48, 32, roi=RoiParams(size=16))
    crops = PreprocessParams(48, 32, roi=RoiParams(enabled=True, size=16))
    wider = PreprocessParams(48, 32, roi=RoiParams(enabled=True, size=16, margin=0.5))
    assert unused.key() == SMALL.key() == PreprocessParams(48, 32, for_processing=False).key()
    assert len({SMALL.key(), crops.key(), wider.key()}) == 3 and crops.key().startswith("48x32-")


def test_command_with_roi_writes_crops_and_their_table_beside_the_images(synthetic_dataset, tmp_path):
    from mvmlm.data.roi import lesion_crop
    from mvmlm.data.sources import cbis_ddsm

    root, _ = synthetic_dataset("cbis_ddsm")
    table = cbis_ddsm.read(root)
    schema.write_table(table, tmp_path / "table.parquet")
    roi = ["roi.enabled=true", "roi.size=16", "roi.min_side=8"]
    args = [f"--table={tmp_path / 'table.parquet'}", f"--root={root}", f"--out={tmp_path}", "height=48", "width=32"]
    metrics = main([*args, *roi, "--workers=2"])
    folder = Path(metrics["folder"])
    assert folder == cache_folder(tmp_path, PreprocessParams(48, 32, roi=RoiParams(True, 16, min_side=8)), table)
    assert metrics["crops"] == metrics["cached"] == len(table) and metrics["crop_table"] == str(folder / ROI_TABLE_FILE)
    crops = read_cached_table(folder / ROI_TABLE_FILE).set_index("image_id")
    row = table.iloc[3]
    expected = lesion_crop(row, root, RoiParams(size=16, min_side=8))
    assert np.abs(load_cached(crops.loc[row["image_id"], "cache_path"]) - expected).max() <= 0.5 / 65535 + 1e-7
    assert "roi:\n  enabled: true" in (folder / "config.yaml").read_text()  # the cache records its crop parameters


@pytest.fixture
def dataset_with_bad_files(synthetic_dataset, tmp_path) -> tuple[Path, pd.DataFrame]:
    """A copy of the synthetic VinDr dataset plus a corrupt, a truncated and a missing file in its table."""
    source, truth = synthetic_dataset("vindr")
    root = tmp_path / "root"
    shutil.copytree(source, root)
    (root / "corrupt.dicom").write_bytes(b"this is not a DICOM file" * 10)
    first = (root / truth["path"].iloc[0]).read_bytes()
    (root / "truncated.dicom").write_bytes(first[: len(first) // 2])
    bad = truth.iloc[:3].copy()
    bad["image_id"] = ["corrupt", "truncated", "missing"]
    bad["exam_id"] = bad["patient_id"] = "bad"
    bad["path"] = ["corrupt.dicom", "truncated.dicom", "missing.dicom"]
    return root, schema.conform(pd.concat([truth, bad], ignore_index=True))


def test_bad_files_are_recorded_and_the_rest_are_cached(dataset_with_bad_files, tmp_path):
    root, table = dataset_with_bad_files
    cached = preprocess_table(table, root, tmp_path / "cache", SMALL, progress=False)
    folder = cache_folder(tmp_path / "cache", SMALL, table)
    failures = pd.read_csv(folder / FAILURES_FILE)
    assert sorted(failures["image_id"]) == ["corrupt", "missing", "truncated"]
    assert failures.set_index("image_id").loc["corrupt", "error"].count("corrupt.dicom") >= 1
    assert len(cached) == len(table) - 3 and set(cached["image_id"]) == set(table["image_id"]) - set(failures.image_id)
    image = load_cached(cached["cache_path"].iloc[0])
    assert image.shape == (48, 32) and image.max() > 0.1 and image[:, 0].mean() > 0.05
    stored = read_cached_table(folder / TABLE_FILE)
    assert stored["cache_path"].tolist() == cached["cache_path"].tolist()


def test_rerun_skips_cached_images_and_changed_parameters_use_a_new_folder(dataset_with_bad_files, tmp_path):
    root, table = dataset_with_bad_files
    table = table[table["exam_id"] != "bad"]
    first = preprocess_table(table, root, tmp_path, SMALL, progress=False)
    stamps = {p: os.stat(p).st_mtime_ns for p in first["cache_path"]}
    again = preprocess_table(table, root, tmp_path, SMALL, progress=False)
    assert {p: os.stat(p).st_mtime_ns for p in again["cache_path"]} == stamps
    other = preprocess_table(table, root, tmp_path, PreprocessParams(48, 32, crop=False), progress=False)
    assert not set(other["cache_path"]) & set(first["cache_path"])


def test_command_with_workers_matches_the_in_process_run(dataset_with_bad_files, tmp_path):
    root, table = dataset_with_bad_files
    schema.write_table(table, tmp_path / "table.parquet")
    args = [f"--table={tmp_path / 'table.parquet'}", f"--root={root}", "height=48", "width=32"]
    parallel = main([*args, f"--out={tmp_path / 'a'}", "--workers=2"])
    serial = main([*args, f"--out={tmp_path / 'b'}", "--workers=1"])
    assert parallel["cached"] == serial["cached"] == len(table) - 3 and parallel["failures"] == 3
    folder = Path(parallel["folder"])
    assert (folder / "config.yaml").is_file() and (folder / "metrics.json").is_file()
    for a, b in zip(sorted(folder.rglob("*.npy")), sorted(Path(serial["folder"]).rglob("*.npy")), strict=True):
        assert np.array_equal(np.load(a), np.load(b))


SLOW_RUN = """
import sys, time
import mvmlm.data.dicom as dicom
from mvmlm.data.preprocess_command import main
read = dicom.read_mammogram
dicom.read_mammogram = lambda path, **kw: (time.sleep(0.15), read(path, **kw))[1]
main(sys.argv[1:])
"""


def test_killed_run_resumes_with_every_image_cached_exactly_once(synthetic_dataset, tmp_path):
    root, table = synthetic_dataset("vindr")
    schema.write_table(table, tmp_path / "table.parquet")
    args = [
        f"--table={tmp_path / 'table.parquet'}",
        f"--root={root}",
        f"--out={tmp_path / 'cache'}",
        "height=48",
        "width=32",
    ]
    folder = cache_folder(tmp_path / "cache", SMALL, table)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, *args], stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(folder.rglob("*.npy"))) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in folder.rglob("*.npy")}
    assert 5 <= len(done) < len(table), "the run should have been killed midway"
    metrics = main(args)
    files = sorted(folder.rglob("*.npy"))
    assert metrics["cached"] == len(table) and len(files) == len(table)
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in done.items())  # done items were not redone
    assert all(load_cached(p).shape == (48, 32) for p in files)
    assert sorted(read_cached_table(folder / TABLE_FILE)["image_id"]) == sorted(table["image_id"])
