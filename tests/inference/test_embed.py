"""``mvmlm embed``: per-view embeddings equal the image tower's on the cached images; a breast row pools its views."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

import mvmlm
from mvmlm.cli import main as cli
from mvmlm.data.preprocess import load_cached, read_cached_table


def test_embed_a_cache_table_gives_the_towers_view_and_breast_embeddings(finetune_run, text_image_set, tmp_path):
    (bundle,) = (finetune_run / "models").iterdir()
    table = text_image_set(64, test_fraction=0.35).table
    out = tmp_path / "emb.parquet"
    assert cli(["embed", "--model", str(bundle), "--input", str(table), "--out", str(out), "workers=0"]) == 0
    frame = pd.read_parquet(out)
    views = frame[frame["level"] == "view"].set_index("image_id")
    cached = read_cached_table(table).set_index("image_id").loc[views.index[:6]]
    model = mvmlm.load_model(bundle)
    with torch.no_grad():
        images = torch.stack([torch.from_numpy(load_cached(p))[None] for p in cached["cache_path"]])
        expected = model.embed_images(images).numpy()
    np.testing.assert_allclose(np.stack(views["embedding"].iloc[:6].to_numpy()), expected, atol=1e-5)
    breast = frame[frame["level"] == "breast"].iloc[0]
    same = views[(views["exam_id"] == breast["exam_id"]) & (views["laterality"] == breast["laterality"])]
    np.testing.assert_allclose(breast["embedding"], np.stack(same["embedding"].to_numpy()).mean(0), atol=1e-6)
