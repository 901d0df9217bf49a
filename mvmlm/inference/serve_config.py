"""Config of ``mvmlm serve``; torch-free (``--help`` reads only this)."""

from __future__ import annotations

from dataclasses import dataclass

from mvmlm.config import MISSING

__all__ = ["ServeConfig"]


@dataclass
class ServeConfig:
    """``mvmlm serve``: a web page (Gradio) showing one exam's views, heatmaps and probabilities from a bundle."""

    model: str = MISSING  # bundle directory or Hub repo id
    host: str = "127.0.0.1"  # bind address; 0.0.0.0 exposes the viewer to the network
    port: int = 7860
    share: bool = False  # a public *.gradio.live link through Gradio's relay (off: nothing leaves this machine)
    corpus: str = ""  # MV-CLIP bundles: a report corpus folder whose nearest reports are shown per breast
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:1 ...
    method: str = "gradcam"  # heatmap method: gradcam | gradcam++
    prompt: str = ""  # MV-CLIP bundles: the prompt mapped first ('' = the first zero-shot class prompt)
    examples: int = 3  # synthetic example exams offered in the page (written to a temporary folder at start)
