"""Clinical covariates beside the image embedding (``risk.covariates: [age, density, ...]``).

Any canonical-table column can be a covariate; its exam value is the first non-missing value over the exam's
images. Numeric columns enter as they are, others one-hot (one column per category seen in training). A covariate
missing for some training exams is imputed with its training mean (numeric) or left all-zero (categorical) and gets
a missing-indicator column. The models standardise every column on the training split. The encoder is plain JSON
(saved in a risk bundle). Torch-free.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from mvmlm.config import ConfigError
from mvmlm.data.exams import EXAM_KEYS

__all__ = ["exam_covariates", "Covariate", "CovariateEncoder"]

log = logging.getLogger(__name__)


def exam_covariates(table: pd.DataFrame, exams: pd.DataFrame, names: Sequence[str], source: str = "") -> pd.DataFrame:
    """The covariates ``names`` of each row of ``exams`` (first non-missing value over the exam's images).

    Raises:
        ConfigError: a covariate is not a column of the table (naming it and the table).
    """
    absent = [n for n in names if n not in table.columns]
    if absent:
        raise ConfigError(f"key 'risk.covariates': {', '.join(absent)} not a column of the table {source}".strip())
    if not names:
        return pd.DataFrame(index=exams.index)
    values = table.groupby(EXAM_KEYS, sort=False)[list(names)].first()
    keys = pd.MultiIndex.from_frame(exams[EXAM_KEYS])
    return values.reindex(keys).set_axis(exams.index)


@dataclass
class Covariate:
    """How one covariate becomes columns: ``numeric`` (imputed with ``fill``) or ``categorical`` (one-hot over
    ``categories``), plus a missing indicator when ``missing``."""

    name: str
    kind: str
    categories: list[str] = field(default_factory=list)
    fill: float = 0.0
    missing: bool = False

    def columns(self) -> list[str]:
        names = [self.name] if self.kind == "numeric" else [f"{self.name}={c}" for c in self.categories]
        return names + ([f"{self.name}_missing"] if self.missing else [])

    def encode(self, values: pd.Series) -> np.ndarray:
        absent = values.isna().to_numpy()
        if self.kind == "numeric":
            parts = [np.where(absent, self.fill, pd.to_numeric(values, errors="coerce").to_numpy(float))[:, None]]
        else:
            text = values.astype(str).to_numpy()
            parts = [np.stack([(text == c) & ~absent for c in self.categories], axis=1).astype(float)]
        if self.missing:
            parts.append(absent[:, None].astype(float))
        return np.concatenate(parts, axis=1)


@dataclass
class CovariateEncoder:
    """The covariates of a risk model, fitted on the training exams."""

    covariates: list[Covariate]

    @classmethod
    def fit(cls, train: pd.DataFrame) -> CovariateEncoder:
        found = []
        for name in train.columns:
            values = train[name]
            absent = values.isna()
            if absent.all():
                raise ConfigError(f"key 'risk.covariates': {name} is missing for every training exam")
            if absent.any():
                log.info(
                    "risk covariate %s: missing for %d of %d training exams, imputed", name, absent.sum(), len(train)
                )
            if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
                fill = float(pd.to_numeric(values, errors="coerce").mean())
                found.append(Covariate(name, "numeric", fill=fill, missing=bool(absent.any())))
            else:
                categories = sorted(values.dropna().astype(str).unique())
                found.append(Covariate(name, "categorical", categories=categories, missing=bool(absent.any())))
        return cls(found)

    def columns(self) -> list[str]:
        return [c for cov in self.covariates for c in cov.columns()]

    def transform(self, values: pd.DataFrame) -> np.ndarray:
        """``(n, len(columns()))`` for the exams in ``values`` (a missing value of a covariate complete in training is
        imputed too)."""
        if not self.covariates:
            return np.zeros((len(values), 0))
        return np.concatenate([cov.encode(values[cov.name]) for cov in self.covariates], axis=1)

    def unusable(self, values: pd.DataFrame) -> pd.Series:
        """Per exam of ``values``, why the model cannot score it ('' when it can): a covariate missing that was
        complete in training (the model learned no imputation for it)."""
        reasons = pd.Series("", index=values.index, dtype=object)
        for cov in self.covariates:
            absent = values[cov.name].isna() if cov.name in values else pd.Series(True, index=values.index)
            if cov.missing or not absent.any():
                continue
            reason = f"covariate {cov.name!r} missing (the risk model was trained with it); give it in --covariates"
            reasons[absent & (reasons == "")] = reason
        return reasons

    def to_dict(self) -> dict:
        return {"covariates": [asdict(c) for c in self.covariates]}

    @classmethod
    def from_dict(cls, data: dict) -> CovariateEncoder:
        return cls([Covariate(**c) for c in data.get("covariates", [])])
