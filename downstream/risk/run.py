"""Breast-cancer risk from a screening exam: ``mvmlm risk --config ...`` (also ``python -m downstream.risk``).

Every exam (four views L-CC, L-MLO, R-CC, R-MLO; missing views skipped) is embedded by pooling the image
embeddings of an encoder (an MV-MLM checkpoint, a fine-tuned tower saved in the same format, or a timm baseline;
see :mod:`downstream.common.embed`). Follow-up comes from ``years_to_cancer`` / ``years_to_last_followup`` in Mirai's
conventions (:mod:`downstream.risk.metrics`). Each configured model (:data:`downstream.risk.models.RISK_MODELS`:
``coxnet``, ``hazard``) runs on each of ``risk.inputs`` (``image``; ``clinical``: the ``risk.covariates`` only;
``combined``: both, :mod:`downstream.risk.covariates`); it is fitted on the training split, tuned and calibrated per
horizon on the validation split (:mod:`downstream.risk.calibration`) and scored on the test split; the hazard head
trains on the one engine (``optim``, ``train``, ``data.batch_size``; its logs in ``<model>/``)::

    mvmlm risk --config configs/risk/embed.yaml \
        data.table=cache/1520x912-xxxx/table.parquet encoder.checkpoint=runs/pretrain/model \
        "risk.covariates=[age,density]" "risk.inputs=[image,clinical,combined]"

A model is named ``coxnet`` (image input) or ``coxnet_clinical`` / ``coxnet_combined``. The run directory holds
``config.yaml``, ``provenance.json``, ``log.txt``, ``metrics.json`` (every metric with its bootstrap 95 % CI, and
the paired ``differences`` combined - clinical), ``comparison.md`` / ``comparison.csv`` (the three-way table image /
clinical / combined, :mod:`downstream.risk.tables`), ``results.csv`` / ``results.md`` (every metric),
``risk_<model>.csv`` (calibrated risks in Mirai's output layout: ``patient_exam_id`` =
``patient_id<TAB>exam_id``, ``1_year_risk`` .. ``5_year_risk``), ``calibration_<model>.csv`` (observed vs expected
per year and risk decile, raw and calibrated), ``models/<model>/`` (a bundle: ``mvmlm.load_model``; ``mvmlm
predict`` runs it on DICOM exams), and ``plots/calibration_<model>.png`` and ``plots/km_quartiles_<model>.png``.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState

from downstream.common.embed import Backbone, build_backbone, image_embeddings, pool_views
from downstream.common.tasks import check_patient_splits
from downstream.risk import COMMAND
from downstream.risk.bundle import INPUTS, RiskPredictor, save_risk_bundle
from downstream.risk.calibration import CALIBRATORS, Calibrator, calibration_metrics, decile_table, fit_calibrator
from downstream.risk.config import RiskConfig
from downstream.risk.covariates import CovariateEncoder, exam_covariates
from downstream.risk.metrics import RiskScores, paired_difference, risk_metrics, survival_arrays
from downstream.risk.models import RISK_MODELS, RiskSplit, fit_risk_model
from downstream.risk.plots import plot_calibration, plot_km_by_quartile
from downstream.risk.tables import ci_cell, difference_key, model_key, write_tables
from mvmlm.bundle import ModelCardInfo, preprocessing_of
from mvmlm.config import ConfigError, config_to_dict
from mvmlm.data.exams import EXAM_SLOTS, build_exams
from mvmlm.data.preprocess import read_cached_table
from mvmlm.rundir import RunDir
from mvmlm.training.runs import open_run

__all__ = ["FOLLOW_UP", "exam_follow_up", "load_risk_splits", "fit_predictor", "run_risk", "main"]

log = logging.getLogger(__name__)

FOLLOW_UP = ("years_to_cancer", "years_to_last_followup")


def exam_follow_up(exams: pd.DataFrame) -> pd.DataFrame:
    """Exam-level ``years_to_cancer`` / ``years_to_last_followup`` from the per-side columns of ``build_exams``.

    Raises:
        ValueError: the two breasts of an exam disagree (naming the exam).
    """
    out = {}
    for name in FOLLOW_UP:
        left, right = exams[f"L_{name}"].astype(float), exams[f"R_{name}"].astype(float)
        clash = left.notna() & right.notna() & ((left - right).abs() > 1e-6)
        if clash.any():
            row = exams[clash].iloc[0]
            raise ValueError(
                f"exam {row.dataset}/{row.patient_id}/{row.exam_id}: {name} differs between breasts "
                f"({left[clash].iloc[0]} vs {right[clash].iloc[0]}); follow-up is per exam"
            )
        out[name] = left.fillna(right).to_numpy()
    return pd.DataFrame(out, index=exams.index)


def _exam_features(exams: pd.DataFrame, table: pd.DataFrame, cfg: RiskConfig) -> np.ndarray:
    """``(n_exams, D)``: the embeddings of the present views of each exam, pooled."""
    embeddings = image_embeddings(table, cfg.encoder, cfg.embed)
    present = np.stack([exams[f"{slot}_present"].to_numpy(bool) for slot in EXAM_SLOTS], axis=1)
    views = np.zeros((len(exams), len(EXAM_SLOTS), embeddings.vectors.shape[1]), dtype=np.float32)
    for v, slot in enumerate(EXAM_SLOTS):
        views[present[:, v], v] = embeddings.rows([str(p) for p in exams.loc[present[:, v], f"{slot}_cache_path"]])
    return pool_views(torch.from_numpy(views), torch.from_numpy(present), cfg.data.pool).numpy()


def load_risk_splits(cfg: RiskConfig) -> dict[str, RiskSplit]:
    """Train / val / test :class:`RiskSplit` of the exams with follow-up in ``cfg.data.table``.

    Raises:
        ValueError: no follow-up columns, a patient in two splits, or an empty split.
    """
    table = read_cached_table(cfg.data.table)
    missing = [c for c in FOLLOW_UP if c not in table.columns or table[c].isna().all()]
    if missing:
        raise ValueError(f"{cfg.data.table}: no {' / '.join(missing)}; risk needs follow-up (e.g. EMBED)")
    check_patient_splits(table, cfg.data.table)
    exams = build_exams(table)
    exams[list(FOLLOW_UP)] = exam_follow_up(exams)
    known = exams[list(FOLLOW_UP)].notna().any(axis=1)
    if (~known).any():
        log.info("risk: %d of %d exams have no follow-up and are left out", int((~known).sum()), len(exams))
    exams = exams[known].reset_index(drop=True)
    clinical = exam_covariates(table, exams, cfg.risk.covariates, str(cfg.data.table))
    features = _exam_features(exams, table, cfg)
    splits = {}
    for role, name in (("train", cfg.data.train_split), ("val", cfg.data.val_split), ("test", cfg.data.test_split)):
        rows = np.flatnonzero(exams["split"].to_numpy() == name)
        if rows.size == 0:
            raise ValueError(f"{cfg.data.table}: no exams with follow-up in split {name!r}")
        part = exams.iloc[rows]
        splits[role] = RiskSplit(
            features=features[rows],
            years_to_cancer=part["years_to_cancer"].to_numpy(float),
            years_to_last_followup=part["years_to_last_followup"].to_numpy(float),
            exam_ids=[f"{p}\t{e}" for p, e in zip(part.patient_id, part.exam_id, strict=True)],
            patients=[f"{d}/{p}" for d, p in zip(part.dataset, part.patient_id, strict=True)],
            clinical=clinical.iloc[rows].reset_index(drop=True),
        )
    return splits


def _check(cfg: RiskConfig) -> None:
    unknown = [m for m in cfg.models if m not in RISK_MODELS]
    if unknown or not cfg.models:
        raise ConfigError(f"key 'models': {unknown or 'empty'}; known: {', '.join(RISK_MODELS.names())}")
    bad = [t for t in cfg.auc_times if not 0 < t <= cfg.risk.max_followup]
    if bad:
        raise ConfigError(f"key 'auc_times': {bad} outside (0, risk.max_followup={cfg.risk.max_followup}]")
    unknown = [i for i in cfg.risk.inputs if i not in INPUTS]
    if unknown or not cfg.risk.inputs:
        raise ConfigError(f"key 'risk.inputs': {unknown or 'empty'}; known: {', '.join(INPUTS)}")
    if set(cfg.risk.inputs) - {"image"} and not cfg.risk.covariates:
        raise ConfigError("key 'risk.covariates': empty, but risk.inputs asks for clinical / combined models")
    if cfg.risk.calibration not in CALIBRATORS:
        raise ConfigError(f"key 'risk.calibration': {cfg.risk.calibration!r}; known: {', '.join(CALIBRATORS)}")
    if cfg.data.augment.enabled:
        raise ConfigError(
            "key 'data.augment.enabled': risk models fit on embeddings of the unaugmented images; set it to false"
        )


def fit_predictor(name: str, inputs: str, splits: dict[str, RiskSplit], cfg: RiskConfig, workdir) -> RiskPredictor:
    """Model ``name`` on ``inputs`` fitted on train, tuned and calibrated on validation."""
    train, val = splits["train"], splits["val"]
    covariates = CovariateEncoder.fit(train.clinical) if inputs != "image" else CovariateEncoder([])
    predictor = RiskPredictor(None, Calibrator("none", []), inputs, covariates)

    def view(split: RiskSplit) -> RiskSplit:
        return replace(split, features=predictor.features(split.features, split.clinical))

    predictor.model = fit_risk_model(name, view(train), view(val), cfg, workdir)
    raw = predictor.model.predict(view(val).features)
    predictor.calibrator = fit_calibrator(raw.probs, *survival_arrays(*val.follow_up), cfg.risk.calibration)
    return predictor


def _evaluate(
    key: str, predictor: RiskPredictor, splits: dict[str, RiskSplit], cfg: RiskConfig, run: RunDir
) -> tuple[dict, RiskScores]:
    """Metrics (discrimination on the raw scores, calibration before / after), the Mirai CSV, the decile table and
    the plots of one fitted model on the test split; returns the metrics and the raw test scores."""
    train, test = splits["train"], splits["test"]
    raw, calibrated = predictor.predict(test.features, test.clinical)
    options = {"n_resamples": cfg.bootstrap}
    metrics = risk_metrics(
        raw,
        test.follow_up,
        train.follow_up,
        test.patients,
        max_followup=cfg.risk.max_followup,
        auc_times=cfg.auc_times,
        **options,
    )
    survival, train_survival = survival_arrays(*test.follow_up), survival_arrays(*train.follow_up)
    deciles = {}
    for stage, scores in (("raw", raw), ("calibrated", calibrated)):
        found = calibration_metrics(scores.probs, survival, train_survival, test.patients, **options)
        metrics.update({f"{m}_{stage}": v for m, v in found.items()})
        deciles[stage] = decile_table(scores.probs, *survival)
    years = [f"{k}_year_risk" for k in range(1, cfg.risk.max_followup + 1)]
    predictions = pd.DataFrame(calibrated.probs, columns=years)
    predictions.insert(0, "patient_exam_id", test.exam_ids)
    predictions.to_csv(run.file(f"risk_{key}.csv"), index=False)
    pd.concat([t.assign(risk=stage) for stage, t in deciles.items()]).to_csv(
        run.file(f"calibration_{key}.csv"), index=False
    )
    if cfg.plots:
        plot_calibration(run.file(f"plots/calibration_{key}.png"), deciles, title=key)
        plot_km_by_quartile(run.file(f"plots/km_quartiles_{key}.png"), raw.risk, *survival, title=key)
    return metrics, raw


def _save(
    key: str,
    name: str,
    predictor: RiskPredictor,
    metrics: dict,
    counts: dict,
    cfg: RiskConfig,
    run: RunDir,
    backbone: Backbone | None,
) -> None:
    """The bundle of a fitted model; image and combined models carry ``backbone``, the encoder of the embeddings."""
    card = ModelCardInfo.from_run(
        run.path,
        title=f"mvmlm risk model: {key}",
        predicts=(
            f"From {_SEES[predictor.inputs].format(', '.join(cfg.risk.covariates))}, the calibrated cumulative risk "
            f"of breast cancer within 1..{cfg.risk.max_followup} years."
        ),
        counts={role: c["exams"] for role, c in counts.items()},
        metrics={m: ci_cell(metrics[m]) for m in ("harrell_c", "uno_c", "ibs_calibrated") if m in metrics},
    )
    setup = {"encoder": config_to_dict(cfg.encoder), "embed": config_to_dict(cfg.embed), "pool": cfg.data.pool}
    if predictor.inputs != "clinical":
        predictor = replace(predictor, encoder=backbone, pool=cfg.data.pool)
    save_risk_bundle(run.file(f"models/{key}"), name, predictor, setup, preprocessing_of(cfg.data.table), card)


_SEES = {
    "image": "an exam's pooled image embedding",
    "clinical": "an exam's clinical covariates ({})",
    "combined": "an exam's pooled image embedding and its clinical covariates ({})",
}


def run_risk(cfg: RiskConfig, run: RunDir, state: PartialState) -> dict:
    """Fit, tune, calibrate and score every configured model on every input; write predictions, bundles, tables and
    plots into ``run`` (main process)."""
    _check(cfg)
    with state.main_process_first():  # the main process fills the embedding cache, the others read it
        splits = load_risk_splits(cfg)
    train, test = splits["train"], splits["test"]
    counts = {
        role: {"exams": len(s), "cancers": int(survival_arrays(*s.follow_up)[0].sum())} for role, s in splits.items()
    }
    log.info("risk: exams (cancers) per split %s", counts)
    results: dict[str, dict] = {}
    differences: dict[str, dict] = {}
    images = state.is_main_process and set(cfg.risk.inputs) != {"clinical"}
    backbone = build_backbone(cfg.encoder) if images else None  # saved with the image and combined models
    for name in cfg.models:
        raw = {}  # the scores of the discrimination table, per input
        for inputs in cfg.risk.inputs:
            key = model_key(name, inputs)
            predictor = fit_predictor(name, inputs, splits, cfg, run.file(key))
            if not state.is_main_process:  # every process trains (the hazard head on its share); the main one reports
                continue
            results[key], raw[inputs] = _evaluate(key, predictor, splits, cfg, run)
            _save(key, name, predictor, results[key], counts, cfg, run, backbone)
        if {"combined", "clinical"} <= set(raw):
            differences[difference_key(name)] = paired_difference(
                raw["combined"],
                raw["clinical"],
                test.follow_up,
                train.follow_up,
                test.patients,
                max_followup=cfg.risk.max_followup,
                auc_times=cfg.auc_times,
                n_resamples=cfg.bootstrap,
            )
    if not state.is_main_process:
        return {}
    text = write_tables(run, results, differences, cfg.models, cfg.risk.inputs, cfg.auc_times, cfg.risk.max_followup)
    print(text)
    return {"counts": counts, "models": results, "differences": differences}


def main(argv: list[str] | None = None) -> dict:
    cfg = COMMAND.parse(argv)
    state, run = open_run(cfg)
    results = run_risk(cfg, run, state)
    if state.is_main_process:
        run.write_metrics(results)
    return results
