"""``mvmlm predict`` speed against its parts, on one set of synthetic DICOM exams (not a test; never run by ``make
test``).

``python benchmarks/predict.py --exams 16 --height 1024 --width 640 --workers 2``

Prints, side by side in one run on the same exams: predict's exams/s (DataLoader with ``--workers`` decoding while
the model runs) and the exams/s of the serial sum of the bare parts for the same exams: DICOM decode +
preprocessing + model forward. Target: predict's time <= 1.15 x that sum on CPU with ``--workers 2``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mvmlm.bundle import bundle_config
from mvmlm.config import config_to_dict
from mvmlm.data.dicom import read_mammogram
from mvmlm.data.exams import build_breasts
from mvmlm.data.preprocess import PreprocessParams, preprocess_image
from mvmlm.data.synthetic import write_synthetic
from mvmlm.inference.predict import predict_paths
from mvmlm.inference.views import cache_values, forward_threads

TARGET = 1.15


def _bundle(params: PreprocessParams, encoder: str):
    from downstream.common.config import EncoderConfig
    from downstream.common.embed import build_backbone
    from downstream.finetune.config import FinetunedModelConfig
    from downstream.finetune.model import BreastClassifier, FinetunedBundle

    config = EncoderConfig(source="timm", name=encoder, init="random")
    model = BreastClassifier(build_backbone(config), 2).eval()
    model_config = FinetunedModelConfig(config, "malignancy", ["no", "yes"])
    heads = {"malignancy": ["no", "yes"]}
    return FinetunedBundle(model, bundle_config(config_to_dict(model_config), heads, config_to_dict(params)))


@torch.no_grad()
def _parts(bundle, table, root: Path, params: PreprocessParams, batch_size: int) -> float:
    """Seconds of the bare serial pipeline: decode + preprocess every view, forward in batches."""
    breasts = build_breasts(table)
    start = time.perf_counter()
    images, masks = [], []
    for _, row in breasts.iterrows():
        views = []
        for slot in ("CC", "MLO"):
            present = bool(row[f"{slot}_present"])
            image = (
                cache_values(preprocess_image(read_mammogram(root / row[f"{slot}_path"])[0], params))
                if present
                else None
            )
            views.append(
                torch.from_numpy(image)[None] if image is not None else torch.zeros(1, params.height, params.width)
            )
        images.append(torch.stack(views))
        masks.append(torch.tensor([bool(row["CC_present"]), bool(row["MLO_present"])]))
        if len(images) == batch_size:
            bundle.predict_views(torch.stack(images), torch.stack(masks))
            images, masks = [], []
    if images:
        bundle.predict_views(torch.stack(images), torch.stack(masks))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", default="vindr")
    parser.add_argument("--exams", type=int, default=16)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--size", type=int, nargs=2, default=[512, 320], help="preprocessed H W")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    params = PreprocessParams(height=args.size[0], width=args.size[1])
    bundle = _bundle(params, args.encoder)
    with forward_threads(torch.device("cpu"), args.workers) as threads:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        table = write_synthetic(args.format, root, exams=args.exams, seed=0, height=args.height, width=args.width)
        folder = str(root / "images") if (root / "images").is_dir() else str(root)
        predict_paths(bundle, [folder], workers=0, batch_size=args.batch_size)  # warm-up (page cache, kernels)
        start = time.perf_counter()
        result = predict_paths(bundle, [folder], workers=args.workers, batch_size=args.batch_size)
        predict_s = time.perf_counter() - start
        parts_s = _parts(bundle, table, root, params, args.batch_size)
    exams = table["exam_id"].nunique()
    print(
        f"{exams} exams ({len(result.predictions)} breasts), {args.height}x{args.width} DICOM -> {params.height}x"
        f"{params.width}, {args.encoder}, torch threads {torch.get_num_threads()} (predict's forward beside "
        f"{args.workers} decoding workers: {threads})"
    )
    print(f"  predict (--workers {args.workers}):        {exams / predict_s:7.2f} exams/s  ({predict_s:.2f} s)")
    print(f"  decode + preprocess + forward (serial): {exams / parts_s:7.2f} exams/s  ({parts_s:.2f} s)")
    ratio = predict_s / parts_s
    print(f"  ratio predict / parts: {ratio:.2f}  (target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
