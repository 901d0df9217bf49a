"""``mvmlm predict`` with a moved dual-stream bundle: refused without ``--rois``; with a box per image (the lesion
masks' boxes) it predicts what the run's evaluation predicted from the cached crops, to 1e-5."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from mvmlm.cli import main as cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dual_stream_run(synthetic_dataset, tmp_path_factory) -> tuple[Path, Path, pd.DataFrame]:
    """A one-epoch tiny dual-stream run on 24 synthetic CBIS-DDSM exams (32x32 images and crops): (run, dataset
    root, canonical table)."""
    from downstream.dual_stream.run import main as dual_stream
    from mvmlm.data import schema
    from mvmlm.data.preprocess import PreprocessParams, RoiParams, cache_folder
    from mvmlm.data.sources import cbis_ddsm

    root, _ = synthetic_dataset("cbis_ddsm", exams=24, seed=0)
    table = cbis_ddsm.read(root, val_fraction=0.3)
    work = tmp_path_factory.mktemp("dual_stream")
    roi = ["roi.enabled=true", "roi.size=32", "roi.min_side=16"]
    assert cli(["preprocess", f"table={schema.write_table(table, work / 'table.parquet')}", f"root={root}",
                f"out={work / 'cache'}", "height=32", "width=32", *roi, "progress=false"]) == 0  # fmt: skip
    params = PreprocessParams(height=32, width=32, roi=RoiParams(enabled=True, size=32, min_side=16))
    out = work / "run"
    dual_stream(
        ["--config", str(REPO / "configs/dual_stream/tiny_cpu.yaml"), f"out={out}", "train.epochs=1", "bootstrap=0",
         f"data.table={cache_folder(work / 'cache', params) / 'table.parquet'}"]
    )  # fmt: skip
    return out, root, table


def _rois(root: Path, table: pd.DataFrame, path: Path) -> Path:
    """The bounding box of every lesion mask, in pixels of its full image, keyed by the image's file path."""
    rows = []
    for image, masks in zip(table["path"], table["roi_path"], strict=True):
        shape = pydicom.dcmread(root / image, stop_before_pixels=True)
        for mask in [m for m in str(masks).split(";") if m and isinstance(masks, str)]:
            pixels = pydicom.dcmread(root / mask).pixel_array
            ys, xs = np.nonzero(pixels > pixels.max() / 2)
            sy, sx = shape.Rows / pixels.shape[0], shape.Columns / pixels.shape[1]
            box = (xs.min() * sx, ys.min() * sy, (xs.max() + 1) * sx, (ys.max() + 1) * sy)
            rows.append({"image": str(root / image), **dict(zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True))})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_dual_stream_bundle_needs_rois_and_predicts_the_runs_scores_with_them(dual_stream_run, tmp_path, capsys):
    from downstream.dual_stream.config import MammoMambaConfig
    from downstream.dual_stream.data import load_breasts
    from mvmlm.config import build_config
    from mvmlm.data import schema

    run, root, table = dual_stream_run
    bundle = Path(shutil.copytree(run / "best", tmp_path / "moved"))
    canonical = schema.write_table(table, tmp_path / "table.parquet")
    args = ["predict", "--model", str(bundle), "--input", str(canonical), f"root={root}", "workers=0"]
    assert cli([*args, "--out", str(tmp_path / "refused")]) == 2
    assert "predicts from lesion crops: give --rois FILE.csv" in capsys.readouterr().err

    rois = _rois(root, table, tmp_path / "rois.csv")
    assert cli([*args, "--out", str(tmp_path / "pred"), f"rois={rois}", "progress=false"]) == 0
    predicted = pd.read_parquet(tmp_path / "pred" / "predictions.parquet")
    predicted = predicted.set_index(["patient_id", "exam_id", "laterality"])

    expected = pd.read_parquet(run / "predictions.parquet")
    cfg = build_config(MammoMambaConfig, [run / "config.yaml"])
    breasts = load_breasts(cfg.data, cfg.model.streams).set_index("breast_id").loc[expected["id"]]
    keys = list(zip(breasts["patient_id"], breasts["exam_id"], breasts["laterality"], strict=True))
    got = predicted.loc[keys, "prob_pathology_malignant"].to_numpy()
    np.testing.assert_allclose(got, [s[0] for s in expected["scores"]], atol=1e-5)
    assert len(got) >= 8 and np.ptp(got) > 1e-3


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("image,xmin,ymin\na.dcm,1,2\n", "missing column(s) xmax, ymax"),
        ("image,xmin,ymin,xmax,ymax\na.dcm,5,2,3,4\n", "row 2:"),
    ],
)
def test_a_bad_rois_file_is_refused_naming_it(tmp_path, content, error):
    from mvmlm.inference.rois import RoiError, read_rois

    (tmp_path / "rois.csv").write_text(content)
    with pytest.raises(RoiError, match=f"rois.csv: {re.escape(error)}"):
        read_rois(tmp_path / "rois.csv")
