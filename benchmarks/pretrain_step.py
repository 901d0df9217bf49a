"""Pretraining step cost, one run, two ratios:

(a) full MV-CLIP step (both views + text token transformer + loss + backward + AdamW, text features cached)
    / image-encoder forward+backward on the same images            -- target <= 1.2
(b) full step with the live frozen text encoder / with cached text features

    python benchmarks/pretrain_step.py --device cuda                       # mvclip_resnet34.yaml settings
    python benchmarks/pretrain_step.py --device cpu --image-size 256 160 --batch-size 2 --steps 3

Images are random tensors of the config's size. The frozen text encoder is a randomly initialised BERT of
Bio_ClinicalBERT's shape (12 layers, width 768; no download), fed synthetic reports of typical length; the
cached path gets its hidden states as the loader's cache read hands them over (already in memory here).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator

from mvmlm.config import build_config
from mvmlm.losses import MultiViewClipLoss, text_group_ids
from mvmlm.models.mvclip import MVCLIP
from mvmlm.models.tiny_text import write_tiny_text_model
from pretrain.config import PretrainConfig
from pretrain.step import contrastive_backward
from pretrain.train import DeviceTextEncoder

REPO = Path(__file__).resolve().parents[1]
PHRASES = [
    "FINDINGS: {side} breast, CC and MLO views.",
    "The breast tissue is heterogeneously dense, which may obscure",
    "small masses.",
    "There is an irregular mass with spiculated margins in the upper outer quadrant.",
    "Fine pleomorphic calcifications in a segmental distribution.",
    "No suspicious calcifications are seen.",
    "IMPRESSION: Suspicious abnormality (BI-RADS {birads}); biopsy should be considered.",
]


def reports(n: int) -> list[str]:
    """``n`` distinct synthetic reports of about 60-80 tokens."""
    return [" ".join(PHRASES).format(side=("Left", "Right")[i % 2], birads=i) for i in range(n)]


def timed(fn: Callable[[], object], device: torch.device, steps: int, warmup: int) -> float:
    """Median seconds of ``fn`` over ``steps`` runs after ``warmup`` runs."""
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs/pretrain/mvclip_resnet34.yaml"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--batch-size", type=int, help="breasts per step (default: the config's data.batch_size)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="default: the config's")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="default: bf16 on cuda, no on cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    overrides = ["data.table=unused", "data.corpus=unused", "model.text.model=unused", "model.text.revision=null"]
    if args.image_size:
        overrides.append(f"model.image.image_size=[{args.image_size[0]},{args.image_size[1]}]")
    cfg = build_config(PretrainConfig, [args.config], overrides)
    kwargs = {k: v for k, v in cfg.model.image.encoder_kwargs.items() if not k.startswith("pretrained")}
    cfg.model.image.encoder_kwargs = kwargs  # random init: no weight download
    batch = args.batch_size or cfg.data.batch_size
    precision = args.mixed_precision or ("bf16" if args.device == "cuda" else "no")
    accelerator = Accelerator(mixed_precision=precision, cpu=args.device == "cpu")
    device = accelerator.device
    texts = reports(batch)
    with tempfile.TemporaryDirectory() as tmp:
        bert = write_tiny_text_model(Path(tmp) / "bert", texts, hidden_size=768, layers=12, heads=12, max_positions=512)
        cfg.model.text.model = str(bert)
        encoder = DeviceTextEncoder(str(bert), None, cfg.model.text.max_length, device=device)
        torch.manual_seed(0)
        model = MVCLIP(cfg.model, text_encoder=encoder)
        model.set_grad_checkpointing(cfg.grad_checkpointing)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        model, optimizer = accelerator.prepare(model, optimizer)
        core = accelerator.unwrap_model(model)
        height, width = cfg.model.image.image_size
        images = torch.rand(2 * batch, 1, height, width, device=device)
        hidden, mask = encoder.encode(texts)
        base = {
            "cc": images[:batch],
            "mlo": images[batch:],
            "cc_present": torch.ones(batch, dtype=torch.bool),
            "mlo_present": torch.ones(batch, dtype=torch.bool),
            "texts": texts,
            "text_ids": text_group_ids(texts),
            "ids": [str(i) for i in range(batch)],
        }
        cached = {**base, "text_hidden": hidden, "text_mask": mask}
        loss_fn = MultiViewClipLoss(cfg.loss.image_image_weight, cfg.loss.multi_positive)

        def step(micro: dict, text_encoder=None) -> None:
            contrastive_backward(accelerator, model, loss_fn, [micro], 1, text_encoder)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def encoder_only() -> None:
            with accelerator.autocast():
                features = core.image.encoder(images)
            accelerator.backward(features.float().mean())
            optimizer.zero_grad(set_to_none=True)

        t_encoder = timed(encoder_only, device, args.steps, args.warmup)
        t_cached = timed(lambda: step(cached), device, args.steps, args.warmup)
        t_live = timed(lambda: step(base, encoder), device, args.steps, args.warmup)
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "encoder": cfg.model.image.encoder,
        "image_size": [height, width],
        "breasts_per_step": batch,
        "mixed_precision": precision,
        "grad_checkpointing": cfg.grad_checkpointing,
        "encoder_fwd_bwd_s": t_encoder,
        "step_cached_text_s": t_cached,
        "step_live_text_s": t_live,
        "a_step_over_encoder": t_cached / t_encoder,
        "b_live_over_cached": t_live / t_cached,
    }
    width_ = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width_}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width_}}  {value}")
    return results


if __name__ == "__main__":
    main()
