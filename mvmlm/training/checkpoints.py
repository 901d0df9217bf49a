"""Training-state checkpoints: ``<root>/step_<00000123>/`` written by ``accelerator.save_state`` into a temporary
folder that is renamed when complete, so :func:`latest_checkpoint` never returns a half-written one (a run killed
while saving leaves only a ``.tmp-*`` folder, removed by the next save). Beside Accelerate's files each checkpoint holds
``train_state.json`` (the step and the layout it was written with), readable before anything is loaded."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from mvmlm.config import ConfigError

__all__ = [
    "checkpoint_dirs",
    "latest_checkpoint",
    "resolve_resume",
    "save_checkpoint",
    "saved_train_state",
    "RESUME_CHOICES",
    "TRAIN_STATE_FILE",
]

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d+)$")
RESUME_CHOICES = "none | latest | PATH"
TRAIN_STATE_FILE = "train_state.json"


def checkpoint_dirs(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as ``(step, path)``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (None when there is none)."""
    found = checkpoint_dirs(root)
    return found[-1][1] if found else None


def resolve_resume(resume: str, root: str | Path) -> Path | None:
    """The checkpoint to continue from: ``none`` -> None; ``latest`` -> the newest under ``root`` (None if there is
    none yet); anything else -> that folder.

    Raises:
        ConfigError: ``none`` while ``root`` already holds a checkpoint (a new run would destroy the earlier one), a
            value of the old boolean form, or a ``PATH`` that is not a folder.
    """
    if resume in ("", "none"):
        found = latest_checkpoint(root)
        if found is not None:
            raise ConfigError(
                f"{Path(root).parent} already holds a training run ({found.name}); continue it with "
                "train.resume=latest (--resume latest) or choose another out folder"
            )
        return None
    if resume.lower() in ("true", "false", "yes", "no"):
        raise ConfigError(f"key 'train.resume': {resume!r}; use one of {RESUME_CHOICES}")
    if resume == "latest":
        found = latest_checkpoint(root)
        if found is None:
            log.info("resume=latest: no checkpoint under %s yet, starting from scratch", root)
        return found
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"key 'train.resume': checkpoint folder not found: {path} (use {RESUME_CHOICES})")
    return path


def saved_train_state(checkpoint: str | Path) -> dict[str, Any] | None:
    """The ``train_state.json`` of a checkpoint folder (None for a checkpoint written without one)."""
    path = Path(checkpoint) / TRAIN_STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def save_checkpoint(
    accelerator: Any, root: str | Path, step: int, keep: int, train_state: dict[str, Any] | None = None
) -> Path:
    """``accelerator.save_state`` into ``root/step_<step>`` atomically (with ``train_state`` as
    ``train_state.json``); keep the ``keep`` newest (0 = all).

    Checkpoints of later steps (an earlier run into the same folder) are removed, so ``resume=latest`` always
    continues this run.
    """
    root = Path(root)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"
    if accelerator.is_main_process:
        for stale in root.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if train_state is not None:
            (tmp / TRAIN_STATE_FILE).write_text(json.dumps(train_state, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for later, stale in checkpoint_dirs(root):
            if later > step:  # left by an earlier run into the same folder: this run supersedes it
                shutil.rmtree(stale, ignore_errors=True)
        if keep > 0:
            for _, old in checkpoint_dirs(root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
