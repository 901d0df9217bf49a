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
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mvmlm.bundle import Bundle, load_model
from mvmlm.config import ConfigError
from mvmlm.data.dicom import read_mammogram
from mvmlm.data.exams import BREAST_SLOTS, EXAM_SLOTS, build_breasts, build_exams
from mvmlm.data.preprocess import (
    PreprocessParams,
    from_cache_values,
    load_cached,
    preprocess_image,
    to_cache_values,
)
from mvmlm.data.roi import NoRoiError
from mvmlm.errors import InputError
from mvmlm.inference.inputs import Inputs, collect
from mvmlm.inference.rois import RoiError, Rois, read_rois
from mvmlm.inference.zeroshot import ZeroShotClassifier, prompts_for, supports_zero_shot

__all__ = [
    "NothingPredictedError",
    "cache_values",
    "Units",
    "load_units",
    "ViewsDataset",
    "collate_views",
    "resolve_device",
    "forward_threads",
    "Prediction",
    "predict_paths",
    "HEATMAPS_DIR",
    "with_heatmaps",
    "main",
]

log = logging.getLogger(__name__)

SIDES = ("L", "R")


class NothingPredictedError(ValueError, InputError):
    """No image of the input could be used."""


def cache_values(image: np.ndarray) -> np.ndarray:
    """``image`` as the image cache stores and reads it back (16-bit rounding), float32 in [0, 1]."""
    return from_cache_values(to_cache_values(image))


@dataclass
class Units:
    """What one forward pass item is (a breast or an exam) and the images of each of its slots."""

    rows: pd.DataFrame  # build_breasts / build_exams rows
    slots: tuple[str, ...]
    inputs: Inputs


def load_units(paths: Sequence[str], level: str, root: str = "") -> Units:
    """The breasts (``level="breast"``) or exams of ``paths``."""
    inputs = collect(list(paths), root)
    if inputs.images.empty:
        return Units(pd.DataFrame(), (), inputs)
    if level == "exam":
        return Units(build_exams(inputs.images), EXAM_SLOTS, inputs)
    return Units(build_breasts(inputs.images), BREAST_SLOTS, inputs)


class ViewsDataset(Dataset):
    """Items ``{"images": (V, 1, H, W), "mask": (V,), "index", "errors": [(path, reason)]}``: each present slot
    decoded (or read from the cache) and preprocessed; a file that fails is an error and its slot is missing.
    With ``rois`` also ``"crops"`` and ``"crop_mask"``: each view's lesion crop (missing without a box); a unit
    with no crop at all is an error."""

    def __init__(
        self,
        units: Units,
        params: PreprocessParams,
        bundle: Bundle,
        allow_for_processing: bool = False,
        rois: Rois | None = None,
    ):
        self.rows = units.rows.reset_index(drop=True)
        self.slots, self.cached = units.slots, units.inputs.cached
        self.params, self.transform, self.allow = params, bundle.input_transform, allow_for_processing
        self.rois = rois

    def __len__(self) -> int:
        return len(self.rows)

    def _image(self, row: pd.Series, slot: str) -> torch.Tensor:
        if self.cached:
            image = load_cached(row[f"{slot}_cache_path"])
        else:
            decoded, _ = read_mammogram(row[f"{slot}_path"], for_processing=self.allow)
            image = cache_values(preprocess_image(decoded, self.params))
        return self.transform(torch.from_numpy(image)[None])

    def _crops(self, row: pd.Series, mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The lesion crops of the present views (a view without a box: missing)."""
        crops: list[torch.Tensor | None] = []
        for slot, present in zip(self.slots, mask.tolist(), strict=True):
            try:
                crop = (
                    self.rois.crop(row[f"{slot}_image_id"], row[f"{slot}_path"], self.params.roi) if present else None
                )
            except NoRoiError:
                crop = None
            crops.append(None if crop is None else self.transform(torch.from_numpy(cache_values(crop))[None]))
        shape = next((c.shape for c in crops if c is not None), None)
        crop_mask = torch.tensor([c is not None for c in crops])
        return torch.stack([torch.zeros(shape or (1, 1, 1)) if c is None else c for c in crops]), crop_mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows.iloc[index]
        views: list[torch.Tensor | None] = []
        errors: list[tuple[str, str]] = []
        for slot in self.slots:
            if not row[f"{slot}_present"]:
                views.append(None)
                continue
            try:
                views.append(self._image(row, slot))
            except Exception as exc:  # noqa: BLE001 - any per-file failure is recorded in skipped.csv
                path = str(row[f"{slot}_path"])
                errors.append((path, str(exc).removeprefix(f"{path}: ")))
                views.append(None)
        shape = next((v.shape for v in views if v is not None), None)
        images = torch.stack([torch.zeros(shape or (1, 1, 1)) if v is None else v for v in views])
        mask = torch.tensor([v is not None for v in views])
        item = {"images": images, "mask": mask, "index": index, "errors": errors}
        if self.rois is not None and mask.any():
            item["crops"], item["crop_mask"] = self._crops(row, mask)
            if not item["crop_mask"].any():
                path = str(row[f"{self.slots[int(mask.nonzero()[0])]}_path"])
                errors.append((path, "no lesion box in --rois for any view of its breast: not predicted"))
                item["mask"] = torch.zeros_like(mask)
        return item


def collate_views(items: list[dict[str, Any]]) -> dict[str, Any]:
    usable = [item for item in items if item["mask"].any()]
    batch = {
        key: torch.stack([i[key] for i in usable]) if usable else None
        for key in ("images", "mask", "crops", "crop_mask")
        if key in (usable or items)[0]
    }
    return {**batch, "index": [i["index"] for i in usable], "errors": [e for i in items for e in i["errors"]]}


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


def resolve_device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


@contextmanager
def forward_threads(device: torch.device, workers: int) -> Iterator[int]:
    """On CPU, the model's intra-op threads for the duration: the cores left beside ``workers`` decoding processes
    (at least one, at most torch's setting). More runnable threads than cores stall torch's thread barriers: on 2
    cores, 2 forward threads beside 2 decoders were slower than 1 (benchmarks/predict.py)."""
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, min(before, cores - workers)) if device.type == "cpu" and workers > 0 else before
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


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
    units = load_units([paths] if isinstance(paths, str) else list(paths), bundle.level, root)
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
        dataset = ViewsDataset(units, bundle.preprocessing, bundle, allow_for_processing, boxes)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_views)
        target = resolve_device(device)
        bundle.module.to(target).eval()
        with forward_threads(target, workers):
            for batch in tqdm(loader, desc="predict", unit="batch", disable=not progress):
                skipped += [{"path": path, "reason": reason} for path, reason in batch["errors"]]
                if batch["index"]:
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
