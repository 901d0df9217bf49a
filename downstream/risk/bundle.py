"""Risk models as bundles (kinds ``risk-coxnet`` and ``risk-hazard``): the fitted model, its inputs (image
embedding, clinical covariates or both) and its per-horizon calibration, all plain arrays in ``model.safetensors``
and JSON in ``config.json`` (no pickle), and - for image and combined inputs - the image encoder that made the
embeddings (``encoder/``, :mod:`downstream.risk.encoder`), so a bundle predicts from DICOM exams::

    model = mvmlm.load_model("runs/risk/models/coxnet_combined")
    scores = model.predict_risk(embeddings, clinical)     # calibrated RiskScores: probs (n, T), risk (n,)
    rows = model.predict(["dicom_folder/"], covariates="covariates.csv")   # one row per exam

``mvmlm predict`` gives one ``level=exam`` row per exam: the calibrated ``1_year_risk`` .. ``5_year_risk``, the
covariates used (``covariate_<name>``; ``imputed`` names those filled from training statistics) and
``model_version`` (kind and the sha256 of the bundle's manifest, which hashes every file). Covariates come from the
images' DICOM headers (``age`` = PatientAge) and a ``--covariates`` CSV keyed by ``image_id`` (SOPInstanceUID) or
``exam_id`` (StudyInstanceUID), whose values win; an exam missing a covariate the model was trained with complete is
listed in ``skipped.csv`` with the reason. ``--format mirai`` also writes ``predictions_mirai.csv`` in Mirai's layout.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from safetensors.numpy import load_file, save_file
from torch import Tensor

from downstream.common.embed import Backbone
from downstream.risk.calibration import Calibrator
from downstream.risk.covariates import CovariateEncoder, exam_covariates
from downstream.risk.encoder import bundled_encoder, embed_exams, load_encoder, save_encoder
from downstream.risk.metrics import RiskScores
from downstream.risk.models import CoxnetModel, HazardModel
from mvmlm.bundle import MANIFEST_NAME, Bundle, ModelCardInfo, bundle_config
from mvmlm.data.exams import EXAM_SLOTS
from mvmlm.inference.covariates import with_covariates_file

__all__ = ["INPUTS", "RiskPredictor", "RiskBundle", "CoxnetBundle", "HazardBundle", "RISK_BUNDLES", "save_risk_bundle"]

log = logging.getLogger(__name__)

INPUTS = ("image", "clinical", "combined")
WEIGHTS = "model.safetensors"


@dataclass
class RiskPredictor:
    """A fitted risk model with its inputs and calibration: embeddings and / or covariates -> k-year risks."""

    model: Any  # a downstream.risk.models.RiskModel
    calibrator: Calibrator
    inputs: str
    covariates: CovariateEncoder
    encoder: Backbone | None = None  # what embeds an exam's views (image and combined inputs)
    pool: str = "mean"  # views -> exam
    version: str = ""  # kind@sha256 of the manifest of the bundle it was read from

    def to(self, device: torch.device | str) -> RiskPredictor:
        """The image encoder on ``device`` (the risk model itself computes on the CPU)."""
        if self.encoder is not None:
            self.encoder.to(device)
        return self

    def eval(self) -> RiskPredictor:
        if self.encoder is not None:
            self.encoder.eval()
        return self

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
    formats = ("mirai",)

    def write_files(self, directory: Path) -> None:
        predictor: RiskPredictor = self.module
        arrays = {**predictor.model.arrays(), **predictor.calibrator.arrays()}
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(directory / WEIGHTS))
        if predictor.encoder is not None:
            save_encoder(directory, predictor.encoder, self.config["model"]["bundled_encoder"])

    @classmethod
    def read_module(cls, directory: Path, config: dict) -> RiskPredictor:
        arrays = load_file(str(directory / WEIGHTS))
        model = config["model"]
        stored = model.get("bundled_encoder")
        manifest = hashlib.sha256((directory / MANIFEST_NAME).read_bytes()).hexdigest()
        return RiskPredictor(
            cls.model_type.from_arrays(arrays, model),
            Calibrator.from_arrays(model["calibration"], arrays, model["max_followup"]),
            model["inputs"],
            CovariateEncoder.from_dict(config["covariates"]),
            encoder=None if stored is None else load_encoder(directory, stored),
            pool=model.get("pool", "mean"),
            version=f"{cls.kind}@{manifest[:12]}",
        )

    # ------------------------------------------------------------------ mvmlm predict

    def prepare_units(
        self, rows: pd.DataFrame, images: pd.DataFrame, covariates: str = ""
    ) -> tuple[pd.DataFrame, list[dict[str, str]]]:
        """The exams with the model's covariates (columns ``covariate_<name>``) and ``skipped.csv`` rows for the
        files of the exams missing one the model was trained with complete (those exams are dropped)."""
        encoder: CovariateEncoder = self.module.covariates
        names = [c.name for c in encoder.covariates]
        if not names:
            if covariates:
                log.info("risk: the %s model uses no covariates; %s is not read", self.module.inputs, covariates)
            return rows, []
        images = images.assign(**{n: pd.NA for n in names if n not in images.columns})
        if covariates:
            images = with_covariates_file(images, covariates, names)
        clinical = exam_covariates(images, rows, names)
        reasons = encoder.unusable(clinical)
        skipped = [
            {"path": str(row[f"{slot}_path"]), "reason": f"exam not predicted: {reason}"}
            for (_, row), reason in zip(rows.iterrows(), reasons, strict=True)
            if reason
            for slot in EXAM_SLOTS
            if row[f"{slot}_present"]
        ]
        keep = (reasons == "").to_numpy()
        found = clinical.rename(columns=lambda n: f"covariate_{n}")
        return pd.concat([rows, found], axis=1)[keep].reset_index(drop=True), skipped

    def predict_views(self, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """``embedding (B, D)``: the exam embedding of the present views (``(B, 0)`` for a clinical-only model)."""
        predictor: RiskPredictor = self.module
        if predictor.encoder is None:
            return {"embedding": images.new_zeros(len(images), 0)}
        return {"embedding": embed_exams(predictor.encoder, images, mask, predictor.pool)}

    def embed_images(self, images: Tensor) -> Tensor:
        if self.module.encoder is None:
            return super().embed_images(images)
        return self.module.encoder(images)

    def unit_columns(self, rows: pd.DataFrame, out: dict[str, Tensor]) -> list[dict[str, Any]]:
        """Per exam: calibrated ``k_year_risk``, the covariates used, those imputed, the model version."""
        predictor: RiskPredictor = self.module
        names = [c.name for c in predictor.covariates.covariates]
        clinical = rows[[f"covariate_{n}" for n in names]].set_axis(names, axis=1)
        probs = self.predict_risk(out["embedding"].double().numpy(), clinical).probs
        imputed = clinical.isna().to_numpy()
        return [
            {
                **{year: float(p) for year, p in zip(self.heads["risk"], probs[b], strict=True)},
                **{
                    f"covariate_{n}": None if gap else clinical[n].iloc[b]
                    for n, gap in zip(names, imputed[b], strict=True)
                },
                "imputed": "+".join(n for n, gap in zip(names, imputed[b], strict=True) if gap),
                "model_version": predictor.version,
            }
            for b in range(len(rows))
        ]

    def format_predictions(self, predictions: pd.DataFrame, fmt: str) -> pd.DataFrame:
        """Mirai's CSV layout: ``patient_exam_id`` (``patient_id<TAB>exam_id``), ``1_year_risk`` .. ``T_year_risk``."""
        exams = predictions[predictions["level"] == "exam"]
        mirai = exams[self.heads["risk"]].reset_index(drop=True)
        mirai.insert(0, "patient_exam_id", (exams["patient_id"] + "\t" + exams["exam_id"]).to_numpy())
        return mirai

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
    """Write a fitted model ``name`` as a bundle that ``mvmlm.load_model`` rebuilds (with ``predictor.encoder``, the
    encoder's weights too: then ``mvmlm predict`` scores DICOM exams with it).

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
    if predictor.encoder is not None:
        model["bundled_encoder"] = bundled_encoder(setup["encoder"])
    heads = {"risk": [f"{k}_year_risk" for k in range(1, years + 1)]}
    config = bundle_config(model, heads, preprocessing, card, covariates=predictor.covariates.to_dict())
    RISK_BUNDLES[name](predictor, config).save_pretrained(directory)
    return directory
