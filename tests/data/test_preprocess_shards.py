"""preprocess split into shards (--shard-id / --num-shards) and merged (--merge): the single run's outputs exactly,
resumable per shard, and an incomplete or mismatched shard set refused with one line naming it."""

import json
from pathlib import Path

import pandas as pd
import pytest

from mvmlm.cli import main as mvmlm
from mvmlm.config import ConfigError
from mvmlm.data import schema
from mvmlm.data.preprocess import (
    FAILURES_FILE,
    ROI_FAILURES_FILE,
    ROI_TABLE_FILE,
    TABLE_FILE,
    PreprocessParams,
    cache_folder,
)
from mvmlm.data.preprocess_command import main
from mvmlm.data.shards import SHARD_FILE, ShardSetError, check_shard, shard_dir, shard_of, shard_rows

SMALL = PreprocessParams(height=48, width=32)


def _files(folder: Path) -> dict[str, bytes]:
    """Every cache file (images, crops) under ``folder`` by relative path, with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for kind in ("images", "crops")
        for p in sorted((folder / kind).rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def vindr_with_a_missing_file(synthetic_dataset, tmp_path) -> tuple[list[str], pd.DataFrame]:
    """Command arguments (without --out) for the synthetic VinDr set plus one row whose file is missing."""
    root, truth = synthetic_dataset("vindr")
    missing = truth.iloc[:1].assign(image_id="gone", path="gone.dicom")
    table = schema.conform(pd.concat([truth, missing], ignore_index=True))
    schema.write_table(table, tmp_path / "table.parquet")
    return [
        f"--table={tmp_path / 'table.parquet'}",
        f"--root={root}",
        "height=48",
        "width=32",
        "max_failures=0.5",
        "progress=false",
    ], table


def _run_shards(args: list[str], out: Path, count: int, ids=None) -> list[dict]:
    return [main([*args, f"--out={out}", f"--shard-id={i}", f"--num-shards={count}"]) for i in ids or range(count)]


def test_merged_shards_equal_a_single_run_rows_and_files_byte_for_byte(vindr_with_a_missing_file, tmp_path):
    args, table = vindr_with_a_missing_file
    single = main([*args, f"--out={tmp_path / 'one'}", "--workers=2"])
    shards = _run_shards(args, tmp_path / "three", 3)
    assert all(s["images"] > 0 for s in shards) and sum(s["images"] for s in shards) == len(table)
    assert sum(s["failures"] for s in shards) == 1 and shards[0]["shard"] == "0/3"
    without_root = [a for a in args if not a.startswith("--root=")]  # merging reads no dataset file
    merged = main([*without_root, f"--out={tmp_path / 'three'}", "--merge"])
    assert {k: v for k, v in merged.items() if k not in ("folder", "table")} == {
        k: v for k, v in single.items() if k not in ("folder", "table")
    }
    one, three = Path(single["folder"]), Path(merged["folder"])
    assert one.name == three.name and merged["table"] == str(three / TABLE_FILE)
    pd.testing.assert_frame_equal(pd.read_parquet(three / TABLE_FILE), pd.read_parquet(one / TABLE_FILE))
    assert (three / FAILURES_FILE).read_bytes() == (one / FAILURES_FILE).read_bytes()
    assert "gone.dicom" in (three / FAILURES_FILE).read_text()
    files = _files(three)
    assert len(files) == len(table) - 1 and files == _files(one)


def test_merged_png16_shards_with_lesion_crops_equal_a_single_run(synthetic_dataset, tmp_path):
    from mvmlm.data.sources import cbis_ddsm

    root, _ = synthetic_dataset("cbis_ddsm")
    table = cbis_ddsm.read(root)
    schema.write_table(table, tmp_path / "table.parquet")
    args = [f"--table={tmp_path / 'table.parquet'}", f"--root={root}", "height=48", "width=32", "cache_format=png16"]
    args += ["roi.enabled=true", "roi.size=16", "roi.min_side=8"]
    single = main([*args, f"--out={tmp_path / 'one'}"])
    _run_shards(args, tmp_path / "two", 2)
    merged = main([*args, f"--out={tmp_path / 'two'}", "--merge"])
    one, two = Path(single["folder"]), Path(merged["folder"])
    assert merged["crops"] == single["crops"] == len(table) and merged["crop_table"] == str(two / ROI_TABLE_FILE)
    for name in (TABLE_FILE, ROI_TABLE_FILE):
        pd.testing.assert_frame_equal(pd.read_parquet(two / name), pd.read_parquet(one / name))
    for name in (FAILURES_FILE, ROI_FAILURES_FILE):
        assert (two / name).read_bytes() == (one / name).read_bytes()
    files = _files(two)
    assert len(files) == 2 * len(table) and all(name.endswith(".png") for name in files) and files == _files(one)


def test_an_incomplete_shard_set_is_refused_naming_the_missing_and_unfinished_shards(
    vindr_with_a_missing_file, tmp_path, capsys
):
    args, table = vindr_with_a_missing_file
    out = tmp_path / "cache"
    _run_shards(args, out, 4, ids=[0, 2])
    folder = cache_folder(out, SMALL, table)
    shard_dir(folder, 3, 4).mkdir(parents=True)  # a shard killed before it finished
    assert mvmlm(["preprocess", *args, f"--out={out}", "--merge"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: ") and "\n" not in line
    assert "incomplete set of 4 shards (missing 00001-of-00004; unfinished 00003-of-00004)" in line
    assert not (folder / TABLE_FILE).exists() and not (folder / "metrics.json").exists()  # nothing merged


def test_mismatched_shard_sets_are_refused_until_one_is_named(vindr_with_a_missing_file, tmp_path):
    args, table = vindr_with_a_missing_file
    out = tmp_path / "cache"
    _run_shards(args, out, 2)
    _run_shards(args, out, 3, ids=[1])  # a run with another shard count into the same cache
    with pytest.raises(ShardSetError, match="shard sets of 2 and 3 shards; name the one to merge with --num-shards"):
        main([*args, f"--out={out}", "--merge"])
    with pytest.raises(ShardSetError, match="missing 00000-of-00003, 00002-of-00003"):
        main([*args, f"--out={out}", "--merge", "--num-shards=3"])
    assert main([*args, f"--out={out}", "--merge", "--num-shards=2"])["cached"] == len(table) - 1


def test_a_shard_written_for_another_cache_is_refused(vindr_with_a_missing_file, tmp_path):
    args, table = vindr_with_a_missing_file
    out = tmp_path / "cache"
    _run_shards(args, out, 2)
    record = shard_dir(cache_folder(out, SMALL, table), 1, 2) / SHARD_FILE
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "identity": {**data["identity"], "cache": "48x32-other"}}))
    with pytest.raises(ShardSetError, match="shard.s. 00001-of-00002 were written with other parameters"):
        main([*args, f"--out={out}", "--merge"])


def test_merge_with_other_parameters_names_the_folders_holding_shards(vindr_with_a_missing_file, tmp_path):
    args, table = vindr_with_a_missing_file
    out = tmp_path / "cache"
    _run_shards(args, out, 2)
    others = f"shards of this table with other parameters: {cache_folder(out, SMALL, table).name}$"
    with pytest.raises(ShardSetError, match=f"no shards with these parameters to merge; {others}"):
        main([*args, f"--out={out}", "--merge", "width=33"])


def test_a_shard_rerun_redoes_nothing_and_leaves_other_shards_files_in_progress(vindr_with_a_missing_file, tmp_path):
    args, table = vindr_with_a_missing_file
    out = tmp_path / "cache"
    folder = cache_folder(out, SMALL, table)
    first = _run_shards(args, out, 2, ids=[0])[0]
    stamps = {p: p.stat().st_mtime_ns for p in (folder / "images").rglob("*.npy")}
    assert len(stamps) == first["cached"] and (shard_dir(folder, 0, 2) / SHARD_FILE).is_file()
    other = shard_rows(table, 1, 2).iloc[0]
    in_progress = folder / "images" / "vindr" / other["patient_id"] / f".{other['image_id']}.npy.tmp99999"
    in_progress.parent.mkdir(parents=True, exist_ok=True)
    in_progress.write_bytes(b"partial")
    again = _run_shards(args, out, 2, ids=[0])[0]
    assert again == first and in_progress.exists()  # shard 1's file being written is not shard 0's to delete
    assert {p: p.stat().st_mtime_ns for p in (folder / "images").rglob("*.npy")} == stamps
    _run_shards(args, out, 2, ids=[1])
    assert not in_progress.exists()  # shard 1 cleans up its own leftovers


def test_shards_are_a_stable_partition_of_the_images(vindr_with_a_missing_file):
    _, table = vindr_with_a_missing_file
    parts = [shard_rows(table, i, 3) for i in range(3)]
    ids = [image for part in parts for image in part["image_id"]]
    assert sorted(ids) == sorted(table["image_id"]) and all(len(p) for p in parts)
    assert (shard_of("vindr/abc", 7), shard_of("vindr/abc", 1000)) == (1, 572)  # the same on every machine and run


@pytest.mark.parametrize(("shard_id", "num_shards", "key"), [(2, 2, "shard_id"), (0, 0, "num_shards")])
def test_bad_shard_numbers_are_config_errors_naming_the_key(shard_id, num_shards, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        check_shard(shard_id, num_shards)


def test_caching_without_a_dataset_root_is_a_config_error_naming_the_key(vindr_with_a_missing_file, tmp_path):
    args, _ = vindr_with_a_missing_file
    with pytest.raises(ConfigError, match="key 'root'"):
        main([*[a for a in args if not a.startswith("--root=")], f"--out={tmp_path / 'cache'}"])
    assert not (tmp_path / "cache").exists()
