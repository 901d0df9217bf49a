"""``mvmlm predict --explain``: a heatmap per predicted view in OUT/heatmaps, named in the prediction rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from mvmlm.cli import main as cli


def test_explain_writes_a_heatmap_per_view_next_to_the_predictions(finetune_run, synthetic_dataset, tmp_path):
    root, table = synthetic_dataset("vindr", exams=64, seed=0)
    folder = tmp_path / "exam"
    folder.mkdir()
    for path in table.loc[table["exam_id"].isin(table["exam_id"].unique()[:2]), "path"]:
        shutil.copy(root / path, folder / Path(path).name)
    (bundle,) = (finetune_run / "models").iterdir()
    out = tmp_path / "pred"
    assert cli(["predict", "--model", str(bundle), "--input", str(folder), "--out", str(out), "--explain",
                "workers=0", "progress=false"]) == 0  # fmt: skip
    predicted = pd.read_csv(out / "predictions.csv")
    assert len(predicted) == 4 and predicted[["CC_heatmap", "MLO_heatmap"]].notna().all().all()
    for name in (*predicted["CC_heatmap"], *predicted["MLO_heatmap"]):
        assert (out / name).is_file() and name.startswith("heatmaps/") and name.endswith(".png")
    listed = pd.read_csv(out / "heatmaps" / "explanations.csv")
    assert len(listed) == 8
    heatmap = np.load(out / "heatmaps" / listed["map_file"].iloc[0])
    assert heatmap.min() >= 0 and heatmap.max() <= 1 and np.ptp(heatmap) > 0
