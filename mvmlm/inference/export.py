"""``mvmlm export --model M --out DIR``: a bundle's image model (with its heads) as ONNX, checked with onnxruntime.

What is exported (inputs: the preprocessed views as ``mvmlm predict`` feeds the network, i.e. after the bundle's
input transform; every input has a dynamic batch size N):

- ``finetune``: per view ``images (N, 1, H, W)`` -> ``embedding (N, D)`` and the head's ``logits (N, K)``. The breast
  prediction of a mean-pooling model is ``softmax(mean of its present views' logits)`` (the head is linear, so this
  equals the bundle's own output).
- ``mvclip``: ``images (N, 1, H, W)`` -> the image tower's ``embedding (N, D)`` (L2-normalise it for zero-shot).
- ``multiview``: exams ``images (N, 4, 1, H, W)`` (L-CC, L-MLO, R-CC, R-MLO) and ``mask (N, 4)`` (bool, present
  views) -> per task ``logits_<task> (N, 2, K)`` (sides L, R) and ``attention (N, 4)``.
- ``dual-stream``: breasts' CC + MLO ``images (N, 2, 1, H, W)`` / ``mask (N, 2)`` and, with a crop stream, the
  lesion ``crops`` / ``crop_mask`` of the same shapes (inputs in the model's stream order) -> ``logits (N, K)``.

The file is made by ``torch.onnx.export`` from a ``torch.export`` program (checks on input values, such as "an exam
has a view", are left out of the graph) and checked before it is kept: onnxruntime's outputs must equal PyTorch's on
the check batch and on a batch of another size (max abs diff printed, at most ``tolerance``). Encoders whose
selective scan is a per-token loop (``vssm``, ``hybrid_resnet_vssm``, ``mambavision_hybrid``) are refused at once
with one line naming the encoder and the reason; any other failure too; no file is left behind. Needs the optional
extra ``export`` (``pip install 'mvmlm[export]'``: onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from mvmlm.bundle import Bundle, BundleError, load_model
from mvmlm.errors import InputError
from mvmlm.registry import Registry

__all__ = [
    "ExportError",
    "OnnxGraph",
    "EXPORTS",
    "export_onnx",
    "onnx_outputs",
    "network_inputs",
    "example_images",
    "main",
]

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


@dataclass
class OnnxGraph:
    """What a bundle kind exports: ``module(*inputs)`` with its input and output names, and how a batch of example
    inputs is built from preprocessed views ``(N, 1, H, W)`` (the check batch)."""

    module: nn.Module
    inputs: list[str]
    outputs: list[str]
    example: Callable[[Tensor], tuple[Tensor, ...]]


class _PerViewClassifier(nn.Module):
    """A fine-tuned breast classifier applied to single views: ``(N, 1, H, W)`` -> embedding, head logits."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = module.backbone, module.head

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        embedding = self.backbone(images)
        return embedding, self.head(embedding)


class _FourView(nn.Module):
    """A four-view classifier: exams ``(N, 4, 1, H, W)`` and their view mask ``(N, 4)`` -> per task the logits of
    both sides ``(N, 2, K)`` (L, R), then the views' attention weights ``(N, 4)``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
        out = self.module(images, mask)
        return (*out["logits"].values(), out["attention"])


class _DualStream(nn.Module):
    """A dual-stream classifier: breasts' CC + MLO ``(N, 2, 1, H, W)`` with their mask ``(N, 2)`` (and, with a crop
    stream, the lesion crops and their mask, same shapes) -> class logits ``(N, K)``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *tensors: Tensor) -> Tensor:
        pairs = dict(zip(self.module.stream_names, zip(tensors[::2], tensors[1::2], strict=True), strict=True))
        return self.module(pairs)["logits"]


def _grouped(views: Tensor, slots: int) -> tuple[Tensor, Tensor]:
    """Check items of ``slots`` views each (every view once per slot, rolled) and their mask: all present but the
    first view of the last item, so the missing-view path is checked too."""
    images = torch.stack([views.roll(-k, 0) for k in range(slots)], dim=1)
    mask = torch.ones(images.shape[:2], dtype=torch.bool)
    if len(images) > 1:
        mask[-1, 0] = False
    return images, mask


def _dual_stream(bundle: Bundle) -> OnnxGraph:
    streams = bundle.module.stream_names
    names = [n for s in streams for n in ({"whole": ["images", "mask"], "crop": ["crops", "crop_mask"]}[s])]
    return OnnxGraph(
        _DualStream(bundle.module),
        names,
        ["logits"],
        lambda views: tuple(t for k in range(len(streams)) for t in _grouped(views.roll(k, 0), 2)),
    )


#: bundle kind -> ``fn(bundle) -> OnnxGraph``
EXPORTS: Registry[Callable[[Bundle], OnnxGraph]] = Registry("ONNX export")
EXPORTS.add(
    "finetune",
    lambda bundle: OnnxGraph(_PerViewClassifier(bundle.module), ["images"], ["embedding", "logits"], lambda v: (v,)),
)
EXPORTS.add("mvclip", lambda bundle: OnnxGraph(bundle.module.image, ["images"], ["embedding"], lambda v: (v,)))
EXPORTS.add(
    "multiview",
    lambda bundle: OnnxGraph(
        _FourView(bundle.module),
        ["images", "mask"],
        [*(f"logits_{task}" for task in bundle.module.num_classes), "attention"],
        lambda views: _grouped(views, 4),
    ),
)
EXPORTS.add("dual-stream", _dual_stream)


def _encoder_name(bundle: Bundle) -> str:
    model = bundle.config.get("model", {})
    model = model.get("model", model)  # four-view and dual-stream bundles keep the whole command config
    encoder = model.get("encoder") or model.get("image", {})
    name = encoder.get("name") or encoder.get("encoder") if isinstance(encoder, dict) else encoder
    return str(name or model.get("backbone") or bundle.kind)


def _unexportable(model: nn.Module) -> str:
    """Why ``model`` cannot be exported ('' if nothing is known against it)."""
    from mvmlm.models.mambavision_blocks import MambaMixer
    from mvmlm.models.ss2d import SS2D

    if any(isinstance(m, (SS2D, MambaMixer)) for m in model.modules()):
        return (
            "its selective scan is a step-by-step recurrence over every token (a Python loop the exporter unrolls: "
            "one graph step per token and scan direction), so there is no ONNX graph of a size that exports or runs; "
            "export a timm CNN encoder's bundle instead"
        )
    return ""


def _program(model: nn.Module, inputs: tuple[Tensor, ...]) -> torch.export.ExportedProgram:
    """``model`` traced with a dynamic batch size. A check on the values of the input (e.g. "every exam has a
    view") cannot be traced: then the model is traced as it ran on ``inputs`` (``draft_export``), the check
    left out; :func:`export_onnx` then compares the file with PyTorch on these inputs and on another batch."""
    batch, shapes = torch.export.Dim("batch", min=1, max=4096), torch.export.ShapesCollection()
    for tensor in inputs:
        shapes[tensor] = {0: batch}
    dynamic = shapes.dynamic_shapes(model, inputs)
    try:
        return torch.export.export(model, inputs, dynamic_shapes=dynamic, strict=False)
    except GuardOnDataDependentSymNode:
        return torch.export.draft_export(model, inputs, dynamic_shapes=dynamic, strict=False)


def _first_line(exc: BaseException) -> str:
    """The first line of the innermost cause of ``exc`` (the exporter wraps the reason), without colour codes."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def onnx_outputs(path: str | Path, *inputs: np.ndarray) -> list[np.ndarray]:
    """The outputs of the ONNX file ``path`` for ``inputs`` in its input order (onnxruntime, CPU)."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {
        i.name: a if a.dtype == np.bool_ else a.astype(np.float32)
        for i, a in zip(session.get_inputs(), inputs, strict=True)
    }
    return session.run(None, feeds)


def export_onnx(bundle: Bundle, out: str | Path, views: Tensor, tolerance: float = 1e-4) -> dict[str, Any]:
    """Write ``out/model.onnx`` and ``out/export.json``, checked on inputs built from ``views`` (network inputs
    ``(N, 1, H, W)``); returns what the json holds (max abs diff included).

    Raises:
        ExportError: the kind has no export, the encoder cannot be exported, or onnxruntime differs from PyTorch.
    """
    _require("onnx")
    _require("onnxscript")
    if bundle.kind not in EXPORTS:
        raise ExportError(f"a {bundle.kind} bundle has no ONNX export; exportable: {', '.join(EXPORTS.names())}")
    graph = EXPORTS.get(bundle.kind)(bundle)
    model = graph.module.float().cpu().eval()
    reason = _unexportable(model)
    if reason:
        raise ExportError(f"encoder {_encoder_name(bundle)!r} cannot be exported to ONNX: {reason}")
    inputs = graph.example(views.float().cpu())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / MODEL_FILE
    try:
        torch.onnx.export(
            _program(model, inputs),
            inputs,
            str(path),
            dynamo=True,
            input_names=graph.inputs,
            output_names=graph.outputs,
            external_data=False,
        )
    except Exception as exc:  # noqa: BLE001 - any exporter failure: refuse with the encoder and the first line
        path.unlink(missing_ok=True)
        raise ExportError(f"encoder {_encoder_name(bundle)!r} cannot be exported to ONNX: {_first_line(exc)}") from exc
    diff, expected = 0.0, []
    for check in (inputs, graph.example(views[:1].float().cpu())):  # and another batch size
        with torch.no_grad():
            outputs = model(*check)
        outputs = [t.numpy() for t in (outputs if isinstance(outputs, tuple) else (outputs,))]
        got = onnx_outputs(path, *(t.numpy() for t in check))
        diff = max(diff, *(float(np.abs(a - b).max()) for a, b in zip(got, outputs, strict=True)))
        expected = expected or outputs
    if not diff <= tolerance:
        path.unlink(missing_ok=True)
        raise ExportError(f"{path}: onnxruntime differs from PyTorch by {diff:.2e} (> {tolerance:g}); not kept")
    info = {
        "kind": bundle.kind,
        "encoder": _encoder_name(bundle),
        "inputs": {name: ["N", *t.shape[1:]] for name, t in zip(graph.inputs, inputs, strict=True)},
        "outputs": {name: ["N", *a.shape[1:]] for name, a in zip(graph.outputs, expected, strict=True)},
        "max_abs_diff": diff,
        "checked_batch": int(inputs[0].shape[0]),
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return info


def network_inputs(bundle: Bundle, views: np.ndarray) -> Tensor:
    """Preprocessed views ``(N, 1, H, W)`` (as the image cache holds them) through the bundle's input transform."""
    return torch.stack([bundle.input_transform(torch.from_numpy(view).float()) for view in views])


def example_images(bundle: Bundle, count: int = 2, seed: int = 0) -> Tensor:
    """``count`` seeded images of the bundle's preprocessed size, through its input transform."""
    params = bundle.preprocessing
    generator = torch.Generator().manual_seed(seed)
    return network_inputs(bundle, torch.rand(count, 1, params.height, params.width, generator=generator).numpy())


def main(argv: list[str] | None = None) -> dict:
    """``mvmlm export``."""
    from mvmlm.commands import EXPORT

    cfg = EXPORT.parse(sys.argv[1:] if argv is None else argv)
    if cfg.format != "onnx":
        raise BundleError(f"unknown export format {cfg.format!r}; known: onnx")
    bundle = load_model(cfg.model)
    if cfg.images:
        images = network_inputs(bundle, np.load(cfg.images, allow_pickle=False))
    else:
        images = example_images(bundle, cfg.batch)
    info = export_onnx(bundle, cfg.out, images, cfg.tolerance)
    log.info("export: %s -> %s (max abs diff %.2e)", cfg.model, Path(cfg.out) / MODEL_FILE, info["max_abs_diff"])
    print(json.dumps(info))
    return info
