"""Risk models on exam embeddings: (a) penalised Cox (scikit-survival Coxnet, penalty chosen on validation) and
(b) Mirai's additive-hazard head (cumulative 1..T-year probabilities, masked BCE) trained by the one engine
(:class:`mvmlm.training.Engine`). Both are registered by name in :data:`RISK_MODELS`::

    model = fit_risk_model("coxnet", train, val, cfg, workdir)
    scores = model.predict(test.features)          # RiskScores: probs (n, T), risk (n,)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from downstream.risk.config import RiskConfig
from downstream.risk.metrics import RiskScores, mirai_labels, survival_arrays
from mvmlm.config import config_to_dict
from mvmlm.metrics import harrell_c
from mvmlm.registry import Registry
from mvmlm.training import Engine, Loss

__all__ = [
    "RiskSplit",
    "RiskModel",
    "Standardizer",
    "CoxnetModel",
    "HazardModel",
    "RISK_MODELS",
    "fit_risk_model",
    "AdditiveHazardHead",
    "masked_bce",
    "fit_coxnet",
    "fit_hazard_head",
]

log = logging.getLogger(__name__)


@dataclass
class RiskSplit:
    """Exams of one split: image ``features (n, d)``, follow-up in float years, exam and patient ids, and the raw
    clinical covariates (one column each, :mod:`downstream.risk.covariates`)."""

    features: np.ndarray
    years_to_cancer: np.ndarray
    years_to_last_followup: np.ndarray
    exam_ids: list[str]
    patients: list[str]
    clinical: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.exam_ids)

    @property
    def follow_up(self) -> tuple[np.ndarray, np.ndarray]:
        return self.years_to_cancer, self.years_to_last_followup


class RiskModel(Protocol):
    def predict(self, features: np.ndarray) -> RiskScores: ...

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything the model needs to predict, as named arrays (a bundle's safetensors file)."""
        ...

    def architecture(self) -> dict:
        """The plain-JSON sizes that rebuild the model from :meth:`arrays` (``from_arrays(arrays, architecture)``)."""
        ...


#: ``fit(train, val, cfg, workdir) -> RiskModel``: fitted on ``train``, capacity chosen on ``val``; ``workdir`` is
#: the model's own folder of the run (training logs)
RiskFit = Callable[[RiskSplit, RiskSplit, RiskConfig, Path], RiskModel]
RISK_MODELS: Registry[RiskFit] = Registry("risk model")


def fit_risk_model(name: str, train: RiskSplit, val: RiskSplit, cfg: RiskConfig, workdir: str | Path) -> RiskModel:
    """Fit the model registered as ``name`` on ``train``, choosing its capacity on ``val``.

    Raises:
        UnknownNameError: no model is registered as ``name``.
    """
    return RISK_MODELS.get(name)(train, val, cfg, Path(workdir))


def _check_events(split: RiskSplit, name: str, what: str) -> None:
    if not survival_arrays(*split.follow_up)[0].any():
        raise ValueError(f"{name}: the {what} split has no cancer (years_to_cancer all NA); cannot fit a risk model")


# ---------------------------------------------------------------------------------------------- (a) Coxnet


@dataclass
class Standardizer:
    """Features standardised with the training mean and standard deviation (plain arrays, saved in bundles)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> Standardizer:
        scaler = StandardScaler().fit(features)  # NaN-aware statistics; zero-variance columns get scale 1
        return cls(scaler.mean_.astype(float), scaler.scale_.astype(float))

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=float) - self.mean) / self.scale

    def arrays(self) -> dict[str, np.ndarray]:
        return {"scaler.mean": self.mean, "scaler.scale": self.scale}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Standardizer:
        return cls(np.asarray(arrays["scaler.mean"], float), np.asarray(arrays["scaler.scale"], float))


@dataclass
class CoxnetModel:
    """A fitted penalised Cox model as plain arrays: ``risk = standardised x @ coef`` and the cumulative risk
    ``1 - exp(-H0(k) exp(risk))`` with the Breslow baseline cumulative hazard ``H0`` at years ``1..T``."""

    scaler: Standardizer
    coef: np.ndarray
    baseline_hazard: np.ndarray

    def predict(self, features: np.ndarray) -> RiskScores:
        risk = self.scaler(features) @ self.coef
        probs = 1.0 - np.exp(-self.baseline_hazard[None, :] * np.exp(risk)[:, None])
        return RiskScores(probs=probs, risk=risk)

    def arrays(self) -> dict[str, np.ndarray]:
        return {**self.scaler.arrays(), "coef": self.coef, "baseline_hazard": self.baseline_hazard}

    def architecture(self) -> dict:
        return {"in_dim": int(self.coef.size), "max_followup": int(self.baseline_hazard.size)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], config: dict) -> CoxnetModel:
        return cls(Standardizer.from_arrays(arrays), np.asarray(arrays["coef"]), np.asarray(arrays["baseline_hazard"]))


@RISK_MODELS.register("coxnet")
def fit_coxnet(train: RiskSplit, val: RiskSplit, cfg: RiskConfig, workdir: Path) -> CoxnetModel:
    """Fit the Coxnet path on standardised ``train`` features; keep the alpha with the best ``val`` Harrell's C."""
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.linear_model.coxph import BreslowEstimator
    from sksurv.util import Surv

    _check_events(train, "coxnet", "training")
    c = cfg.risk.coxnet
    scaler = Standardizer.fit(train.features)
    event, time = survival_arrays(*train.follow_up)
    model = CoxnetSurvivalAnalysis(
        n_alphas=c.n_alphas,
        alpha_min_ratio=c.alpha_min_ratio,
        l1_ratio=c.l1_ratio,
        max_iter=c.max_iter,
    )
    time = np.maximum(time, 1e-3)
    x_train = scaler(train.features)
    model.fit(x_train, Surv.from_arrays(event=event, time=time))
    val_event, val_time = survival_arrays(*val.follow_up)
    x_val = scaler(val.features)
    scores = []
    for coef in model.coef_.T:
        risk = x_val @ coef
        scores.append(harrell_c(val_event, val_time, risk) if val_event.any() and np.ptp(risk) > 0 else -np.inf)
    best = int(np.argmax(scores))
    log.info("coxnet: alpha %.4g of %d (validation Harrell C %.3f)", model.alphas_[best], len(scores), scores[best])
    coef = np.asarray(model.coef_[:, best], dtype=float)
    baseline = BreslowEstimator().fit(x_train @ coef, event, time).cum_baseline_hazard_
    years = np.arange(1, cfg.risk.max_followup + 1, dtype=float)
    return CoxnetModel(scaler, coef, baseline(np.minimum(years, baseline.x[-1])))


# ---------------------------------------------------------------------------------------------- (b) hazard head


class AdditiveHazardHead(nn.Module):
    """Mirai's cumulative-probability layer: ``logit_t = base(x) + sum_{s <= t} relu(hazard_s(x))``, so the
    year-``t`` risk ``sigmoid(logit_t)`` never decreases with ``t``.

    Args:
        in_dim: embedding size.
        max_followup: years ``T`` of the output.
        hidden: width of a hidden ReLU layer (0: none).
        dropout: dropout on the input of the output layers.
    """

    def __init__(self, in_dim: int, max_followup: int = 5, hidden: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        width = hidden or in_dim
        body: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.ReLU()] if hidden else []
        self.body = nn.Sequential(*body, nn.Dropout(dropout))
        self.hazard = nn.Linear(width, max_followup)
        self.base = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_dim)`` -> cumulative logits ``(B, T)``."""
        h = self.body(x)
        return self.base(h) + torch.cumsum(F.relu(self.hazard(h)), dim=1)


def masked_bce(logits: Tensor, y_seq: Tensor, y_mask: Tensor) -> Tensor:
    """Mirai's loss: BCE over the known years only, summed and divided by the number of known years."""
    loss = F.binary_cross_entropy_with_logits(logits, y_seq, weight=y_mask, reduction="sum")
    return loss / y_mask.sum().clamp(min=1)


@dataclass
class HazardModel:
    scaler: Standardizer
    head: AdditiveHazardHead

    @torch.no_grad()
    def predict(self, features: np.ndarray) -> RiskScores:
        """Computed in float64: a risk does not depend on the exams it is computed with (the calibration's steep
        isotonic segments would magnify float32 rounding)."""
        head = self.head.eval().double()
        x = torch.as_tensor(self.scaler(features), dtype=torch.float64)
        probs = torch.sigmoid(head(x)).numpy()
        return RiskScores(probs=probs, risk=probs[:, -1])

    def arrays(self) -> dict[str, np.ndarray]:
        head = {f"head.{k}": v.detach().cpu().float().numpy() for k, v in self.head.state_dict().items()}
        return {**self.scaler.arrays(), **head}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], config: dict) -> HazardModel:
        """``config``: ``in_dim``, ``max_followup``, ``hidden``, ``dropout`` of the head."""
        head = AdditiveHazardHead(config["in_dim"], config["max_followup"], config["hidden"], config["dropout"])
        state = {
            k.removeprefix("head."): torch.from_numpy(v.copy()) for k, v in arrays.items() if k.startswith("head.")
        }
        head.load_state_dict(state)
        return cls(Standardizer.from_arrays(arrays), head)

    def architecture(self) -> dict:
        """What :meth:`from_arrays` needs besides the arrays."""
        linear = self.head.hazard
        hidden = self.head.body[0].out_features if isinstance(self.head.body[0], nn.Linear) else 0
        return {
            "in_dim": int(self.scaler.mean.size),
            "max_followup": linear.out_features,
            "hidden": hidden,
            "dropout": float(self.head.body[-1].p),
        }


def _dataset(split: RiskSplit, scaler: Standardizer, max_followup: int) -> tuple[TensorDataset, list[str]]:
    """``(row, x, y_seq, y_mask)`` of the exams with a label for at least one year, and their exam ids."""
    labels = mirai_labels(*split.follow_up, max_followup=max_followup)
    keep = np.flatnonzero(labels.keep)
    features = split.features[keep]
    x = torch.as_tensor(scaler(features), dtype=torch.float32)
    y, mask = torch.as_tensor(labels.y_seq[keep]), torch.as_tensor(labels.y_mask[keep])
    return TensorDataset(torch.arange(len(keep)), x, y, mask), [split.exam_ids[i] for i in keep]


@RISK_MODELS.register("hazard")
def fit_hazard_head(train: RiskSplit, val: RiskSplit, cfg: RiskConfig, workdir: Path) -> HazardModel:
    """Train the additive-hazard head with masked BCE on the engine in ``workdir`` (``optim``, ``train``,
    ``data.batch_size``); keep the weights with the lowest validation loss (the final ones without validation
    labels)."""
    _check_events(train, "hazard", "training")
    scaler = Standardizer.fit(train.features)
    years, h = cfg.risk.max_followup, cfg.risk.hazard
    data, ids = _dataset(train, scaler, years)
    _, xv, yv, mv = _dataset(val, scaler, years)[0].tensors
    engine = Engine(cfg.train, cfg.optim, workdir, hparams=config_to_dict(cfg), name="hazard")
    dim = train.features.shape[1]
    head = AdditiveHazardHead(dim, years, h.hidden, h.dropout)

    def loss(model: nn.Module, batch: list[Tensor]) -> Loss:
        rows, x, y, mask = batch
        return Loss(masked_bce(model(x).float(), y, mask), ids=[ids[i] for i in rows.tolist()])

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        if not len(xv):
            return {"val/loss": float("nan")}
        model.eval()
        device = engine.device
        return {"val/loss": float(masked_bce(model(xv.to(device)).float(), yv.to(device), mv.to(device)))}

    loader = DataLoader(data, batch_size=cfg.data.batch_size, shuffle=True, num_workers=cfg.data.num_workers)
    result = engine.fit(
        head, loader, loss=loss, evaluate=evaluate, select="val/loss", mode="min", discard_checkpoints=True
    )
    engine.end()
    best = result.best
    if best["step"] is not None:
        log.info("hazard head: epoch %d of %d kept (validation loss %.4f)", best["epoch"], result.epochs, best["score"])
    fitted = AdditiveHazardHead(dim, years, h.hidden, h.dropout)
    fitted.load_state_dict({k: v.detach().cpu() for k, v in head.state_dict().items()})
    return HazardModel(scaler, fitted)
