"""Co-attention fusion of mammograms with clinical-metadata text: ``mvmlm coattention --config ...`` (also
``python -m downstream.coattention``, ``accelerate launch -m downstream.coattention``).

Per breast (CC + MLO), the selected metadata fields of the canonical table (default: age and density; never the
target or a field that determines it, see :data:`~downstream.coattention.data.LEAKING_FIELDS`) become text through
:func:`report_synthesis.breast_facts` and :func:`report_synthesis.template_report`; the frozen text encoder's
hidden states are cached once per text. Every configured fusion (:data:`~downstream.coattention.model.FUSIONS`:
co-attention and the baselines image-only, text-only, late concatenation) is trained on the training split by the
one engine (:class:`mvmlm.training.Engine`, in ``units/<fusion>/``), the weights with the best validation AUC are
kept (the final ones when no validation AUC is defined), and all are scored on the test split into one table::

    mvmlm coattention --config configs/coattention/vindr.yaml \\
        data.table=cache/1520x912-xxxx/table.parquet encoder.checkpoint=runs/pretrain/model task=calcification

The image encoder is built by :func:`downstream.common.embed.build_feature_encoder` with the weights
``encoder.init`` names. The run directory holds ``config.yaml``, ``provenance.json``, ``log.txt``,
``metrics.json``, ``results.csv``, ``summary.csv``, ``results.md`` (one row per fusion), ``predictions.parquet``
and ``plots/`` (see :func:`mvmlm.evaluation.report`), ``finished/<fusion>.json`` per trained fusion,
``units/<fusion>/`` (its train and validation logs, best weights) and ``models/<fusion>/`` (its model bundle, loadable
with ``mvmlm.load_model`` and used by ``mvmlm predict``: :mod:`downstream.coattention.bundle`).
``train.resume=latest`` reuses the finished fusions whose settings still match (:mod:`mvmlm.sweep`) and continues an
interrupted one from its checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import PartialState
from torch import nn
from torch.utils.data import DataLoader, Dataset

from downstream.coattention import COMMAND
from downstream.coattention.bundle import save_coattention
from downstream.coattention.config import CoAttentionConfig
from downstream.coattention.data import Split, check_leakage, load_splits
from downstream.coattention.model import FUSIONS, FusionClassifier
from downstream.common.embed import build_feature_encoder, encoder_fingerprint
from downstream.common.tasks import get_task
from mvmlm.bundle import ModelCardInfo, format_ci, preprocessing_of
from mvmlm.config import ConfigError, config_to_dict
from mvmlm.evaluation import Evaluation, report, score_predictions
from mvmlm.metrics import auc
from mvmlm.models.text_encoders import FrozenTextEncoder, TextFeatureCache
from mvmlm.rundir import RunDir
from mvmlm.sweep import FinishedRuns, claim_unit, file_digest, shaping_settings
from mvmlm.training import CHECKPOINTS_DIR, Engine, Loss, resolve_resume
from mvmlm.training.runs import open_run

__all__ = [
    "UNITS_DIR",
    "MODELS_DIR",
    "fusion_loss",
    "predict",
    "build_model",
    "train_fusion",
    "save_fusion",
    "run_settings",
    "run_coattention",
    "main",
]

log = logging.getLogger(__name__)

UNITS_DIR = "units"
MODELS_DIR = "models"
#: keys that do not change what a fusion learns besides :data:`mvmlm.sweep.UNSHAPING`
_UNSHAPING = {"data": ("eval_batch_size",), "train": ("device",)}


def _logits(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(batch["images"], batch["view_mask"], batch["text_hidden"], batch["text_mask"])


def fusion_loss(model: nn.Module, batch: dict) -> Loss:
    """Cross-entropy of the class logits; the breast ids name a batch whose loss is not finite."""
    return Loss(F.cross_entropy(_logits(model, batch).float(), batch["label"]), ids=batch["id"])


@torch.no_grad()
def predict(engine: Engine, model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Positive-class probabilities and labels of a prepared ``loader`` (every process's share, gathered)."""
    model.eval()
    probs, labels = [], []
    for batch in loader:
        prob = _logits(model, batch).float().softmax(-1)[:, 1]
        prob, label = engine.accelerator.gather_for_metrics((prob, batch["label"]))
        probs.append(prob.cpu())
        labels.append(label.cpu())
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def _loader(dataset: Dataset, cfg: CoAttentionConfig, train: bool, pin_memory: bool = False) -> DataLoader:
    batch_size = cfg.data.batch_size if train else cfg.data.eval_batch_size or cfg.data.batch_size
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=train, num_workers=cfg.data.num_workers, pin_memory=pin_memory
    )


def build_model(fusion: str, cfg: CoAttentionConfig, text_dim: int) -> FusionClassifier:
    """The classifier of ``fusion``; its image encoder (if it has one) carries the weights ``encoder.init`` names
    (built by the shared :func:`~downstream.common.embed.build_feature_encoder`)."""
    encoder = build_feature_encoder(cfg.encoder) if FUSIONS[fusion].image else None
    return FusionClassifier(fusion, cfg.model, 2, encoder, text_dim)


def train_fusion(
    fusion: str, cfg: CoAttentionConfig, splits: dict[str, Split], text_dim: int, workdir: Path, settings: dict
) -> tuple[np.ndarray, nn.Module, dict]:
    """Train ``fusion`` on the engine in ``workdir`` (best validation AUC kept; the final weights when no AUC is
    defined); return its positive-class probabilities on the test split, the trained model and the engine's best
    (metric, score, epoch)."""
    state = PartialState()
    claim_unit(workdir, settings, main_process=state.is_main_process)  # before the engine looks for its state
    state.wait_for_everyone()
    engine = Engine(cfg.train, cfg.optim, workdir, hparams={**config_to_dict(cfg), "fusion": fusion}, name=fusion)
    model = build_model(fusion, cfg, text_dim)
    val, test = (engine.prepare(_loader(splits[role].dataset, cfg, train=False)) for role in ("val", "test"))

    def evaluate(current: nn.Module) -> dict[str, float]:
        probs, labels = predict(engine, current, val)
        return {"val/auc": auc(labels, probs)}

    fit = engine.fit(
        model,
        _loader(splits["train"].dataset, cfg, train=True, pin_memory=engine.device.type == "cuda"),
        loss=fusion_loss,
        evaluate=evaluate,
        select="val/auc",
        mode="max",
        discard_checkpoints=True,
        on_device=splits["train"].augment.images if splits["train"].augment else None,
    )
    scores, _ = predict(engine, model, test)
    engine.end()
    return scores, engine.accelerator.unwrap_model(model), fit.best


def save_fusion(
    fusion: str, cfg: CoAttentionConfig, splits: dict[str, Split], model: nn.Module, best: dict, scores: np.ndarray,
    text_dim: int, run: RunDir,
) -> Path:  # fmt: skip
    """``models/<fusion>`` as a bundle whose card holds the breasts per split, the best validation AUC and the test
    AUC with its patient-bootstrap CI (as the results table computes it)."""
    test = splits["test"]
    scored = score_predictions(test.labels, scores, list(test.breasts["patient"]), n_resamples=cfg.bootstrap)
    metrics = {"test AUC": format_ci(scored["auc"], scored["auc_low"], scored["auc_high"])}
    if best.get("score") is not None:
        metrics[f"{best['metric']} (best epoch {best['epoch']})"] = f"{best['score']:.3f}"
    task = get_task(cfg.task)
    card = ModelCardInfo.from_run(
        run.path,
        title=f"mvmlm co-attention fusion ({fusion}): {task.name}",
        predicts=(
            f"From the CC and MLO views of a breast and its metadata ({', '.join(cfg.metadata_fields)}) written as "
            f"text, the probability of each class of {task.name!r}."
        ),
        counts={role: len(split.breasts) for role, split in splits.items()},
        metrics=metrics,
    )
    directory = run.file(f"{MODELS_DIR}/{fusion}")
    return save_coattention(directory, model, fusion, cfg, task, text_dim, preprocessing_of(cfg.data.table), card)


def run_settings(cfg: CoAttentionConfig) -> dict:
    """Everything besides the fusion that shapes its test scores (the table by its content, the encoder by its
    weights); read once per run."""
    shaping = shaping_settings({"data": config_to_dict(cfg.data), "train": config_to_dict(cfg.train)}, _UNSHAPING)
    train, data = shaping["train"], shaping["data"]
    text = {k: v for k, v in config_to_dict(cfg.text).items() if k != "cache"}
    return {
        "data": {**data, "table": file_digest(cfg.data.table)},
        "task": cfg.task,
        "fields": cfg.metadata_fields,
        "text_seed": cfg.text_seed,
        "encoder": encoder_fingerprint(cfg.encoder),
        "text": text,
        "model": config_to_dict(cfg.model),
        "optim": config_to_dict(cfg.optim),
        "train": train,
    }


def _check(cfg: CoAttentionConfig, run: RunDir) -> None:
    """One-line errors before any work: unknown fusions, a resume the command cannot honour."""
    unknown = [f for f in cfg.fusions if f not in FUSIONS]
    if unknown or not cfg.fusions:
        raise ConfigError(f"key 'fusions': {unknown or 'empty'}; known: {', '.join(FUSIONS)}")
    if cfg.train.resume not in ("none", "latest"):
        raise ConfigError(
            f"key 'train.resume': {cfg.train.resume!r}; coattention resumes per fusion: use latest "
            "(finished fusions are reused, an interrupted one continues) or none"
        )
    for fusion in cfg.fusions:  # a new run must not start over an interrupted one (raises naming the folder)
        resolve_resume(cfg.train.resume, run.file(f"{UNITS_DIR}/{fusion}/{CHECKPOINTS_DIR}"))


def run_coattention(cfg: CoAttentionConfig, run: RunDir, state: PartialState) -> dict:
    """Train and score every configured fusion on one task; write one results table (main process)."""
    task = get_task(cfg.task)
    if not task.binary:
        raise ConfigError(f"task {cfg.task!r} is not binary; co-attention classifies malignancy or calcification")
    check_leakage(cfg.metadata_fields, task)
    _check(cfg, run)
    encoder = FrozenTextEncoder(cfg.text.model, cfg.text.revision, cfg.text.max_length)
    with state.main_process_first():  # the main process encodes the metadata texts, the others read them
        splits = load_splits(cfg, task, TextFeatureCache(cfg.text.cache, encoder), state.device)
    test = splits["test"]
    finished = FinishedRuns(run, cfg.train.resume == "latest", main_process=state.is_main_process)
    shared = run_settings(cfg)
    evaluations = []
    for fusion in cfg.fusions:
        settings = {**shared, "fusion": fusion}
        record = finished.get(fusion, settings)
        if record is None:
            workdir = run.file(f"{UNITS_DIR}/{fusion}")
            scores, model, best = train_fusion(fusion, cfg, splits, encoder.hidden_size, workdir, settings)
            if state.is_main_process:
                save_fusion(fusion, cfg, splits, model, best, scores, encoder.hidden_size, run)
            record = {"scores": scores.tolist()}
            finished.put(fusion, settings, record)
        evaluations.append(
            Evaluation(
                {"model": fusion, "task": task.name},
                test.labels,
                np.asarray(record["scores"]),
                list(test.breasts["patient"]),
                list(test.breasts["breast_id"]),
                task.class_names,
            )
        )
    finished.log_reused()
    if not state.is_main_process:
        return {}
    return report(
        run, evaluations, keys=["model", "task"], series_key="model", n_resamples=cfg.bootstrap, plots=cfg.plots
    )


def main(argv: list[str] | None = None) -> dict:
    cfg = COMMAND.parse(argv)
    state, run = open_run(cfg)
    results = run_coattention(cfg, run, state)
    if state.is_main_process:
        run.write_metrics(results)
    return results
