"""``mvmlm predict --covariates FILE.csv``: per-exam or per-image values (clinical covariates, metadata fields) that a
model reads beside the images, merged into the rows built from the DICOM headers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mvmlm.errors import InputError

__all__ = ["FILE_KEYS", "CovariatesFileError", "with_covariates_file"]


class CovariatesFileError(ValueError, InputError):
    """A ``--covariates`` file that cannot be used (no key column, a key twice)."""


#: the key columns of a covariates file: the DICOM SOPInstanceUID of an image, or the StudyInstanceUID of an exam
FILE_KEYS = ("image_id", "exam_id")


def with_covariates_file(images: pd.DataFrame, path: str | Path, names: Sequence[str]) -> pd.DataFrame:
    """``images`` (canonical rows, e.g. from DICOM headers) with the covariates ``names`` of the CSV ``path`` put in:
    a value of the file replaces the image's own (e.g. the header's PatientAge); rows are matched by ``image_id``
    (SOPInstanceUID) or else ``exam_id`` (StudyInstanceUID), the file's first key column of the two.

    Raises:
        CovariatesFileError: no key column, or a key on two rows (naming the file and the key).
    """
    frame = pd.read_csv(path, dtype={k: str for k in FILE_KEYS})
    key = next((k for k in FILE_KEYS if k in frame.columns), None)
    if key is None:
        raise CovariatesFileError(f"{path}: no column image_id (SOPInstanceUID) or exam_id (StudyInstanceUID)")
    twice = frame[key].duplicated()
    if twice.any():
        raise CovariatesFileError(f"{path}: {key} {frame[key][twice].iloc[0]!r} on two rows; one row per {key}")
    given = [n for n in names if n in frame.columns]
    values = frame.set_index(key)[given].reindex(images[key].astype(str).to_numpy())
    out = images.copy()
    for name in given:
        found = values[name].to_numpy()
        known = pd.notna(found)
        column = out[name].astype(object) if name in out else pd.Series(None, index=out.index, dtype=object)
        out[name] = column.where(~known, pd.Series(found, index=out.index))
    return out
