"""Config of ``mvmlm explain``; torch-free (``--help`` reads only this)."""

from __future__ import annotations

from dataclasses import dataclass

from mvmlm.inference.config import InputConfig

__all__ = ["ExplainConfig"]


@dataclass
class ExplainConfig(InputConfig):
    """``mvmlm explain``: one heatmap (``.npy``) and overlay (``.png``) per view, listed in explanations.csv."""

    method: str = "gradcam"  # gradcam | gradcam++ (classifier and MV-CLIP bundles alike)
    target: str = ""  # class explained ('' = the predicted class of each breast / side)
    head: str = ""  # four-view models: the head explained ('' = the first)
    prompt: str = ""  # MV-CLIP bundles: the text whose similarity is mapped, e.g. "spiculated mass" ('' = every class)
    prompts: str = ""  # MV-CLIP bundles without prompt: a YAML task -> class -> prompts ('' = the bundle's ensemble)
    batch_size: int = 4
    workers: int = 0
