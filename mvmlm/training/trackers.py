"""Experiment trackers by name (any tracker Accelerate supports), offline-safe, and flat hyper-parameters."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from mvmlm.config import ConfigError

__all__ = ["tracker_names", "flat_hparams"]

log = logging.getLogger(__name__)


def tracker_names(requested: list[str], logging_dir: str | Path) -> list[str]:
    """The Accelerate trackers to use of ``requested``: names Accelerate does not know raise, trackers whose package
    is missing are left out with a warning. wandb runs offline and mlflow writes a file store under ``logging_dir``
    unless the environment says otherwise (WANDB_MODE, MLFLOW_TRACKING_URI), so nothing needs a network."""
    from accelerate.utils import LoggerType
    from accelerate.utils import imports as available

    known = sorted(t.value for t in LoggerType if t.value != "all")
    chosen = []
    for name in dict.fromkeys(n for n in requested if n not in ("", "none")):
        if name not in known:
            raise ConfigError(f"key 'train.trackers': unknown tracker {name!r}; known: {', '.join(known)}")
        if not getattr(available, f"is_{name}_available")():
            log.warning(
                "tracker %s is not installed (pip install %s): metrics go to the run directory only", name, name
            )
            continue
        chosen.append(name)
    if "wandb" in chosen:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(logging_dir))
    if "mlflow" in chosen:
        os.environ.setdefault("MLFLOW_TRACKING_URI", Path(logging_dir, "mlruns").resolve().as_uri())
    return chosen


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict flattened to ``a.b.c -> scalar`` (lists as text), as TensorBoard hparams need."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
