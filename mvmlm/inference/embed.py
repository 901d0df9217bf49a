"""``mvmlm embed --model M --input PATH... --out FILE.parquet``: per-view and per-breast embeddings of a bundle's
image tower (rows ``level=view`` with the slot, ``level=breast`` with the mean over its present views), with ids;
``skipped.csv`` beside ``FILE`` lists the files not used and why."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from mvmlm.bundle import Bundle, load_model
from mvmlm.inference.views import NothingPredictedError, ReadOptions, load_units, view_batches

__all__ = ["Embedding", "embed_paths", "main"]

log = logging.getLogger(__name__)


@dataclass
class Embedding:
    embeddings: pd.DataFrame  # ids, level, slot, embedding (list of floats)
    skipped: pd.DataFrame


@torch.no_grad()
def embed_paths(
    bundle: Bundle,
    paths: Sequence[str] | str,
    *,
    root: str = "",
    device: str = "auto",
    batch_size: int = 8,
    workers: int = 2,
    allow_for_processing: bool = False,
    progress: bool = False,
) -> Embedding:
    """Embeddings of every view and breast of ``paths`` and the files skipped, with their reasons."""
    units = load_units(paths, "breast", root)
    skipped, records = list(units.inputs.skipped), []
    if len(units.rows):
        read = ReadOptions(device, batch_size, workers, allow_for_processing, progress)
        target = read.target()
        batches = view_batches(bundle, units, skipped, read, desc="embed")
        for batch in batches:
            mask = batch["mask"]
            flat = bundle.embed_images(batch["images"].flatten(0, 1)[mask.flatten()].to(target)).float().cpu()
            views = flat.new_zeros(mask.numel(), flat.shape[-1])
            views[mask.flatten()] = flat
            views = views.view(*mask.shape, -1)
            for b, i in enumerate(batch["index"]):
                unit = units.rows.iloc[i]
                ids = {k: unit[k] for k in ("dataset", "patient_id", "exam_id", "laterality")}
                for k, slot in enumerate(units.slots):
                    if mask[b, k]:
                        image = unit[f"{slot}_image_id"]
                        records.append(
                            {"level": "view", **ids, "slot": slot, "image_id": image, "embedding": views[b, k].tolist()}
                        )
                pooled = views[b][mask[b]].mean(dim=0)
                records.append({"level": "breast", **ids, "slot": None, "image_id": None, "embedding": pooled.tolist()})
    return Embedding(pd.DataFrame(records), pd.DataFrame(skipped, columns=["path", "reason"]))


def main(argv: list[str] | None = None) -> dict:
    """``mvmlm embed``: write the embeddings parquet and skipped.csv beside it."""
    from mvmlm.commands import EMBED

    cfg = EMBED.parse(argv)
    result = embed_paths(
        load_model(cfg.model),
        cfg.input,
        root=cfg.root,
        device=cfg.device,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        allow_for_processing=cfg.allow_for_processing,
        progress=cfg.progress,
    )
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.skipped.to_csv(out.with_name("skipped.csv"), index=False)
    if result.embeddings.empty:
        raise NothingPredictedError(
            f"nothing could be embedded from {', '.join(cfg.input)}: see {out.with_name('skipped.csv')}"
        )
    result.embeddings.to_parquet(out, index=False)
    summary = {"rows": len(result.embeddings), "skipped": len(result.skipped), "out": str(out)}
    print(json.dumps(summary))
    return summary
