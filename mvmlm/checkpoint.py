"""Checkpoint directories: ``model.safetensors`` (tensors) + ``config.yaml`` (the typed model config).

Files are written atomically (a temporary file in the same folder, then ``os.replace``), so a crash never leaves a
half-written checkpoint behind. Loading reads safetensors only: pickle files (``.bin``, ``.pt``, ...) are never
unpickled, since unpickling an untrusted file runs arbitrary code.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from torch import Tensor

from mvmlm.config import build_config, config_to_yaml

__all__ = [
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "atomic_path",
    "save_checkpoint",
    "load_weights",
    "load_checkpoint_config",
    "checkpoint_metadata",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

T = TypeVar("T")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(
    directory: str | Path, state_dict: Mapping[str, Tensor], config: Any, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``state_dict`` to ``directory/model.safetensors`` and ``config`` (a dataclass) to ``config.yaml``.

    Args:
        metadata: string pairs stored in the safetensors header (e.g. a training step); read back with
            :func:`checkpoint_metadata`.

    Returns:
        The checkpoint directory.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **dict(metadata or {})})
    with atomic_path(directory / CONFIG_NAME) as tmp:
        tmp.write_text(config_to_yaml(config))
    return directory


def _weights_file(directory: str | Path) -> Path:
    directory = Path(directory)
    path = directory / WEIGHTS_NAME
    if path.is_file():
        return path
    pickles = sorted(p.name for p in directory.glob("*") if p.suffix in _PICKLE_SUFFIXES) if directory.is_dir() else []
    hint = f"; found {', '.join(pickles)}, which is not loaded (pickle files can run code)" if pickles else ""
    raise FileNotFoundError(f"no {WEIGHTS_NAME} in checkpoint directory {directory}{hint}")


def load_weights(directory: str | Path, device: str = "cpu") -> dict[str, Tensor]:
    """The tensors of ``directory/model.safetensors``, on ``device``."""
    from safetensors.torch import load_file

    return load_file(str(_weights_file(directory)), device=device)


def checkpoint_metadata(directory: str | Path) -> dict[str, str]:
    """The string metadata stored by :func:`save_checkpoint` (without reading the tensors)."""
    from safetensors import safe_open

    with safe_open(str(_weights_file(directory)), framework="pt") as handle:
        return dict(handle.metadata() or {})


def load_checkpoint_config(directory: str | Path, schema: type[T]) -> T:
    """``directory/config.yaml`` validated against the dataclass ``schema`` (unknown keys raise ConfigError)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in checkpoint directory {directory}")
    return build_config(schema, [path])
