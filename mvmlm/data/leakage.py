"""Patient leakage between splits: a table whose patient has rows in two splits is refused by every command that
trains or evaluates on it (a validation breast whose other breast or earlier exam was trained on looks perfect)."""

from __future__ import annotations

import pandas as pd

from mvmlm.data.ids import patient_keys
from mvmlm.errors import InputError

__all__ = ["SplitError", "check_patient_splits"]


class SplitError(ValueError, InputError):
    """A table's splits cannot serve a command: a patient in two splits, or a configured split is empty."""


def check_patient_splits(table: pd.DataFrame, source: str = "table") -> None:
    """Raise :class:`SplitError` naming the patients whose rows (images or breasts) lie in more than one split."""
    spread = table.groupby(patient_keys(table))["split"].nunique()
    leaking = sorted(spread[spread > 1].index)
    if leaking:
        raise SplitError(
            f"{source}: {len(leaking)} patient(s) have images in more than one split (e.g. {', '.join(leaking[:3])}); "
            "re-split by patient (`mvmlm split`)"
        )
