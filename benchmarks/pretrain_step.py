"""Pretraining step cost, one run, three ratios:

(a) full MV-CLIP step (both views + text token transformer + loss + backward + gradient clipping + AdamW, text
    features cached; what ``Engine.fit`` does per step) / image-encoder forward+backward on the same images
    -- target <= 1.2 on a GPU, <= 1.5 on a CPU
(b) full step with the live frozen text encoder / with cached text features
(c) the trainer's AdamW step (fused, ``mvmlm.training.build_optimizer``) / torch's per-parameter loop, on the
    same gradients
(d) forward+backward of the image token transformer's layers (``TokenLayer``) / the same weights in
    ``nn.TransformerEncoderLayer``, on the same tokens

    python benchmarks/pretrain_step.py --device cuda                       # mvclip_resnet34.yaml settings
    python benchmarks/pretrain_step.py --device cpu --image-size 512 304 --batch-size 2 --steps 5
    OMP_NUM_THREADS=1 python benchmarks/pretrain_step.py --device cpu --image-size 512 304 --batch-size 2 --clock cpu
    python benchmarks/pretrain_step.py --device cpu --image-size 512 304 --batch-size 2 --profile 25

The timed functions run in turn (one call of each per round; medians over the rounds), so a change of the
machine's load during the run hits all of them alike; on a shared machine ``--clock cpu`` with
``OMP_NUM_THREADS=1`` times this process's CPU work instead of the wall clock. ``--profile K`` prints the K
operators with the most own time in one full step (torch.profiler). Images are random tensors of the config's
size. The frozen text encoder is a randomly initialised BERT of Bio_ClinicalBERT's shape (12 layers, width 768;
no download), fed synthetic reports of typical length; the cached path gets its hidden states as the loader's
cache read hands them over (already in memory here).
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
from torch import nn

from mvmlm.config import build_config
from mvmlm.losses import MultiViewClipLoss, text_group_ids
from mvmlm.models.mvclip import MVCLIP
from mvmlm.models.tiny_text import write_tiny_text_model
from mvmlm.training import build_optimizer, param_groups
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


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(
    fns: dict[str, Callable[[], object]], device: torch.device, steps: int, warmup: int, clock: str = "wall"
) -> dict[str, float]:
    """Median seconds of each of ``fns`` over ``steps`` rounds after ``warmup`` rounds; a round calls each once."""
    now = CLOCKS[clock]
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = now()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times[name].append(now() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def layers_backward(layers: nn.ModuleList, tokens: torch.Tensor, accelerator: Accelerator) -> None:
    """Forward and backward of ``tokens`` through ``layers`` (gradients accumulate into the layers' ``.grad``)."""
    with accelerator.autocast():
        for layer in layers:
            tokens = layer(tokens)
    accelerator.backward(tokens.float().mean())


def torch_layers(layers: nn.ModuleList) -> nn.ModuleList:
    """``nn.TransformerEncoderLayer`` copies of :class:`TokenLayer` s (same weights and settings)."""
    copies = nn.ModuleList()
    for layer in layers:
        width, heads = layer.self_attn.embed_dim, layer.self_attn.num_heads
        copy = nn.TransformerEncoderLayer(
            width, heads, layer.linear1.out_features, layer.dropout.p, "gelu", batch_first=True, norm_first=True
        )
        copy.load_state_dict(layer.state_dict())
        copies.append(copy.to(layer.linear1.weight.device))
    return copies


def profile(fn: Callable[[], object], device: torch.device, rows: int) -> None:
    """Print the ``rows`` operators with the most own time in one call of ``fn`` (after one warm-up call)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        fn()
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=rows))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs/pretrain/mvclip_resnet34.yaml"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--batch-size", type=int, help="breasts per step (default: the config's data.batch_size)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="default: the config's")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="default: bf16 on cuda, no on cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile", type=int, metavar="K", help="print the top K operators of one full step")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="cpu: this process's CPU time, steadier on a shared machine (CPU only, with OMP_NUM_THREADS=1)",
    )
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu measures CPU work; use it with --device cpu")

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
        optimizer = build_optimizer(model, cfg.optim)
        loop = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr, foreach=False)
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

        def step(micro: dict, text_encoder=None) -> None:  # as Engine.fit's optimizer step
            contrastive_backward(accelerator, model, loss_fn, [micro], 1, text_encoder)
            if cfg.optim.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def encoder_only() -> None:
            with accelerator.autocast():
                features = core.image.encoder(images)
            accelerator.backward(features.float().mean())
            optimizer.zero_grad(set_to_none=True)

        times = timed(
            {"encoder": encoder_only, "cached": lambda: step(cached), "live": lambda: step(base, encoder)},
            device,
            args.steps,
            args.warmup,
            args.clock,
        )
        if args.profile:
            profile(lambda: step(cached), device, args.profile)
        generator = torch.Generator(device).manual_seed(0)
        for param in core.parameters():
            param.grad = torch.randn(param.shape, generator=generator, device=device)
        adamw = timed({"fused": optimizer.step, "loop": loop.step}, device, args.steps, args.warmup, args.clock)
        ours = core.image.tokens.layers
        reference = torch_layers(ours)
        tokens = torch.randn(2 * batch, cfg.model.tokens.num_tokens, cfg.model.tokens.width, device=device)
        layer_fns = {
            "ours": lambda: layers_backward(ours, tokens, accelerator),
            "torch": lambda: layers_backward(reference, tokens, accelerator),
        }
        layers = timed(layer_fns, device, args.steps, args.warmup, args.clock)
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "encoder": cfg.model.image.encoder,
        "image_size": [height, width],
        "breasts_per_step": batch,
        "mixed_precision": precision,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "grad_checkpointing": cfg.grad_checkpointing,
        "parameters_M": sum(p.numel() for p in core.parameters()) / 1e6,
        "encoder_fwd_bwd_s": times["encoder"],
        "step_cached_text_s": times["cached"],
        "step_live_text_s": times["live"],
        "adamw_fused_s": adamw["fused"],
        "adamw_loop_s": adamw["loop"],
        "a_step_over_encoder": times["cached"] / times["encoder"],
        "b_live_over_cached": times["live"] / times["cached"],
        "token_layers_s": layers["ours"],
        "torch_layers_s": layers["torch"],
        "c_fused_over_loop_adamw": adamw["fused"] / adamw["loop"],
        "d_token_layers_over_torch": layers["ours"] / layers["torch"],
    }
    width_ = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width_}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width_}}  {value}")
    return results


if __name__ == "__main__":
    main()
