from __future__ import annotations

import pandas as pd
import pytest

from mvmlm.data import schema


def _table(**changes) -> pd.DataFrame:
    rows = []
    for lat in "LR":
        for view in ("CC", "MLO"):
            rows.append(
                dict(
                    dataset="d",
                    patient_id="p1",
                    exam_id="e1",
                    image_id=f"i{lat}{view}",
                    path=f"x/{lat}{view}.dcm",
                    laterality=lat,
                    view=view,
                    split="train",
                    age=55.0,
                    birads=2,
                    density="B",
                    malignant=0,
                )
            )
    df = pd.DataFrame(rows)
    for column, (row, value) in changes.items():
        df.loc[row, column] = value
    return schema.conform(df)


def test_conform_adds_missing_columns_as_na_with_canonical_dtypes():
    df = _table()
    assert list(df.columns[: len(schema.COLUMNS)]) == list(schema.COLUMNS)
    assert df.mass.isna().all() and str(df.mass.dtype) == "Int64"
    assert schema.validate(df) == []


def test_validate_reports_every_violation_with_row_ids():
    df = _table(laterality=(1, "X"), density=(2, "E"), birads=(3, 9))
    problems = {p.column: p for p in schema.validate(df) if "not in" in p.problem}
    assert problems["laterality"].rows == ["iLMLO"]
    assert problems["density"].rows == ["iRCC"]
    assert problems["birads"].rows == ["iRMLO"]


def test_breast_level_disagreement_is_a_violation():
    df = _table(malignant=(1, 1))
    problem = next(p for p in schema.validate(df) if p.column == "malignant")
    assert sorted(problem.rows) == ["iLCC", "iLMLO"]


def test_duplicate_ids_and_missing_columns():
    df = _table(image_id=(1, "iLCC"))
    assert any(p.column == "image_id" and "duplicate" in p.problem for p in schema.validate(df))
    problems = schema.validate(df.drop(columns=["split"]))
    assert any("split" in p.column and "missing" in p.problem for p in problems)


def test_conform_rejects_uncastable_values():
    df = _table()
    df["birads"] = df["birads"].astype(object)
    df.loc[0, "birads"] = "four"
    with pytest.raises(schema.SchemaError, match="birads"):
        schema.conform(df)


def test_parquet_round_trip_and_write_refuses_invalid(tmp_path):
    df = _table()
    path = schema.write_table(df, tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(schema.read_table(path), df)
    with pytest.raises(schema.SchemaError, match="laterality"):
        schema.write_table(_table(laterality=(0, "left")), tmp_path / "bad.parquet")
    assert not (tmp_path / "bad.parquet").exists()


def test_read_table_names_a_missing_required_column(tmp_path):
    path = tmp_path / "t.parquet"
    _table().drop(columns=["laterality"]).to_parquet(path)
    with pytest.raises(schema.SchemaError) as caught:
        schema.read_table(path)
    message = str(caught.value)
    assert str(path) in message and "laterality" in message and "missing" in message
    assert "empty id/path" not in message and "disagree" not in message


def test_read_table_fills_missing_optional_columns(tmp_path):
    path = tmp_path / "t.parquet"
    _table().drop(columns=["mass", "pathology"]).to_parquet(path)
    table = schema.read_table(path)
    assert table.mass.isna().all() and table.pathology.isna().all()
