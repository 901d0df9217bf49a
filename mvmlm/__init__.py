"""Multi-view mammography vision-language pretraining toolkit."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":  # lazy: ``import mvmlm`` stays light (the CLI's --help imports it)
        from mvmlm.bundle import load_model

        return load_model
    raise AttributeError(f"module 'mvmlm' has no attribute {name!r}")
