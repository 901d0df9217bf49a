"""ONNX export: onnxruntime against PyTorch on the CPU, images/s side by side (not a test; never run by ``make test``).

``python benchmarks/export.py --encoder resnet18 --height 512 --width 320 --batch 8 --repeats 5``

Exports a fine-tuned-classifier bundle (random-init ``--encoder``, its per-view embedding and logits) with
:func:`mvmlm.inference.export.export_onnx` (which checks onnxruntime against PyTorch, max abs diff printed), then
times both on the same batches of seeded images in one run, alternating, each after a warm-up: median seconds per
batch and images/s, and the ratio onnxruntime / PyTorch. Both use ``--threads`` intra-op threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _bundle(encoder: str, height: int, width: int):
    from downstream.common.config import EncoderConfig
    from downstream.common.embed import build_backbone
    from downstream.finetune.config import FinetunedModelConfig
    from downstream.finetune.model import BreastClassifier, FinetunedBundle
    from mvmlm.bundle import bundle_config
    from mvmlm.config import config_to_dict
    from mvmlm.data.preprocess import PreprocessParams

    config = EncoderConfig(source="timm", name=encoder, init="random")
    model = BreastClassifier(build_backbone(config), 2).eval()
    heads = {"malignancy": ["no", "yes"]}
    model_config = config_to_dict(FinetunedModelConfig(config, "malignancy", ["no", "yes"]))
    params = config_to_dict(PreprocessParams(height=height, width=width))
    return FinetunedBundle(model, bundle_config(model_config, heads, params))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    import onnxruntime as ort

    from mvmlm.inference.export import MODEL_FILE, example_images, export_onnx

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    bundle = _bundle(args.encoder, args.height, args.width)
    images = example_images(bundle, args.batch)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        info = export_onnx(bundle, out, images[:2])
        export_seconds = time.perf_counter() - start
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(Path(out) / MODEL_FILE), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: images.numpy().astype(np.float32)}
    model = bundle.module

    def run_torch() -> None:
        with torch.no_grad():
            model.head(model.backbone(images))

    def run_onnx() -> None:
        session.run(None, feed)

    times: dict[str, list[float]] = {"pytorch": [], "onnxruntime": []}
    runs = {"pytorch": run_torch, "onnxruntime": run_onnx}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(args.repeats):  # alternating, so both see the same machine load
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "encoder": args.encoder,
        "input": [args.batch, 1, args.height, args.width],
        "threads": args.threads,
        "export_seconds": round(export_seconds, 1),
        "max_abs_diff": info["max_abs_diff"],
        **{f"{name}_images_per_s": round(args.batch / s, 2) for name, s in median.items()},
        "onnxruntime_over_pytorch": round(median["pytorch"] / median["onnxruntime"], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
