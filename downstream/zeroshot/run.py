"""Zero-shot classification with class prompts: ``python -m downstream.zeroshot --config ...``
(also ``mvmlm zeroshot``).

Each class of a task has a prompt ensemble in the config (else :data:`mvmlm.inference.zeroshot.DEFAULT_PROMPTS` for
the task's class names); a binary task's two classes are its negative and positive prompts (``["No mass is seen.",
...]`` vs ``["There is a mass.", ...]``). Scoring is :mod:`mvmlm.inference.zeroshot`'s (the same as ``mvmlm predict``
on an MV-CLIP bundle): class embeddings from the text tower, a breast's embedding its pooled view embeddings (the
image tower's, cached as for the probe), ``softmax(logit_scale * cosine)`` over the classes; for a binary task the
score is the positive class's probability. Nothing is trained, so only the evaluation split is read.

The run directory holds what :func:`mvmlm.evaluation.report` writes.
"""

from __future__ import annotations

import logging

import numpy as np

from downstream.common.embed import EncoderConfig, breast_embeddings, image_embeddings
from downstream.common.tasks import Task, get_tasks, load_breasts
from downstream.zeroshot import COMMAND
from downstream.zeroshot.config import ZeroShotConfig
from mvmlm.checkpoint import load_checkpoint_config
from mvmlm.config import ConfigError
from mvmlm.data.preprocess import read_cached_table
from mvmlm.evaluation import Evaluation, pivot_markdown, report
from mvmlm.inference.views import resolve_device
from mvmlm.inference.zeroshot import DEFAULT_PROMPTS, class_embeddings, zero_shot_scores
from mvmlm.models.mvclip import MVCLIP, MVCLIPConfig
from mvmlm.models.text_encoders import FrozenTextEncoder
from mvmlm.rundir import RunDir

__all__ = ["ZeroShotConfig", "load_model", "task_prompts", "run_zeroshot", "main"]

log = logging.getLogger(__name__)


def load_model(checkpoint: str, text_model: str = "", device: str = "cpu") -> MVCLIP:
    """The MV-CLIP model of ``checkpoint``, its text encoder optionally replaced by ``text_model``."""
    config = load_checkpoint_config(checkpoint, MVCLIPConfig).text
    encoder = FrozenTextEncoder(
        text_model or config.model, None if text_model else config.revision, config.max_length, config.dtype
    )
    return MVCLIP.load(checkpoint, device=device, text_encoder=encoder).eval()


def task_prompts(task: Task, cfg: ZeroShotConfig) -> list[list[str]]:
    """The task's prompt lists in class order: the config's, else the core's defaults for its class names."""
    defaults = DEFAULT_PROMPTS.get(task.name, {})
    prompts = cfg.prompts.get(task.name) or [defaults[c] for c in task.class_names if c in defaults]
    if not prompts:
        raise ConfigError(f"key 'prompts.{task.name}': no prompts for task {task.name!r}")
    if len(prompts) != task.num_classes or any(not p for p in prompts):
        raise ConfigError(
            f"key 'prompts.{task.name}': {len(prompts)} prompt lists for {task.num_classes} classes "
            f"{list(task.class_names)}; give one non-empty list per class, in class order"
        )
    return [list(p) for p in prompts]


def run_zeroshot(cfg: ZeroShotConfig, run: RunDir) -> dict:
    """Score every task of ``cfg`` on the evaluation split; returns what ``metrics.json`` holds."""
    tasks = get_tasks(cfg.tasks, cfg.task_classes)
    prompts = {task.name: task_prompts(task, cfg) for task in tasks}
    breasts = load_breasts(cfg.data)
    encoder = EncoderConfig(source="mvclip", checkpoint=cfg.checkpoint)
    features = breast_embeddings(
        breasts, image_embeddings(read_cached_table(cfg.data.table), encoder, cfg.embed), cfg.embed.pool
    )
    model = load_model(cfg.checkpoint, cfg.text_model, str(resolve_device(cfg.embed.device)))
    scale = float(model.logit_scale_exp().detach())
    evaluations = []
    for task in tasks:
        labels = task.labels(breasts)
        rows = np.flatnonzero((breasts["split"] == cfg.split).to_numpy() & (labels >= 0))
        scores = zero_shot_scores(features[rows], class_embeddings(model, prompts[task.name]), scale)
        info = {
            "encoder": cfg.name,
            "task": task.name,
            "split": cfg.split,
            "prompts": sum(len(p) for p in prompts[task.name]),
        }
        evaluations.append(
            Evaluation(
                info,
                labels[rows],
                scores,
                breasts["patient"].to_numpy()[rows],
                breasts["breast_id"].to_numpy()[rows],
                task.class_names,
            )
        )
        log.info("zero-shot %s: %d breasts of split %s", task.name, len(rows), cfg.split)
    return report(run, evaluations, ["encoder", "task"], n_resamples=cfg.bootstrap, plots=cfg.plots)


def main(argv: list[str] | None = None) -> dict:
    """``python -m downstream.zeroshot --config FILE [key=value ...]``; returns the metrics dict."""
    cfg = COMMAND.parse(argv)
    run = RunDir.create(cfg.out, cfg)
    metrics = run_zeroshot(cfg, run)
    run.write_metrics(metrics)
    print(f"\nzero-shot, split {cfg.split} ({run.path}):\n")
    print(pivot_markdown(metrics["summary"], ["encoder"], "task"))
    return metrics
