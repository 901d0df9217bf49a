"""Breast and patient ids, built and parsed in one place.

``breast_id = dataset/patient_id/exam_id/laterality`` names one breast of one screening exam everywhere: the report
corpus, embeddings, predictions and model inputs. ``patient_key = dataset/patient_id`` is the unit of splits and
bootstrap resampling (patient ids are unique only within a dataset).
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

__all__ = ["BREAST_KEYS", "BreastKey", "breast_id", "parse_breast_id", "breast_ids", "patient_keys"]

BREAST_KEYS = ["dataset", "patient_id", "exam_id", "laterality"]


class BreastKey(NamedTuple):
    dataset: str
    patient_id: str
    exam_id: str
    laterality: str

    @property
    def patient(self) -> str:
        """``dataset/patient_id``."""
        return f"{self.dataset}/{self.patient_id}"


def breast_id(dataset: object, patient_id: object, exam_id: object, laterality: object) -> str:
    """``dataset/patient_id/exam_id/laterality``."""
    return f"{dataset}/{patient_id}/{exam_id}/{laterality}"


def parse_breast_id(value: str) -> BreastKey:
    """The parts of a :func:`breast_id` (a dataset name never holds ``/``; a patient id may, an exam id may not).

    Raises:
        ValueError: naming the value when it has fewer than four parts or a laterality other than L / R.
    """
    dataset, _, rest = value.partition("/")
    parts = rest.rsplit("/", 2)
    if len(parts) != 3 or not dataset or parts[2] not in ("L", "R"):
        raise ValueError(f"not a breast id (dataset/patient_id/exam_id/L|R): {value!r}")
    return BreastKey(dataset, *parts)


def breast_ids(frame: pd.DataFrame) -> list[str]:
    """The :func:`breast_id` of every row of a frame with the :data:`BREAST_KEYS` columns."""
    return [breast_id(*key) for key in zip(*(frame[c] for c in BREAST_KEYS), strict=True)]


def patient_keys(frame: pd.DataFrame) -> pd.Series:
    """``dataset/patient_id`` of every row."""
    return frame["dataset"].astype(str) + "/" + frame["patient_id"].astype(str)
