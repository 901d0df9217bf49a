"""Breast-cancer risk from a screening exam: ``mvmlm risk --config ...`` (also ``python -m downstream.risk``).

Every exam (four views L-CC, L-MLO, R-CC, R-MLO; missing views skipped) is embedded by pooling the image
embeddings of an encoder (an MV-MLM checkpoint, a fine-tuned tower saved in the same format, or a timm baseline;
see :mod:`downstream.common.embed`). Follow-up comes from ``years_to_cancer`` / ``years_to_last_followup`` in Mirai's
conventions (:mod:`downstream.risk.metrics`). Each configured model (:data:`downstream.risk.models.RISK_MODELS`:
``coxnet``, ``hazard``) is fitted on the training split, tuned on the validation split and scored on the test split;
the hazard head trains on the one engine (``optim``, ``train``, ``data.batch_size``; its logs in ``hazard/``)::

    mvmlm risk --config configs/risk/embed.yaml \\
        data.table=cache/1520x912-xxxx/table.parquet encoder.checkpoint=runs/pretrain/model

The run directory holds ``config.yaml``, ``provenance.json``, ``log.txt``, ``metrics.json`` (every metric with its
bootstrap 95 % CI), ``results.csv`` / ``results.md`` (one row per model), ``risk_<model>.csv`` (Mirai's output
layout: ``patient_exam_id`` = ``patient_id<TAB>exam_id``, ``1_year_risk`` .. ``5_year_risk``), and
``plots/calibration_<model>.png`` and ``plots/km_quartiles_<model>.png``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState

from downstream.common.embed import image_embeddings, pool_views
from downstream.common.tasks import check_patient_splits
from downstream.risk import COMMAND
from downstream.risk.config import RiskConfig
from downstream.risk.metrics import risk_metrics, survival_arrays
from downstream.risk.models import RISK_MODELS, RiskSplit, fit_risk_model
from downstream.risk.plots import plot_calibration, plot_km_by_quartile
from mvmlm.config import ConfigError
from mvmlm.data.exams import EXAM_SLOTS, build_exams
from mvmlm.data.preprocess import read_cached_table
from mvmlm.evaluation import markdown_table
from mvmlm.rundir import RunDir
from mvmlm.training.runs import open_run

__all__ = ["FOLLOW_UP", "exam_follow_up", "load_risk_splits", "run_risk", "main"]

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
        )
    return splits


def _check(cfg: RiskConfig) -> None:
    unknown = [m for m in cfg.models if m not in RISK_MODELS]
    if unknown or not cfg.models:
        raise ConfigError(f"key 'models': {unknown or 'empty'}; known: {', '.join(RISK_MODELS.names())}")
    bad = [t for t in cfg.auc_times if not 0 < t <= cfg.risk.max_followup]
    if bad:
        raise ConfigError(f"key 'auc_times': {bad} outside (0, risk.max_followup={cfg.risk.max_followup}]")
    if cfg.data.augment.enabled:
        raise ConfigError(
            "key 'data.augment.enabled': risk models fit on embeddings of the unaugmented images; set it to false"
        )


def _cell(m: dict[str, float]) -> str:
    if np.isnan(m["value"]):
        return "nan"
    return f"{m['value']:.3f}" if np.isnan(m["low"]) else f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


def run_risk(cfg: RiskConfig, run: RunDir, state: PartialState) -> dict:
    """Fit, tune and score every configured model; write predictions, tables and plots into ``run`` (main
    process)."""
    _check(cfg)
    with state.main_process_first():  # the main process fills the embedding cache, the others read it
        splits = load_risk_splits(cfg)
    train, val, test = splits["train"], splits["val"], splits["test"]
    counts = {
        role: {"exams": len(s), "cancers": int(survival_arrays(*s.follow_up)[0].sum())} for role, s in splits.items()
    }
    log.info("risk: exams (cancers) per split %s", counts)
    event, time = survival_arrays(*test.follow_up)
    years = [f"{k}_year_risk" for k in range(1, cfg.risk.max_followup + 1)]
    results: dict[str, dict] = {}
    for name in cfg.models:
        scores = fit_risk_model(name, train, val, cfg, run.file(name)).predict(test.features)
        if not state.is_main_process:  # every process trains (the hazard head on its share); the main one reports
            continue
        results[name] = risk_metrics(
            scores,
            test.follow_up,
            train.follow_up,
            test.patients,
            max_followup=cfg.risk.max_followup,
            auc_times=cfg.auc_times,
            n_resamples=cfg.bootstrap,
        )
        predictions = pd.DataFrame(scores.probs, columns=years)
        predictions.insert(0, "patient_exam_id", test.exam_ids)
        predictions.to_csv(run.file(f"risk_{name}.csv"), index=False)
        if cfg.plots:
            plot_years = sorted({min(int(np.ceil(t)), cfg.risk.max_followup) for t in cfg.auc_times})
            calibration = run.file(f"plots/calibration_{name}.png")
            plot_calibration(calibration, scores.probs, event, time, plot_years, title=name)
            plot_km_by_quartile(run.file(f"plots/km_quartiles_{name}.png"), scores.risk, event, time, title=name)
    if not state.is_main_process:
        return {}
    metric_names = list(next(iter(results.values())))
    table = pd.DataFrame([{"model": m, **{k: _cell(v[k]) for k in metric_names}} for m, v in results.items()])
    table.to_csv(run.file("results.csv"), index=False)
    text = markdown_table(table)
    header = "# Risk (test split)\n\nPoint estimate [bootstrap 95 % CI, patients resampled].\n\n"
    run.write_text("results.md", header + text)
    print(text)
    return {"counts": counts, "models": results}


def main(argv: list[str] | None = None) -> dict:
    cfg = COMMAND.parse(argv)
    state, run = open_run(cfg)
    results = run_risk(cfg, run, state)
    if state.is_main_process:
        run.write_metrics(results)
    return results
