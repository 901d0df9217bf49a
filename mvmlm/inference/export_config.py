"""Config of ``mvmlm export``; torch-free (``--help`` reads only this)."""

from __future__ import annotations

from dataclasses import dataclass

from mvmlm.config import MISSING

__all__ = ["ExportConfig"]


@dataclass
class ExportConfig:
    """``mvmlm export``: the bundle's image tower (with its head) as DIR/model.onnx, checked with onnxruntime."""

    model: str = MISSING  # bundle directory or Hub repo id
    out: str = MISSING  # output folder (model.onnx + export.json)
    format: str = "onnx"
    images: str = ""  # .npy of preprocessed views (N, 1, H, W) to check the export on ('' = seeded random images)
    batch: int = 2  # random check images when images is ''
    tolerance: float = 1e-4  # max abs difference allowed between onnxruntime and PyTorch
