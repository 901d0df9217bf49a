"""preprocess on bad input: damaged files, crashing or hanging decoders, failure budgets and exit codes, folders."""

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from mvmlm.batch import TooManyFailuresError
from mvmlm.cli import main as mvmlm
from mvmlm.data import dicom, schema
from mvmlm.data.preprocess import FAILURES_FILE, TABLE_FILE, PreprocessParams, cache_folder, preprocess_table
from mvmlm.data.preprocess_command import main
from mvmlm.data.synthetic.dicom_writer import write_mammogram_dicom

SMALL = PreprocessParams(height=48, width=32)


def _phantom() -> np.ndarray:
    yy, xx = np.mgrid[:48, :64]
    inside = (xx / 45) ** 2 + ((yy - 24) / 22) ** 2 < 1
    return np.where(inside, 1000 + (xx * yy) % 3000, 0).astype(np.uint16)


def _write(path: Path, **kwargs) -> Path:
    return write_mammogram_dicom(path, _phantom(), laterality="L", view="CC", patient_id="bad", **kwargs)


def _damaged(folder: Path) -> dict[str, str]:
    """Damaged files made here: image id -> what each one's failure row must say."""
    expected = {}
    for tsyntax in (JPEG2000Lossless, JPEGLSLossless, RLELossless):
        for fault in ("rows", "cut"):
            path = folder / f"{fault}-{tsyntax}.dcm"
            ds = pydicom.dcmread(_write(path, transfer_syntax=tsyntax))
            if fault == "rows":
                ds.Rows = 96
            else:
                frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
                ds.PixelData = pydicom.encaps.encapsulate([frame[: len(frame) // 2 // 2 * 2]])
            ds.save_as(path)
            expected[path.stem] = "damaged file" if tsyntax != RLELossless else "cannot decode"
    for modality, sop_class in (("CT", "1.2.840.10008.5.1.4.1.1.2"), ("MR", "1.2.840.10008.5.1.4.1.1.4")):
        path = folder / f"{modality}.dcm"
        _write(path, extra_tags={"Modality": modality, "SOPClassUID": sop_class})
        expected[path.stem] = "not a mammogram"
    path = folder / "raw.dcm"
    _write(path, extra_tags={"PresentationIntentType": "FOR PROCESSING"})
    expected[path.stem] = "FOR PROCESSING"
    return expected


def _with_rows(table: pd.DataFrame, names: list[str], folder: str) -> pd.DataFrame:
    bad = pd.concat([table.iloc[:1]] * len(names), ignore_index=True)
    bad = bad.assign(image_id=names, exam_id="bad", patient_id="bad", path=[f"{folder}/{n}.dcm" for n in names])
    return schema.conform(pd.concat([table, bad], ignore_index=True))


@pytest.fixture
def damaged_dataset(synthetic_dataset, tmp_path) -> tuple[Path, pd.DataFrame, dict[str, str]]:
    source, truth = synthetic_dataset("vindr")
    root = tmp_path / "root"
    shutil.copytree(source, root)
    (root / "damaged").mkdir()
    expected = _damaged(root / "damaged")
    return root, _with_rows(truth, list(expected), "damaged"), expected


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_each_damaged_or_non_mammography_file_is_one_failure_row_and_the_rest_is_cached(damaged_dataset, tmp_path):
    root, table, expected = damaged_dataset
    cached = preprocess_table(table, root, tmp_path / "cache", SMALL, workers=2, progress=False)
    failures = pd.read_csv(cache_folder(tmp_path / "cache", SMALL, table) / FAILURES_FILE).set_index("image_id")
    assert sorted(failures.index) == sorted(expected)
    for image_id, reason in expected.items():
        assert reason in failures.loc[image_id, "error"] and image_id in failures.loc[image_id, "error"]
    assert len(cached) == len(table) - len(expected) and not set(cached["image_id"]) & set(expected)


_READ = dicom.read_mammogram


def _crashing_reader(path, **kwargs):
    """read_mammogram with an aborting decoder for "abort*" files, a segfault for "segv*", a hang for "hang*"."""
    name = Path(path).name
    if name.startswith("abort"):
        os.abort()
    if name.startswith("segv"):
        os.kill(os.getpid(), 11)
    if name.startswith("hang"):
        time.sleep(60)
    return _READ(path, **kwargs)


@pytest.mark.parametrize("workers", [1, 3])
def test_decoder_crash_or_hang_fails_one_image_and_the_batch_goes_on(synthetic_dataset, tmp_path, monkeypatch, workers):
    root, truth = synthetic_dataset("vindr")
    names = ["abort-1", "segv-1", "hang-1", "abort-2"]
    table = _with_rows(truth, names, ".")
    monkeypatch.setattr(dicom, "read_mammogram", _crashing_reader)  # the forked workers inherit it
    start = time.monotonic()
    cached = preprocess_table(table, root, tmp_path, SMALL, workers=workers, timeout=1.5, progress=False)
    assert time.monotonic() - start < 15
    errors = pd.read_csv(cache_folder(tmp_path, SMALL, table) / FAILURES_FILE).set_index("image_id")["error"]
    assert errors.to_dict() == {
        "abort-1": "decoder crashed: signal 6 (SIGABRT)",
        "segv-1": "decoder crashed: signal 11 (SIGSEGV)",
        "hang-1": "timed out after 1.5 s",
        "abort-2": "decoder crashed: signal 6 (SIGABRT)",
    }
    assert sorted(cached["image_id"]) == sorted(truth["image_id"])


def _args(table: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return [f"--table={table}", f"--root={root}", f"--out={out}", "height=48", "width=32", "progress=false", *extra]


def test_everything_failing_exits_2_after_writing_the_failures(synthetic_dataset, tmp_path, capsys):
    _, truth = synthetic_dataset("vindr")
    schema.write_table(truth, tmp_path / "table.parquet")
    (tmp_path / "empty").mkdir()
    assert mvmlm(["preprocess", *_args(tmp_path / "table.parquet", tmp_path / "empty", tmp_path / "cache")]) == 2
    folder = cache_folder(tmp_path / "cache", SMALL, truth)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"error: all {len(truth)} images failed (listed in {folder / FAILURES_FILE})"
    assert len(pd.read_csv(folder / FAILURES_FILE)) == len(truth) and (folder / "metrics.json").is_file()


def test_more_failures_than_max_failures_exit_non_zero_and_fewer_do_not(damaged_dataset, tmp_path):
    root, table, expected = damaged_dataset
    schema.write_table(table, tmp_path / "table.parquet")
    args = _args(tmp_path / "table.parquet", root, tmp_path / "cache")
    with pytest.raises(TooManyFailuresError, match=rf"{len(table) - len(expected)} of {len(table)} images done, "):
        main(args)  # 9 of 41 failed > 0.1
    metrics = main([*args, "max_failures=0.25"])  # the rerun retries only the failed images
    assert metrics["failures"] == len(expected) and metrics["cached"] == len(table) - len(expected)


def test_bad_max_failures_is_a_config_error(tmp_path):
    assert mvmlm(["preprocess", *_args(tmp_path / "t.parquet", tmp_path, tmp_path / "c", "max_failures=2")]) == 2


@pytest.mark.parametrize("missing", ["table", "root"])
def test_missing_table_or_root_is_a_one_line_error_and_creates_no_folder(synthetic_dataset, tmp_path, capsys, missing):
    root, truth = synthetic_dataset("vindr")
    schema.write_table(truth, tmp_path / "table.parquet")
    table = tmp_path / ("nope.parquet" if missing == "table" else "table.parquet")
    assert mvmlm(["preprocess", *_args(table, tmp_path / "nope" if missing == "root" else root, tmp_path / "c")]) == 2
    assert "error: " in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_two_datasets_in_one_out_folder_keep_their_own_tables(synthetic_dataset, tmp_path):
    runs = {}
    for fmt in ("vindr", "cmmd"):
        root, truth = synthetic_dataset(fmt)
        schema.write_table(truth, tmp_path / f"{fmt}.parquet")
        runs[fmt] = main(_args(tmp_path / f"{fmt}.parquet", root, tmp_path / "cache"))
    assert runs["vindr"]["folder"] != runs["cmmd"]["folder"]
    for fmt, metrics in runs.items():
        assert set(schema.read_table(Path(metrics["folder"]) / TABLE_FILE)["dataset"]) == {fmt}
    with pytest.raises(Exception, match="2 cache folders"):
        cache_folder(tmp_path / "cache", SMALL)
