"""Risk models on exam embeddings: (a) penalised Cox (scikit-survival Coxnet, penalty chosen on validation) and
(b) Mirai's additive-hazard head (cumulative 1..T-year probabilities, masked BCE). Both are registered by name::

    model = fit_risk_model("coxnet", train, val, RiskModelsConfig())
    scores = model.predict(test.features)          # RiskScores: probs (n, T), risk (n,)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from downstream.risk_metrics import RiskScores, mirai_labels, survival_arrays
from mvmlm.metrics import harrell_c

__all__ = [
    "RiskSplit", "CoxnetConfig", "HazardConfig", "RiskModelsConfig", "RiskModel", "AdditiveHazardHead",
    "masked_bce", "register_risk_model", "fit_risk_model", "risk_model_names",
]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass
class RiskSplit:
    """Exams of one split: ``features (n, d)``, follow-up in float years, exam and patient ids."""

    features: np.ndarray
    years_to_cancer: np.ndarray
    years_to_last_followup: np.ndarray
    exam_ids: list[str]
    patients: list[str]

    def __len__(self) -> int:
        return len(self.exam_ids)

    @property
    def follow_up(self) -> tuple[np.ndarray, np.ndarray]:
        return self.years_to_cancer, self.years_to_last_followup


@dataclass
class CoxnetConfig:
    """Elastic-net Cox (scikit-survival ``CoxnetSurvivalAnalysis``); the penalty of its path with the best
    validation Harrell's C is kept."""

    l1_ratio: float = 0.5
    n_alphas: int = 50
    alpha_min_ratio: float = 0.01
    max_iter: int = 100000


@dataclass
class HazardConfig:
    """Additive-hazard head (Mirai): optional hidden layer, Adam, the epoch with the lowest validation loss kept."""

    hidden: int = 256  # 0: linear head on the embedding
    dropout: float = 0.1
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0


@dataclass
class RiskModelsConfig:
    max_followup: int = 5
    coxnet: CoxnetConfig = field(default_factory=CoxnetConfig)
    hazard: HazardConfig = field(default_factory=HazardConfig)


class RiskModel(Protocol):
    def predict(self, features: np.ndarray) -> RiskScores: ...


_RISK_MODELS: dict[str, Callable[[RiskSplit, RiskSplit, RiskModelsConfig], RiskModel]] = {}


def register_risk_model(name: str):
    def add(fn):
        if name in _RISK_MODELS:
            raise ValueError(f"risk model {name!r} registered twice")
        _RISK_MODELS[name] = fn
        return fn

    return add


def risk_model_names() -> list[str]:
    return sorted(_RISK_MODELS)


def fit_risk_model(name: str, train: RiskSplit, val: RiskSplit, cfg: RiskModelsConfig) -> RiskModel:
    """Fit the model registered as ``name`` on ``train``, choosing its capacity on ``val``."""
    try:
        fit = _RISK_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown risk model {name!r}; known: {', '.join(risk_model_names())}") from None
    return fit(train, val, cfg)


def _check_events(split: RiskSplit, name: str, what: str) -> None:
    if not survival_arrays(*split.follow_up)[0].any():
        raise ValueError(f"{name}: the {what} split has no cancer (years_to_cancer all NA); cannot fit a risk model")


# ---------------------------------------------------------------------------------------------- (a) Coxnet


@dataclass
class CoxnetModel:
    scaler: StandardScaler
    model: object  # a fitted sksurv CoxnetSurvivalAnalysis
    alpha: float
    max_followup: int

    def predict(self, features: np.ndarray) -> RiskScores:
        x = self.scaler.transform(features)
        risk = self.model.predict(x, alpha=self.alpha)
        survival = self.model.predict_survival_function(x, alpha=self.alpha)
        years = np.arange(1, self.max_followup + 1, dtype=float)
        domain_end = survival[0].domain[1]
        probs = np.stack([1.0 - fn(np.minimum(years, domain_end)) for fn in survival])
        return RiskScores(probs=probs, risk=risk)


@register_risk_model("coxnet")
def fit_coxnet(train: RiskSplit, val: RiskSplit, cfg: RiskModelsConfig) -> CoxnetModel:
    """Fit the Coxnet path on standardised ``train`` features; keep the alpha with the best ``val`` Harrell's C."""
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.util import Surv

    _check_events(train, "coxnet", "training")
    c = cfg.coxnet
    scaler = StandardScaler().fit(train.features)
    event, time = survival_arrays(*train.follow_up)
    model = CoxnetSurvivalAnalysis(
        n_alphas=c.n_alphas, alpha_min_ratio=c.alpha_min_ratio, l1_ratio=c.l1_ratio, max_iter=c.max_iter,
        fit_baseline_model=True,
    )  # fmt: skip
    model.fit(scaler.transform(train.features), Surv.from_arrays(event=event, time=np.maximum(time, 1e-3)))
    val_event, val_time = survival_arrays(*val.follow_up)
    x_val = scaler.transform(val.features)
    scores = []
    for alpha in model.alphas_:
        risk = model.predict(x_val, alpha=alpha)
        scores.append(harrell_c(val_event, val_time, risk) if val_event.any() and np.ptp(risk) > 0 else -np.inf)
    best = int(np.argmax(scores))
    log.info("coxnet: alpha %.4g of %d (validation Harrell C %.3f)", model.alphas_[best], len(scores), scores[best])
    return CoxnetModel(scaler, model, float(model.alphas_[best]), cfg.max_followup)


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
    scaler: StandardScaler
    head: AdditiveHazardHead

    @torch.no_grad()
    def predict(self, features: np.ndarray) -> RiskScores:
        self.head.eval()
        x = torch.as_tensor(self.scaler.transform(features), dtype=torch.float32)
        probs = torch.sigmoid(self.head(x)).numpy().astype(float)
        return RiskScores(probs=probs, risk=probs[:, -1])


def _tensors(split: RiskSplit, scaler: StandardScaler, max_followup: int) -> tuple[Tensor, Tensor, Tensor]:
    labels = mirai_labels(*split.follow_up, max_followup=max_followup)
    keep = labels.keep
    x = torch.as_tensor(scaler.transform(split.features[keep]), dtype=torch.float32)
    return x, torch.as_tensor(labels.y_seq[keep]), torch.as_tensor(labels.y_mask[keep])


@register_risk_model("hazard")
def fit_hazard_head(train: RiskSplit, val: RiskSplit, cfg: RiskModelsConfig) -> HazardModel:
    """Train the additive-hazard head with masked BCE; keep the weights of the epoch with the lowest val loss."""
    _check_events(train, "hazard", "training")
    h = cfg.hazard
    scaler = StandardScaler().fit(train.features)
    x, y, m = _tensors(train, scaler, cfg.max_followup)
    xv, yv, mv = _tensors(val, scaler, cfg.max_followup)
    generator = torch.Generator().manual_seed(h.seed)
    torch.manual_seed(h.seed)
    head = AdditiveHazardHead(x.shape[1], cfg.max_followup, h.hidden, h.dropout)
    optimizer = torch.optim.AdamW(head.parameters(), lr=h.lr, weight_decay=h.weight_decay)
    best_loss, best_state, best_epoch = float("inf"), None, -1
    for epoch in range(h.epochs):
        head.train()
        for batch in torch.randperm(len(x), generator=generator).split(h.batch_size):
            optimizer.zero_grad()
            masked_bce(head(x[batch]), y[batch], m[batch]).backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            val_loss = float(masked_bce(head(xv), yv, mv)) if len(xv) else -epoch  # no val labels: last epoch
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    log.info("hazard head: epoch %d of %d kept (validation loss %.4f)", best_epoch + 1, h.epochs, best_loss)
    return HazardModel(scaler, head)
