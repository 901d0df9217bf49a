"""``mvmlm export --model M --out DIR``: a bundle's image tower (with its head) as ONNX, checked with onnxruntime.

What is exported, per view (``images (N, 1, H, W)``, the preprocessed view as ``mvmlm predict`` feeds it; dynamic N):

- ``finetune``: ``embedding (N, D)`` and the head's ``logits (N, K)``. The breast prediction of a mean-pooling model
  is ``softmax(mean of its present views' logits)`` (the head is linear, so this equals the bundle's own output).
- ``mvclip``: the image tower's ``embedding (N, D)`` (not normalised; L2-normalise it for zero-shot scores).

The file is made by ``torch.onnx.export(..., dynamo=True)`` and checked before it is kept: onnxruntime's outputs on
images of the bundle's size must equal PyTorch's (max abs diff printed, at most ``tolerance``). An encoder that
cannot be exported is refused with one line naming it and the reason; no file is left behind. Needs the optional
extra ``export`` (``pip install 'mvmlm[export]'``: onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mvmlm.bundle import Bundle, BundleError, load_model
from mvmlm.errors import InputError
from mvmlm.registry import Registry

__all__ = ["ExportError", "EXPORTS", "export_onnx", "onnx_outputs", "main"]

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
INFO_FILE = "export.json"


class ExportError(ValueError, InputError):
    """A bundle's model cannot be exported (or its export does not reproduce PyTorch)."""


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"ONNX export needs {module}: pip install 'mvmlm[export]'") from None


class _PerViewClassifier(nn.Module):
    """A fine-tuned breast classifier applied to single views: ``(N, 1, H, W)`` -> embedding, head logits."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = module.backbone, module.head

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        embedding = self.backbone(images)
        return embedding, self.head(embedding)


#: bundle kind -> ``fn(bundle) -> (module of images (N, 1, H, W), output names)``
EXPORTS: Registry[Callable[[Bundle], tuple[nn.Module, list[str]]]] = Registry("ONNX export")
EXPORTS.add("finetune", lambda bundle: (_PerViewClassifier(bundle.module), ["embedding", "logits"]))
EXPORTS.add("mvclip", lambda bundle: (bundle.module.image, ["embedding"]))


def _encoder_name(bundle: Bundle) -> str:
    model = bundle.config.get("model", {})
    encoder = model.get("encoder") or model.get("image", {})
    return str(encoder.get("name") or encoder.get("encoder") or bundle.kind)


def onnx_outputs(path: str | Path, images: np.ndarray) -> list[np.ndarray]:
    """The outputs of the ONNX file ``path`` for ``images`` (onnxruntime, CPU)."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.astype(np.float32)})


def export_onnx(bundle: Bundle, out: str | Path, images: Tensor, tolerance: float = 1e-4) -> dict[str, Any]:
    """Write ``out/model.onnx`` and ``out/export.json``; returns what the json holds (max abs diff included).

    Raises:
        ExportError: the kind has no export, the encoder cannot be exported, or onnxruntime differs from PyTorch.
    """
    _require("onnx")
    _require("onnxscript")
    if bundle.kind not in EXPORTS:
        raise ExportError(f"a {bundle.kind} bundle has no ONNX export; exportable: {', '.join(EXPORTS.names())}")
    model, names = EXPORTS.get(bundle.kind)(bundle)
    model = model.float().cpu().eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / MODEL_FILE
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        torch.onnx.export(
            model,
            (images,),
            str(path),
            dynamo=True,
            input_names=["images"],
            output_names=names,
            dynamic_shapes={"images": {0: batch}},
            external_data=False,
        )
    except Exception as exc:  # noqa: BLE001 - any exporter failure: refuse with the encoder and the first line
        path.unlink(missing_ok=True)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"encoder {_encoder_name(bundle)!r} cannot be exported to ONNX: {reason}") from exc
    with torch.no_grad():
        expected = model(images)
    expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
    got = onnx_outputs(path, images.numpy())
    diff = max(float(np.abs(a - b).max()) for a, b in zip(got, expected, strict=True))
    if not diff <= tolerance:
        path.unlink(missing_ok=True)
        raise ExportError(f"{path}: onnxruntime differs from PyTorch by {diff:.2e} (> {tolerance:g}); not kept")
    info = {
        "kind": bundle.kind,
        "encoder": _encoder_name(bundle),
        "input": {"images": ["N", *images.shape[1:]]},
        "outputs": {name: ["N", int(a.shape[1])] for name, a in zip(names, expected, strict=True)},
        "max_abs_diff": diff,
        "checked_batch": int(images.shape[0]),
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return info


def example_images(bundle: Bundle, count: int = 2, seed: int = 0) -> Tensor:
    """``count`` seeded images of the bundle's preprocessed size, through its input transform."""
    params = bundle.preprocessing
    generator = torch.Generator().manual_seed(seed)
    views = [torch.rand(1, params.height, params.width, generator=generator) for _ in range(count)]
    return torch.stack([bundle.input_transform(view) for view in views])


def main(argv: list[str] | None = None) -> dict:
    """``mvmlm export``."""
    from mvmlm.commands import EXPORT

    cfg = EXPORT.parse(sys.argv[1:] if argv is None else argv)
    if cfg.format != "onnx":
        raise BundleError(f"unknown export format {cfg.format!r}; known: onnx")
    bundle = load_model(cfg.model)
    images = example_images(bundle, cfg.batch)
    if cfg.images:
        images = torch.from_numpy(np.load(cfg.images, allow_pickle=False)).float()
    info = export_onnx(bundle, cfg.out, images, cfg.tolerance)
    log.info("export: %s -> %s (max abs diff %.2e)", cfg.model, Path(cfg.out) / MODEL_FILE, info["max_abs_diff"])
    print(json.dumps(info))
    return info
