"""VinDr-Mammo adapter on synthetic native-format data: equality with the generator's truth and every trap."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mvmlm.data import schema
from mvmlm.data.sources import SourceError, read_source
from mvmlm.data.sources import main as tables_main
from mvmlm.data.sources.vindr import BREAST_COLUMNS, BREAST_FILE, FINDING_COLUMNS, FINDING_FILE
from mvmlm.data.synthetic import main as synth_main

COMPARED = list(schema.COLUMNS)


@pytest.fixture(scope="module")
def vindr(synthetic_dataset) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    root, expected = synthetic_dataset("vindr")
    return root, expected, read_source("vindr", str(root))


def _by_image(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values("image_id", ignore_index=True)


def _boxes(table: pd.DataFrame) -> list[list[tuple]]:
    return [[tuple(sorted(dict(b).items())) for b in boxes] for boxes in _by_image(table)["boxes"]]


def _copy_tables(root: Path, tmp_path: Path) -> Path:
    for name in (BREAST_FILE, FINDING_FILE):
        shutil.copy(root / name, tmp_path / name)
    (tmp_path / "images").mkdir()
    return tmp_path


def test_adapter_reproduces_the_generator_truth(vindr):
    root, expected, table = vindr
    pd.testing.assert_frame_equal(_by_image(table)[COMPARED], _by_image(expected)[COMPARED])
    assert _boxes(table) == _boxes(expected)
    assert all((root / p).is_file() and p.endswith(".dicom") for p in table["path"])


def test_native_files_use_vindr_ids_headers_and_vocabularies(vindr):
    root, _, table = vindr
    breast = pd.read_csv(root / BREAST_FILE, dtype=str)
    findings = pd.read_csv(root / FINDING_FILE, dtype=str, keep_default_na=False)
    assert tuple(breast.columns) == BREAST_COLUMNS and tuple(findings.columns) == FINDING_COLUMNS
    assert breast["image_id"].str.fullmatch(r"[0-9a-f]{32}").all() and breast["study_id"].str.len().eq(32).all()
    assert set(breast["split"]) == {"training", "test"} and set(breast["view_position"]) == {"CC", "MLO"}
    assert breast["breast_birads"].str.fullmatch(r"BI-RADS [1-5]").all()
    assert breast["breast_density"].str.fullmatch(r"DENSITY [A-D]").all()
    assert set(findings["finding_birads"]) <= {"", "BI-RADS 3", "BI-RADS 4", "BI-RADS 5"}
    assert set(findings["image_id"]) == set(breast["image_id"])
    first = breast.iloc[0]
    row = table.set_index("image_id").loc[first["image_id"]]
    assert row["birads"] == int(first["breast_birads"][-1]) and row["density"] == first["breast_density"][-1]


def test_a_quoted_two_item_finding_list_gives_mass_and_calcification(vindr):
    root, _, table = vindr
    text = (root / FINDING_FILE).read_text()
    assert "\"['Mass', 'Suspicious Calcification']\"" in text or "\"['Suspicious Calcification', 'Mass']\"" in text
    findings = pd.read_csv(root / FINDING_FILE, dtype=str)
    both = findings.loc[findings["finding_categories"].str.count("'") == 4, "image_id"]
    rows = table[table["image_id"].isin(both)]
    assert len(rows) >= 1 and (rows["mass"] == 1).all() and (rows["calcification"] == 1).all()


def test_boxes_outside_the_image_are_clipped(vindr):
    root, _, table = vindr
    findings = pd.read_csv(root / FINDING_FILE)
    outside = findings[(findings["xmin"] < 0) | (findings["xmax"] > findings["width"])]
    assert len(outside) >= 1
    for _, row in outside.iterrows():
        boxes = table.set_index("image_id").loc[row["image_id"], "boxes"]
        assert all(0 <= b["xmin"] < b["xmax"] <= row["width"] for b in boxes)
        assert any(b["xmin"] == 0 or b["xmax"] == row["width"] for b in boxes)


def test_non_birads_findings_are_not_masses(vindr, tmp_path):
    root, _, _ = vindr
    tables = _copy_tables(root, tmp_path)
    findings = pd.read_csv(tables / FINDING_FILE, dtype=str, keep_default_na=False)
    image = findings.loc[findings["finding_categories"] == "['No Finding']", "image_id"].iloc[0]
    findings.loc[findings["image_id"] == image, ["finding_categories", "xmin", "ymin", "xmax", "ymax"]] = [
        "['Skin Thickening']",
        "1",
        "2",
        "3",
        "4",
    ]
    findings.to_csv(tables / FINDING_FILE, index=False)
    row = read_source("vindr", str(tables)).set_index("image_id").loc[image]
    assert row["mass"] == 0 and row["calcification"] == 0
    assert [b["finding"] for b in row["boxes"]] == ["Skin Thickening"]


def test_test_split_is_kept_and_training_is_divided_by_study(vindr):
    root, _, table = vindr
    source = pd.read_csv(root / BREAST_FILE, dtype=str).set_index("image_id")["split"]
    split = table.set_index("image_id")["split"]
    assert (split[source[source == "test"].index] == "test").all()
    assert set(split[source[source == "training"].index]) <= {"train", "val"}
    assert table.groupby("patient_id")["split"].nunique().max() == 1


@pytest.mark.parametrize("name", [BREAST_FILE, FINDING_FILE])
def test_missing_table_names_the_file(vindr, tmp_path, name):
    tables = _copy_tables(vindr[0], tmp_path)
    (tables / name).unlink()
    with pytest.raises(SourceError, match=name):
        read_source("vindr", str(tables))


@pytest.mark.parametrize(("name", "column"), [(BREAST_FILE, "breast_birads"), (FINDING_FILE, "finding_categories")])
def test_missing_column_names_file_and_column(vindr, tmp_path, name, column):
    tables = _copy_tables(vindr[0], tmp_path)
    pd.read_csv(tables / name, dtype=str).drop(columns=column).to_csv(tables / name, index=False)
    with pytest.raises(SourceError, match=rf"{name}.*{column}"):
        read_source("vindr", str(tables))


@pytest.mark.parametrize(
    ("name", "column", "value", "message"),
    [
        (BREAST_FILE, "breast_birads", "BIRADS four", "row 3: column 'breast_birads'"),
        (BREAST_FILE, "breast_density", "dense", "row 3: column 'breast_density'"),
        (FINDING_FILE, "finding_categories", "Mass, Suspicious Calcification", "row 3: column 'finding_categories'"),
    ],
)
def test_malformed_values_name_the_row(vindr, tmp_path, name, column, value, message):
    tables = _copy_tables(vindr[0], tmp_path)
    native = pd.read_csv(tables / name, dtype=str, keep_default_na=False)
    native.loc[1, column] = value
    native.to_csv(tables / name, index=False)
    with pytest.raises(SourceError, match=message):
        read_source("vindr", str(tables))


def test_synth_data_and_tables_commands(tmp_path):
    root, out = tmp_path / "vindr", tmp_path / "table.parquet"
    expected = synth_main(
        ["--format", "vindr", "--out", str(root), "--exams", "8", "--seed", "3", "height=64", "width=48"]
    )
    table = tables_main(["--source", "vindr", "--root", str(root), "--out", str(out)])
    written = schema.read_table(out)
    assert len(written) == len(expected) == len(table) and (root / "synthetic_truth.parquet").is_file()
    pd.testing.assert_frame_equal(_by_image(written)[COMPARED], _by_image(expected)[COMPARED])


def _break(text: str, fault: str) -> bytes:
    lines = text.splitlines(keepends=True)
    if fault == "extra field":
        lines[4] = lines[4].rstrip("\n") + ",surplus\n"
    elif fault == "unclosed quote":
        lines[3] = lines[3].replace(",", ',"', 1)
    elif fault == "header only":
        lines = lines[:1]
    elif fault == "empty":
        lines = []
    return "".join(lines).encode("latin-1" if fault == "latin-1" else "utf-8")


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("extra field", r"malformed CSV \(Error tokenizing data\. C error: Expected \d+ fields in line 5, saw \d+\)"),
        ("unclosed quote", r"malformed CSV \(.*EOF inside string starting at row 3"),
        ("empty", r"empty file; expected a VinDr-Mammo table with the columns \["),
        ("header only", r"no data rows \(header only\?\)"),
        ("latin-1", r" line 4: not UTF-8 \(b'\\xe9', e\.g\. Latin-1\); save the file as UTF-8"),
    ],
)
def test_malformed_native_csv_is_a_one_line_error_naming_the_file(vindr, tmp_path, capsys, fault, message):
    tables = _copy_tables(vindr[0], tmp_path)
    text = (tables / BREAST_FILE).read_text()
    if fault == "latin-1":
        lines = text.splitlines(keepends=True)
        lines[3] = lines[3].replace(",", ",é", 1)
        text = "".join(lines)
    (tables / BREAST_FILE).write_bytes(_break(text, fault))
    from mvmlm.cli import main as mvmlm

    assert mvmlm(["tables", "--source=vindr", f"--root={tables}", f"--out={tmp_path / 't.parquet'}"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and re.match(rf"error: {re.escape(str(tables / BREAST_FILE))}:?.*{message}", error), error


def test_study_in_two_splits_names_the_row_and_the_study(vindr, tmp_path):
    tables = _copy_tables(vindr[0], tmp_path)
    native = pd.read_csv(tables / BREAST_FILE, dtype=str, keep_default_na=False)
    study = native.loc[0, "study_id"]
    native.loc[native.index[native["study_id"] == study][1:], "split"] = (
        "test" if native.loc[0, "split"] != "test" else "training"
    )
    native.to_csv(tables / BREAST_FILE, index=False)
    with pytest.raises(SourceError, match=rf"row 2: study '{study}' is in more than one split \((test, training)\)"):
        read_source("vindr", str(tables))
