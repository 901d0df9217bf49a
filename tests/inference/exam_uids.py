"""The StudyInstanceUIDs of a synthetic set's DICOM files, to match predict's exam ids with a run's table ids."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pydicom


def study_uids(root: Path, table: pd.DataFrame) -> dict[str, str]:
    """The table's exam id -> the StudyInstanceUID of its DICOM files."""
    first = table.groupby("exam_id")["path"].first()
    return {
        exam: pydicom.dcmread(root / path, stop_before_pixels=True).StudyInstanceUID for exam, path in first.items()
    }
