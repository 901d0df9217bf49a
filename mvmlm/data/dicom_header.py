"""The header side of a mammography DICOM file: which breast and view it shows, whose study it belongs to and when it
was acquired (:class:`MammogramMeta`), read without decoding the pixel data. :mod:`mvmlm.data.dicom` decodes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

__all__ = ["VIEW_CODES", "DicomReadError", "MammogramMeta", "read_dataset", "header_text", "header_meta"]

#: view -> (SNOMED CT code value, code meaning) as used in ViewCodeSequence (CMMD)
VIEW_CODES: dict[str, tuple[str, str]] = {
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
}
_VIEW_BY_CODE = {code: view for view, (code, _) in VIEW_CODES.items()}
_VIEW_BY_MEANING = {meaning: view for view, (_, meaning) in VIEW_CODES.items()}

_AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


class DicomReadError(ValueError):
    """A DICOM file could not be turned into an image."""


@dataclass(frozen=True)
class MammogramMeta:
    """What :func:`read_mammogram` found in (and did to) one file."""

    laterality: str | None  # "L" / "R" from ImageLaterality, else Laterality
    view: str | None  # ViewPosition, else from ViewCodeSequence ("CC", "MLO", or its code meaning)
    photometric: str  # PhotometricInterpretation as stored
    voi_function: str  # VOI applied: LUT (VOILUTSequence), LINEAR, LINEAR_EXACT, SIGMOID, or NONE (image min-max)
    transfer_syntax: str
    bits_stored: int
    rows: int
    cols: int
    flipped: bool | None  # mirrored to put the chest wall on the left; None when only the header was read
    patient_id: str | None
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    age: float | None  # years, from PatientAge ("055Y", "030M", ...)
    presentation_intent: str | None  # PresentationIntentType
    acquired: str | None = None  # "YYYYMMDDHHMMSS.ffffff" from AcquisitionDateTime / -Date + -Time, else Content*
    series_number: int | None = None  # SeriesNumber
    instance_number: int | None = None  # InstanceNumber


def read_dataset(path: str | Path, **kwargs) -> Dataset:
    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError as e:
        raise DicomReadError(f"{path}: not a DICOM file ({e})") from e
    except Exception as e:  # pydicom's parser raises many types on damaged files
        raise DicomReadError(f"{path}: unreadable DICOM ({type(e).__name__}: {e})") from e


def header_text(ds: Dataset, *keywords: str) -> str | None:
    """The first non-empty value among ``keywords``, stripped."""
    for keyword in keywords:
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            return value
    return None


def _view(ds: Dataset) -> str | None:
    if view := header_text(ds, "ViewPosition"):
        return view.upper()
    for item in ds.get("ViewCodeSequence", []):
        code, meaning = str(item.get("CodeValue", "")), str(item.get("CodeMeaning", "")).strip()
        if code in _VIEW_BY_CODE:
            return _VIEW_BY_CODE[code]
        if meaning:
            return _VIEW_BY_MEANING.get(meaning.lower(), meaning)
    return None


def _age(value: str | None) -> float | None:
    """Years from a DICOM age string such as "055Y"; None when absent or malformed."""
    if not value or len(value) < 2 or value[-1].upper() not in _AGE_UNITS or not value[:-1].isdigit():
        return None
    return int(value[:-1]) * _AGE_UNITS[value[-1].upper()]


def _integer(value: str | None) -> int | None:
    try:
        return int(float(value)) if value else None
    except ValueError:
        return None


def _timestamp(date: str | None, time: str | None) -> str | None:
    """``YYYYMMDDHHMMSS.ffffff`` (sortable as text) from a DICOM DA (``20240131``, old ``2024.01.31``) and TM
    (``093015.25``, old ``09:30:15``; missing: midnight); None without a valid date."""
    day = "".join(c for c in date or "" if c.isdigit())
    if len(day) != 8:
        return None
    whole, _, fraction = (time or "").partition(".")
    clock = "".join(c for c in whole if c.isdigit())[:6].ljust(6, "0")
    return f"{day}{clock}.{''.join(c for c in fraction if c.isdigit())[:6].ljust(6, '0')}"


def _acquired(ds: Dataset) -> str | None:
    """When the image was acquired: AcquisitionDateTime, AcquisitionDate + Time, else ContentDate + Time."""
    stamp = header_text(ds, "AcquisitionDateTime")
    if stamp and (found := _timestamp(stamp[:8], stamp[8:].split("+")[0].split("-")[0])):
        return found
    return _timestamp(header_text(ds, "AcquisitionDate"), header_text(ds, "AcquisitionTime")) or _timestamp(
        header_text(ds, "ContentDate"), header_text(ds, "ContentTime")
    )


def header_meta(ds: Dataset, *, voi_function: str, flipped: bool | None) -> MammogramMeta:
    laterality = header_text(ds, "ImageLaterality", "Laterality")
    return MammogramMeta(
        laterality=laterality.upper() if laterality else None,
        view=_view(ds),
        photometric=str(ds.get("PhotometricInterpretation", "")),
        voi_function=voi_function,
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        bits_stored=int(ds.get("BitsStored", 0) or 0),
        rows=int(ds.get("Rows", 0) or 0),
        cols=int(ds.get("Columns", 0) or 0),
        flipped=flipped,
        patient_id=header_text(ds, "PatientID"),
        study_uid=header_text(ds, "StudyInstanceUID"),
        series_uid=header_text(ds, "SeriesInstanceUID"),
        sop_uid=header_text(ds, "SOPInstanceUID"),
        age=_age(header_text(ds, "PatientAge")),
        presentation_intent=header_text(ds, "PresentationIntentType"),
        acquired=_acquired(ds),
        series_number=_integer(header_text(ds, "SeriesNumber")),
        instance_number=_integer(header_text(ds, "InstanceNumber")),
    )
