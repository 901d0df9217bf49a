"""Are the heatmaps right? Pointing game and map mass inside the planted lesions of synthetic exams.

A tiny breast classifier (timm ``test_resnet``, random init) is fine-tuned for ``mass`` with ``mvmlm finetune`` on a
synthetic VinDr set; its Grad-CAM maps of the test split's mass images are scored against the lesion masks that the
synthetic writer planted (:mod:`mvmlm.data.synthetic.lesions`, carried through the preprocess crop and resize), beside
the same architecture at its random init (before training) and a uniform map (chance).

- pointing game: share of images whose map maximum lies in the lesion disc grown by ``tolerance`` pixels, by default
  one feature-map cell (the encoder's stride: a Grad-CAM map is only defined on that grid; the original pointing game
  allowed 15 px at 224 px) (chance: the grown disc's share of the image);
- mass inside: mean share of the map's total mass that lies inside the lesion disc (chance: the disc's share).

    python benchmarks/explain.py --exams 96 --epochs 8
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from mvmlm.bundle import load_model
from mvmlm.data import schema
from mvmlm.data.dicom import read_mammogram
from mvmlm.data.preprocess import PreprocessParams, cache_folder, load_cached, preprocess_table, read_cached_table
from mvmlm.data.synthetic import write_synthetic
from mvmlm.data.synthetic.lesions import preprocessed_lesion_mask, read_lesions
from mvmlm.inference.explain import explain_views

__all__ = [
    "LesionViews",
    "lesion_views",
    "pointing_game",
    "mass_inside",
    "score_bundle",
    "chance",
    "fine_tune",
    "compare",
    "run",
]

REPO = Path(__file__).resolve().parents[1]


@dataclass
class LesionViews:
    """Preprocessed views with a planted lesion: ``images (N, 1, H, W)`` and their lesion ``masks (N, H, W)``."""

    images: torch.Tensor
    masks: np.ndarray


def lesion_views(
    table: Path, root: Path, params: PreprocessParams, split: str = "test", finding: str = "mass"
) -> LesionViews:
    """The cached views of ``split`` with ``finding`` and their lesion masks in the cached image's pixels."""
    cached = read_cached_table(table)
    lesions = read_lesions(root)
    rows = cached[(cached["split"] == split) & (cached[finding] == 1)]
    images, masks = [], []
    for row in rows.itertuples():
        full, _ = read_mammogram(root / row.path)
        masks.append(preprocessed_lesion_mask(full, lesions.loc[(row.dataset, row.image_id)], params))
        images.append(torch.from_numpy(load_cached(row.cache_path))[None])
    return LesionViews(torch.stack(images), np.stack(masks))


def pointing_game(maps: np.ndarray, masks: np.ndarray, tolerance: int = 8) -> float:
    """Share of maps whose maximum lies inside the lesion grown by ``tolerance`` pixels."""
    grown = np.stack([ndimage.binary_dilation(m, iterations=tolerance) if tolerance else m for m in masks])
    peaks = [np.unravel_index(np.argmax(m), m.shape) for m in maps]
    return float(np.mean([g[p] for g, p in zip(grown, peaks, strict=True)]))


def mass_inside(maps: np.ndarray, masks: np.ndarray) -> float:
    """Mean share of each map's mass that lies inside its lesion (uniform share for an all-zero map)."""
    totals = maps.sum(axis=(1, 2))
    inside = (maps * masks).sum(axis=(1, 2))
    uniform = masks.mean(axis=(1, 2))
    return float(np.mean(np.where(totals > 0, inside / np.maximum(totals, 1e-12), uniform)))


def score_bundle(bundle, views: LesionViews, method: str = "gradcam", tolerance: int = 8) -> dict[str, float]:
    """Pointing game and mass inside of ``bundle``'s maps for the ``mass`` class (each view on its own)."""
    images = views.images[:, None]
    mask = torch.ones(len(images), 1, dtype=torch.bool)
    maps = np.stack([m.heatmap for m in explain_views(bundle, images, mask, method, target="mass")])
    return {"pointing": pointing_game(maps, views.masks, tolerance), "mass_inside": mass_inside(maps, views.masks)}


def chance(views: LesionViews, tolerance: int = 8) -> dict[str, float]:
    """A uniform map: a random peak and the lesion's share of the image."""
    grown = np.stack([ndimage.binary_dilation(m, iterations=tolerance) if tolerance else m for m in views.masks])
    return {"pointing": float(grown.mean()), "mass_inside": float(views.masks.mean())}


def untrained(directory: Path):
    """The fine-tuned bundle in ``directory`` with the same architecture at a seeded random init."""
    from downstream.common.embed import build_backbone
    from downstream.finetune.model import BreastClassifier, FinetunedBundle, load_finetuned

    trained, cfg = load_finetuned(directory)
    module = BreastClassifier(build_backbone(cfg.encoder), len(cfg.class_names), cfg.pool).eval()
    return FinetunedBundle(module, load_model(directory).config)


def fine_tune(cache_table: Path, out: Path, epochs: int = 8, seed: int = 0) -> Path:
    """A tiny ``mass`` classifier (timm ``test_resnet`` at output stride 8, random init) fine-tuned with ``mvmlm
    finetune`` on ``cache_table``; returns its bundle directory."""
    from downstream.finetune.run import main as finetune

    torch.manual_seed(seed)
    finetune(
        [
            "--config", str(REPO / "configs/finetune/tiny.yaml"), f"data.table={cache_table}", f"out={out}",
            "encoders.mvmlm.source=timm", "encoders.mvmlm.name=timm:test_resnet", "encoders.mvmlm.init=random",
            "encoders.mvmlm.checkpoint=''", "encoders.mvmlm.kwargs={in_chans: 1, output_stride: 8}",
            "save_models=true", f"train.epochs={epochs}", f"train.early_stop={epochs}", "bootstrap=0", "plots=false",
            f"seeds=[{seed}]",
        ]
    )  # fmt: skip
    (saved,) = (out / "models").iterdir()
    return saved


def compare(saved: Path, cache_table: Path, root: Path, method: str = "gradcam", tolerance: int = 8) -> dict:
    """Pointing game and mass inside of the trained bundle ``saved``, its untrained twin and a uniform map."""
    trained = load_model(saved)
    views = lesion_views(cache_table, root, trained.preprocessing)
    return {
        "views": len(views.images),
        "trained": score_bundle(trained, views, method, tolerance),
        "untrained": score_bundle(untrained(saved), views, method, tolerance),
        "chance": chance(views, tolerance),
    }


def run(
    work: Path, exams: int = 96, epochs: int = 8, height: int = 96, width: int = 64, seed: int = 0, keep: str = ""
) -> dict:
    """Synthetic set -> cache -> fine-tune -> pointing game of trained, untrained and chance maps; ``keep``: a folder
    to copy the trained bundle to (e.g. for the viewer screenshot, tests/inference/test_serve.py)."""
    root = work / "vindr"
    table = write_synthetic("vindr", root, exams=exams, seed=seed, height=2 * height, width=2 * width)
    params = PreprocessParams(height=height, width=width)
    schema.write_table(table, work / "table.parquet")
    preprocess_table(table, root, work / "cache", params, progress=False)
    cache_table = cache_folder(work / "cache", params) / "table.parquet"
    saved = fine_tune(cache_table, work / "finetune", epochs, seed)
    if keep:
        shutil.copytree(saved, keep, dirs_exist_ok=True)
    return compare(saved, cache_table, root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exams", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", default="", help="copy the trained bundle to this folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        result = run(Path(work), exams=args.exams, epochs=args.epochs, seed=args.seed, keep=args.keep)
    print(json.dumps(result, indent=1))
    for name in ("trained", "untrained", "chance"):
        print(f"{name:>10}: pointing {result[name]['pointing']:.3f}  mass inside {result[name]['mass_inside']:.3f}")


if __name__ == "__main__":
    main()
