"""Resumable sweeps: each finished unit of a long command (one fine-tuning, one fusion) leaves a record.

``<run>/finished/<name>.json`` holds the unit's result and a key: a hash of every setting that shapes it. With
``resume`` on, a rerun into the same run directory reuses each record whose key still matches and computes only the
rest; a record written with other settings is logged and computed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from mvmlm.rundir import RunDir

__all__ = [
    "FINISHED_DIR",
    "UNIT_SETTINGS",
    "UNSHAPING",
    "shaping_settings",
    "file_digest",
    "settings_key",
    "claim_unit",
    "unit_matches",
    "launch_processes",
    "FinishedRuns",
]

log = logging.getLogger(__name__)

FINISHED_DIR = "finished"
UNIT_SETTINGS = "settings.json"  # in a unit's folder: the key of the settings its training state was written with
#: config keys (per section; "" = top level) that never change a result: where it goes, how fast, how it is shown
UNSHAPING: dict[str, tuple[str, ...]] = {
    "": ("out",),
    "data": ("num_workers",),
    "train": ("resume", "progress", "log_every", "trackers", "save_every", "keep_checkpoints"),
}


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes: identifies an input by its content, wherever it lies."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shaping_settings(config: dict[str, Any], extra: dict[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """``config`` (a resolved config as a dict) without :data:`UNSHAPING` and a command's ``extra`` unshaping keys
    (same layout): what a settings key of a unit's result is made of. Sections absent from ``config`` are skipped."""
    settings = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for table in (UNSHAPING, extra or {}):
        for section, keys in table.items():
            node = settings.get(section) if section else settings
            for key in keys if isinstance(node, dict) else ():
                node.pop(key, None)
    return settings


def settings_key(settings: dict[str, Any]) -> str:
    """A short stable hash of ``settings`` (JSON with sorted keys; other objects by their ``str``)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def claim_unit(workdir: str | Path, settings: dict[str, Any], *, main_process: bool = True) -> bool:
    """Make ``workdir`` the folder of a unit trained with ``settings`` (call before its Engine is built): a folder
    left by a unit trained with other settings (or before settings were recorded) is removed, so its training state
    is never continued; then the settings' key is recorded there.

    Returns:
        Whether ``workdir`` already held this unit with the same settings (its state may be continued).
    """
    workdir = Path(workdir)
    same = unit_matches(workdir, settings)
    if main_process and not same:
        if workdir.exists():
            log.warning("%s was trained with other settings; training it again", workdir)
            shutil.rmtree(workdir)
        RunDir(workdir).write_json(UNIT_SETTINGS, {"key": settings_key(settings), "settings": settings})
    return same


def unit_matches(workdir: str | Path, settings: dict[str, Any]) -> bool:
    """Whether ``workdir`` records a unit trained with ``settings`` (read only; :func:`claim_unit` also claims)."""
    stamp = Path(workdir) / UNIT_SETTINGS
    return stamp.is_file() and json.loads(stamp.read_text())["key"] == settings_key(settings)


def launch_processes() -> int:
    """Processes of the current launch (``WORLD_SIZE``; 1 outside ``accelerate launch`` / torchrun): part of a unit's
    settings, since batch sizes are per process."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class FinishedRuns:
    """The finished units of a sweep in ``run``; reads only when ``resume``, writes only on the main process."""

    def __init__(self, run: RunDir, resume: bool, main_process: bool = True) -> None:
        self.run, self.resume, self.main_process = run, resume, main_process
        self.reused = 0

    def get(self, name: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The result recorded for ``name`` with these ``settings`` (None when not resuming, absent or stale)."""
        path = self.run.file(f"{FINISHED_DIR}/{name}.json")
        if not self.resume or not path.is_file():
            return None
        record = json.loads(path.read_text())
        if record.get("key") != settings_key(settings):
            log.warning("%s was written with other settings; computing it again", path)
            return None
        self.reused += 1
        return record["result"]

    def put(self, name: str, settings: dict[str, Any], result: dict[str, Any]) -> None:
        """Record ``result`` (JSON-serialisable) for ``name`` atomically."""
        if self.main_process:
            self.run.write_json(f"{FINISHED_DIR}/{name}.json", {"key": settings_key(settings), "result": result})

    def log_reused(self) -> None:
        if self.reused:
            log.info("reused %d finished run(s) from %s", self.reused, self.run.file(FINISHED_DIR))
