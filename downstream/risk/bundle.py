"""Risk models as bundles (kinds ``risk-coxnet`` and ``risk-hazard``): the fitted model, its inputs (image
embedding, clinical covariates or both) and its per-horizon calibration, all plain arrays in ``model.safetensors``
and JSON in ``config.json`` (no pickle)::

    model = mvmlm.load_model("runs/risk/models/coxnet")
    scores = model.predict_risk(embeddings, clinical)     # calibrated RiskScores: probs (n, T), risk (n,)

``config.json`` also records the encoder, embedding and view pooling that made the embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from downstream.risk.calibration import Calibrator
from downstream.risk.covariates import CovariateEncoder
from downstream.risk.metrics import RiskScores
from downstream.risk.models import CoxnetModel, HazardModel
from mvmlm.bundle import Bundle, ModelCardInfo, bundle_config

__all__ = ["INPUTS", "RiskPredictor", "RiskBundle", "CoxnetBundle", "HazardBundle", "RISK_BUNDLES", "save_risk_bundle"]

INPUTS = ("image", "clinical", "combined")
WEIGHTS = "model.safetensors"


@dataclass
class RiskPredictor:
    """A fitted risk model with its inputs and calibration: embeddings and / or covariates -> k-year risks."""

    model: Any  # a downstream.risk.models.RiskModel
    calibrator: Calibrator
    inputs: str
    covariates: CovariateEncoder

    def features(self, embeddings: np.ndarray | None, clinical: pd.DataFrame | None) -> np.ndarray:
        """The model's input columns: the embedding, the encoded covariates, or both side by side."""
        parts = []
        if self.inputs in ("image", "combined"):
            parts.append(np.asarray(embeddings, float))
        if self.inputs in ("clinical", "combined"):
            parts.append(self.covariates.transform(clinical))
        return np.concatenate(parts, axis=1)

    def predict(
        self, embeddings: np.ndarray | None, clinical: pd.DataFrame | None = None
    ) -> tuple[RiskScores, RiskScores]:
        """``(raw, calibrated)`` scores; both keep the raw ``risk`` score (the ranking of the concordance indices)."""
        raw = self.model.predict(self.features(embeddings, clinical))
        return raw, RiskScores(probs=self.calibrator(raw.probs), risk=raw.risk)


class RiskBundle(Bundle):
    """A risk model on exam embeddings (+ covariates): -> calibrated cumulative 1..T-year risks."""

    level = "exam"
    model_type: ClassVar[Any] = None

    def write_files(self, directory: Path) -> None:
        predictor: RiskPredictor = self.module
        arrays = {**predictor.model.arrays(), **predictor.calibrator.arrays()}
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(directory / WEIGHTS))

    @classmethod
    def read_module(cls, directory: Path, config: dict) -> RiskPredictor:
        arrays = load_file(str(directory / WEIGHTS))
        model = config["model"]
        return RiskPredictor(
            cls.model_type.from_arrays(arrays, model),
            Calibrator.from_arrays(model["calibration"], arrays, model["max_followup"]),
            model["inputs"],
            CovariateEncoder.from_dict(config["covariates"]),
        )

    def predict_risk(self, embeddings: np.ndarray | None, clinical: pd.DataFrame | None = None) -> RiskScores:
        """Calibrated risks of exams from their pooled embeddings ``(n, D)`` and / or covariates (a DataFrame with
        the columns of ``config.json``'s ``covariates``)."""
        return self.module.predict(embeddings, clinical)[1]


class CoxnetBundle(RiskBundle):
    kind = "risk-coxnet"
    model_type = CoxnetModel


class HazardBundle(RiskBundle):
    kind = "risk-hazard"
    model_type = HazardModel


#: risk model name (``models`` of the config) -> its bundle class
RISK_BUNDLES: dict[str, type[RiskBundle]] = {"coxnet": CoxnetBundle, "hazard": HazardBundle}


def save_risk_bundle(
    directory: Path,
    name: str,
    predictor: RiskPredictor,
    setup: dict[str, Any],
    preprocessing: dict[str, Any],
    card: ModelCardInfo | None = None,
) -> Path:
    """Write a fitted model ``name`` as a bundle that ``mvmlm.load_model`` rebuilds.

    Args:
        setup: what made its embeddings (``encoder``, ``embed``, ``pool``), recorded in ``config.json``.
    """
    years = predictor.model.architecture()["max_followup"]
    model = {
        "risk_model": name,
        "inputs": predictor.inputs,
        "calibration": predictor.calibrator.method,
        **predictor.model.architecture(),
        **setup,
    }
    heads = {"risk": [f"{k}_year_risk" for k in range(1, years + 1)]}
    config = bundle_config(model, heads, preprocessing, card, covariates=predictor.covariates.to_dict())
    RISK_BUNDLES[name](predictor, config).save_pretrained(directory)
    return directory
