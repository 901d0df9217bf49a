"""``mvmlm predict --model M --input PATH... --out DIR``: class probabilities for new exams from a model bundle.

Images are decoded and preprocessed as the bundle says (:func:`mvmlm.data.dicom.read_mammogram`,
:func:`mvmlm.data.preprocess.preprocess_image`, then the 16-bit rounding of the image cache, so a DICOM file gives
exactly the image training read from the cache) by DataLoader workers while the model runs. ``OUT`` gets
``predictions.csv`` and ``predictions.parquet`` (one row per breast; per exam too for four-view models, ``level``
says which; columns ``prob_<head>_<class>``) and ``skipped.csv`` (path, reason) for every file not used.
A breast with one view is predicted with the model's missing-view handling and named in ``missing_views``.
MV-CLIP bundles give zero-shot class probabilities (:mod:`mvmlm.inference.zeroshot`); ``--explain`` adds a heatmap
per view (:func:`with_heatmaps`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mvmlm.bundle import Bundle, load_model
from mvmlm.config import ConfigError
from mvmlm.inference.rois import RoiError, read_rois
from mvmlm.inference.views import NothingPredictedError, ReadOptions, Units, load_units, view_batches
from mvmlm.inference.zeroshot import ZeroShotClassifier, prompts_for, supports_zero_shot

__all__ = [
    "Prediction",
    "predict_paths",
    "HEATMAPS_DIR",
    "with_heatmaps",
    "main",
]

log = logging.getLogger(__name__)

SIDES = ("L", "R")


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


def _views(slots: Sequence[str], mask: np.ndarray) -> tuple[str, str]:
    return "+".join(s for s, m in zip(slots, mask, strict=True) if m), "+".join(
        s for s, m in zip(slots, mask, strict=True) if not m
    )


@dataclass
class Prediction:
    predictions: pd.DataFrame
    skipped: pd.DataFrame


def _rows(bundle: Bundle, units: Units, index: list[int], mask: torch.Tensor, out: dict) -> list[dict]:
    """Output rows of one batch: per breast (and per exam for exam-level bundles)."""
    records = []
    own = bundle.unit_columns(units.rows.iloc[index], out)  # a bundle's own columns (risk models), else None
    for b, i in enumerate(index):
        unit, present = units.rows.iloc[i], mask[b].numpy()
        base = {"dataset": unit["dataset"], "patient_id": unit["patient_id"], "exam_id": unit["exam_id"]}
        if own is not None:
            used, missing = _views(units.slots, present)
            ids = {f"{s}_image_id": unit[f"{s}_image_id"] if present[k] else None for k, s in enumerate(units.slots)}
            records.append({"level": bundle.level, **base, "views": used, "missing_views": missing, **ids, **own[b]})
            continue
        if bundle.level == "breast":
            used, missing = _views(units.slots, present)
            record = {
                "level": "breast",
                **base,
                "laterality": unit["laterality"],
                "views": used,
                "missing_views": missing,
            }
            record |= {
                f"{s}_image_id": unit[f"{s}_image_id"] if present[k] else None for k, s in enumerate(units.slots)
            }
            for head, classes in bundle.heads.items():
                record |= {f"prob_{head}_{_slug(c)}": float(out[head][b, k]) for k, c in enumerate(classes)}
            records.append(record)
            continue
        used, missing = _views(units.slots, present)
        exam = {"level": "exam", **base, "laterality": None, "views": used, "missing_views": missing}
        if "attention" in out:
            exam |= {f"attention_{s}": float(out["attention"][b, k]) for k, s in enumerate(units.slots)}
        records.append(exam)
        for j, side in enumerate(SIDES):
            slots = [s for s in units.slots if s.startswith(f"{side}_")]
            side_mask = present[[units.slots.index(s) for s in slots]]
            if not side_mask.any():
                continue
            used, missing = _views([s[2:] for s in slots], side_mask)
            record = {"level": "breast", **base, "laterality": side, "views": used, "missing_views": missing}
            record |= {
                f"{s[2:]}_image_id": unit[f"{s}_image_id"] if m else None for s, m in zip(slots, side_mask, strict=True)
            }
            for head, classes in bundle.heads.items():
                record |= {f"prob_{head}_{_slug(c)}": float(out[head][b, j, k]) for k, c in enumerate(classes)}
            records.append(record)
    return records


@torch.no_grad()
def predict_paths(
    bundle: Bundle,
    paths: Sequence[str] | str,
    *,
    root: str = "",
    device: str = "auto",
    batch_size: int = 8,
    workers: int = 2,
    allow_for_processing: bool = False,
    rois: str = "",
    prompts: str = "",
    covariates: str = "",
    progress: bool = False,
) -> Prediction:
    """Predictions for every breast (and exam) of ``paths`` and the files skipped, with their reasons.

    An MV-CLIP bundle predicts zero-shot class probabilities: its prompt ensemble, or the YAML file ``prompts``
    (:func:`mvmlm.inference.zeroshot.prompts_for`). A risk bundle reads its covariates, a co-attention bundle its
    metadata fields, from the DICOM headers and the CSV ``covariates`` (:meth:`mvmlm.bundle.Bundle.prepare_units`).

    Raises:
        RoiError: a bundle that predicts from lesion crops without ``rois`` (or with a cache table as input).
    """
    if supports_zero_shot(bundle):
        bundle = ZeroShotClassifier(bundle, prompts_for(bundle, prompts or None))
    if bundle.needs_rois and not rois:
        raise RoiError(
            f"a {bundle.kind} bundle predicts from lesion crops: give --rois FILE.csv (columns image, xmin, ymin, "
            "xmax, ymax: a box per image, in pixels of the DICOM image)"
        )
    units = load_units(paths, bundle.level, root)
    if bundle.needs_rois and units.inputs.cached:
        raise RoiError(
            f"a {bundle.kind} bundle crops lesions from the DICOM files: give files, folders or a canonical "
            "table, not a cache table"
        )
    skipped = list(units.inputs.skipped)
    records: list[dict] = []
    if len(units.rows):
        units.rows, refused = bundle.prepare_units(units.rows, units.inputs.images, covariates)
        skipped += refused
    if len(units.rows):
        boxes = read_rois(rois) if bundle.needs_rois else None
        read = ReadOptions(device, batch_size, workers, allow_for_processing, progress)
        target = read.target()
        batches = view_batches(bundle, units, skipped, read, rois=boxes)
        for batch in batches:
            crops = {"crops": (batch["crops"].to(target), batch["crop_mask"].to(target))} if boxes else {}
            extra = bundle.unit_inputs(units.rows.iloc[batch["index"]])
            out = bundle.predict_views(
                batch["images"].to(target),
                batch["mask"].to(target),
                **crops,
                **{k: v.to(target) for k, v in extra.items()},
            )
            out = {k: v.detach().float().cpu() for k, v in out.items() if isinstance(v, torch.Tensor)}
            records += _rows(bundle, units, batch["index"], batch["mask"], out)
    return Prediction(pd.DataFrame(records), pd.DataFrame(skipped, columns=["path", "reason"]))


HEATMAPS_DIR = "heatmaps"


def with_heatmaps(
    bundle: Bundle, predictions: pd.DataFrame, out: Path, paths: Sequence[str], **options: Any
) -> pd.DataFrame:
    """``predictions`` with a ``<slot>_heatmap`` column beside each ``<slot>_image_id``: the overlay(s) of that view
    (``;``-separated where a view has several, e.g. one per MV-CLIP zero-shot class) in ``out/heatmaps/``, written by
    :mod:`mvmlm.inference.explain` (``explanations.csv`` there lists every map)."""
    from mvmlm.inference.explain import explain_paths, write_explanation

    folder = out / HEATMAPS_DIR
    write_explanation(explain_paths(bundle, list(paths), **options), folder)
    listed = pd.read_csv(folder / "explanations.csv", dtype={"image_id": str})
    files = listed.groupby("image_id")["overlay_file"].agg(lambda f: ";".join(f"{HEATMAPS_DIR}/{n}" for n in f))
    columns = [c for c in predictions.columns if c.endswith("_image_id")]
    return predictions.assign(**{c.replace("_image_id", "_heatmap"): predictions[c].map(files) for c in columns})


def main(argv: list[str] | None = None) -> dict:
    """``mvmlm predict``: write predictions.csv / .parquet and skipped.csv into ``out`` (and with ``explain`` the
    heatmaps into ``out/heatmaps``)."""
    from mvmlm.commands import PREDICT

    cfg = PREDICT.parse(argv)
    bundle = load_model(cfg.model)
    if cfg.format not in ("table", "json", *bundle.formats):
        known = ", ".join(("table", "json", *bundle.formats))
        raise ConfigError(f"key 'format': {cfg.format!r}; a {bundle.kind} bundle writes {known}")
    if cfg.explain:
        from mvmlm.inference.explain import EXPLAINERS

        if bundle.kind not in EXPLAINERS:
            raise ConfigError(f"--explain: a {bundle.kind} bundle has no heatmaps; kinds with: {', '.join(EXPLAINERS)}")
    result = predict_paths(
        bundle,
        cfg.input,
        root=cfg.root,
        device=cfg.device,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        allow_for_processing=cfg.allow_for_processing,
        rois=cfg.rois,
        prompts=cfg.prompts,
        covariates=cfg.covariates,
        progress=cfg.progress,
    )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    result.skipped.to_csv(out / "skipped.csv", index=False)
    if result.predictions.empty:
        raise NothingPredictedError(
            f"nothing could be predicted from {', '.join(cfg.input)}: {len(result.skipped)} file(s) skipped "
            f"(reasons in {out / 'skipped.csv'})"
        )
    if cfg.explain:
        options = {"root": cfg.root, "device": cfg.device, "workers": cfg.workers, "prompts": cfg.prompts}
        options["allow_for_processing"], options["progress"] = cfg.allow_for_processing, cfg.progress
        result.predictions = with_heatmaps(bundle, result.predictions, out, cfg.input, **options)
    result.predictions.to_csv(out / "predictions.csv", index=False)
    result.predictions.to_parquet(out / "predictions.parquet", index=False)
    if cfg.format == "json":
        (out / "predictions.json").write_text(result.predictions.to_json(orient="records", indent=1))
    if cfg.format in bundle.formats:
        table = bundle.format_predictions(result.predictions, cfg.format)
        table.to_csv(out / f"predictions_{cfg.format}.csv", index=False)
    summary = {"rows": len(result.predictions), "skipped": len(result.skipped), "out": str(out)}
    log.info("predict: %d row(s) into %s, %d file(s) skipped", summary["rows"], out, summary["skipped"])
    print(json.dumps(summary))
    return summary
