"""What ``predict`` reads from DICOM headers: a duplicate view in one breast is resolved by acquisition time (the
newer wins), the other image is skipped with the reason; the header gives the acquisition time and the age."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from mvmlm.data.dicom import read_dicom_header
from mvmlm.inference.inputs import collect


@pytest.fixture
def exam_folder(synthetic_dataset, tmp_path) -> Path:
    """The DICOM files of one synthetic VinDr exam, without acquisition times."""
    root, table = synthetic_dataset("vindr", exams=4, seed=0)
    exam = table[table["exam_id"] == table["exam_id"].iloc[0]]
    folder = tmp_path / "exam"
    folder.mkdir()
    for path in exam["path"]:
        ds = pydicom.dcmread(root / path)
        for keyword in ("AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime", "ContentDate", "ContentTime"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(folder / Path(path).name)
    return folder


def _copy(source: Path, target: Path, uid: str = "", **headers: str) -> str:
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = uid or generate_uid()
    for keyword, value in headers.items():
        setattr(ds, keyword, value)
    ds.save_as(target)
    return ds.SOPInstanceUID


def _first_cc(folder: Path) -> Path:
    return next(p for p in sorted(folder.iterdir()) if read_dicom_header(p).view == "CC")


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        (
            {"AcquisitionDate": "20240105", "AcquisitionTime": "093000"},
            {"AcquisitionDate": "20240105", "AcquisitionTime": "093512.5"},
        ),
        ({"ContentDate": "20231231", "ContentTime": "235959"}, {"ContentDate": "20240101", "ContentTime": "000001"}),
        ({"AcquisitionDate": "20240105", "SeriesNumber": "3"}, {"AcquisitionDate": "20240105", "SeriesNumber": "12"}),
    ],
    ids=["acquisition time", "content date", "series number"],
)
def test_a_duplicate_view_keeps_the_newer_acquisition(exam_folder, older, newer):
    cc = _first_cc(exam_folder)
    side = read_dicom_header(cc).laterality
    old = _copy(cc, exam_folder / "a_old.dcm", "1.2.826.0.1.1", **older)  # the smaller id: used without the rule
    new = _copy(cc, exam_folder / "z_new.dcm", "1.2.826.0.1.2", **newer)
    cc.unlink()
    inputs = collect([str(exam_folder)])
    used = inputs.images[(inputs.images["laterality"] == side) & (inputs.images["view"] == "CC")]
    assert used["image_id"].tolist() == [new]
    (skip,) = [s for s in inputs.skipped if s["path"].endswith("a_old.dcm")]
    assert f"duplicate CC view of its breast: image {new} is a newer acquisition" in skip["reason"]
    assert old not in set(inputs.images["image_id"])


def test_without_acquisition_times_the_smaller_image_id_is_used_and_said(exam_folder):
    cc = _first_cc(exam_folder)
    first = _copy(cc, exam_folder / "copy1.dcm")
    second = _copy(cc, exam_folder / "copy2.dcm")
    cc.unlink()
    inputs = collect([str(exam_folder)])
    kept, dropped = sorted([first, second])
    assert kept in set(inputs.images["image_id"]) and dropped not in set(inputs.images["image_id"])
    (reason,) = [s["reason"] for s in inputs.skipped]
    assert (
        reason == f"duplicate CC view of its breast with the same acquisition time: image {kept} (smaller id) is used"
    )


def test_the_header_gives_acquisition_time_series_instance_and_age(exam_folder):
    cc = _first_cc(exam_folder)
    _copy(cc, exam_folder / "stamped.dcm", AcquisitionDateTime="20240105093512.25+0100", ContentDate="20230101",
          SeriesNumber="7", InstanceNumber="2", PatientAge="061Y")  # fmt: skip
    meta = read_dicom_header(exam_folder / "stamped.dcm")
    assert (meta.acquired, meta.series_number, meta.instance_number) == ("20240105093512.250000", 7, 2)
    assert meta.age == 61
    row = collect([str(exam_folder / "stamped.dcm")]).images.iloc[0]
    assert row["age"] == 61
