"""Contact sheets: the first exams of a cached table, four views each, numbered - never named by their ids."""

from __future__ import annotations

import matplotlib.figure
import pytest

from mvmlm.data.contact_sheet import contact_sheet
from mvmlm.data.preprocess import PreprocessParams, cache_folder, preprocess_table, read_cached_table


def test_a_contact_sheet_draws_the_first_exams_numbered_without_their_identifiers(
    synthetic_dataset, tmp_path, monkeypatch
):
    root, truth = synthetic_dataset("vindr", exams=4, seed=0)
    params = PreprocessParams(height=48, width=32)
    preprocess_table(truth, root, tmp_path / "cache", params, workers=1, progress=False)
    cached = read_cached_table(cache_folder(tmp_path / "cache", params) / "table.parquet")
    titles: list[str] = []
    suptitle = matplotlib.figure.SubFigure.suptitle
    monkeypatch.setattr(
        matplotlib.figure.SubFigure,
        "suptitle",
        lambda self, text, **kw: titles.append(text) or suptitle(self, text, **kw),
    )
    out = contact_sheet(cached, tmp_path / "sheet.png", exams=3)
    assert out.stat().st_size > 1000
    assert [t.split("  ")[0] for t in titles] == ["exam 1 of 3", "exam 2 of 3", "exam 3 of 3"]
    ids = set(cached["patient_id"].astype(str)) | set(cached["exam_id"].astype(str))
    assert not [t for t in titles for i in ids if i in t]
    with pytest.raises(ValueError, match="no exam"):
        contact_sheet(cached.iloc[:0], tmp_path / "empty.png")
