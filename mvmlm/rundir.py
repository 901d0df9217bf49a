"""Run directories: every command writes its resolved config, provenance, metrics and logs into one folder."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mvmlm.config import ConfigError, config_to_yaml
from mvmlm.errors import RunFinished

__all__ = ["RunDir", "TRAINING_STATE", "git_commit", "package_versions"]

#: what a trainer leaves in its run directory; a new run (resume none) into a folder holding one is refused
TRAINING_STATE = ("checkpoints", "units", "finished", "train_log.jsonl")

TRACKED_PACKAGES = (
    "mvmlm",
    "torch",
    "torchvision",
    "timm",
    "open_clip_torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "datasets",
    "pydicom",
    "pylibjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-libjpeg",
    "pyjpegls",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "scikit-survival",
    "omegaconf",
    "mamba-ssm",
    "vllm",
)


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (None where a package is not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(path: str | Path | None = None) -> str | None:
    """The git commit of the source tree holding ``path`` (default: this package), with ``+dirty`` if modified."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def _same_settings(cfg: Any, path: Path) -> bool:
    """Whether ``cfg`` equals the config recorded at ``path``, apart from how the run was started (train.resume)."""
    import yaml

    if not path.is_file():
        return False

    def settings(tree: dict) -> dict:
        train = {k: v for k, v in (tree.get("train") or {}).items() if k != "resume"}
        return {**tree, "train": train}

    return settings(yaml.safe_load(config_to_yaml(cfg))) == settings(yaml.safe_load(path.read_text()))


@dataclass
class RunDir:
    """A run directory holding ``config.yaml``, ``provenance.json``, ``metrics.json`` and ``log.txt``."""

    path: Path

    @classmethod
    def create(cls, out: str | Path, cfg: Any, *, main_process: bool = True, resume: str | None = None) -> RunDir:
        """Create (or reuse) ``out`` and record the resolved config and provenance in it.

        Only the main process writes; other processes of a distributed run get the same object.

        Args:
            resume: a trainer's ``train.resume``. With ``none``, a folder that already holds a run's training state
                is refused (nothing is written), so a rerun never destroys an earlier run. When continuing a run
                (``latest`` or a path), its own ``config.yaml`` / ``provenance.json`` stay as they are and this
                invocation's go to ``resumes/<time>/``; a run that finished (it wrote ``metrics.json``) raises
                :class:`~mvmlm.errors.RunFinished` and is left untouched.
        """
        run = cls(Path(out))
        continuing = resume not in (None, "", "none")
        if resume in ("", "none"):
            held = [name for name in TRAINING_STATE if run.file(name).exists()]
            if held:
                raise ConfigError(
                    f"{run.path} already holds a training run ({', '.join(held)}); continue it with "
                    "train.resume=latest (--resume latest) or choose another out folder"
                )
        if continuing and run.file("metrics.json").is_file() and _same_settings(cfg, run.file("config.yaml")):
            raise RunFinished(f"{run.path} holds a finished run with these settings (metrics.json); nothing to do")
        if main_process:
            run.path.mkdir(parents=True, exist_ok=True)
            record = run
            if continuing and run.file("config.yaml").is_file():
                record = cls(run.file(f"resumes/{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"))
            record.write_text("config.yaml", config_to_yaml(cfg))
            provenance = {
                "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "host": platform.node(),
                "git_commit": git_commit(),
                "packages": package_versions(),
            }
            record.write_json("provenance.json", provenance)
            run.attach_log()
        return run

    def file(self, name: str) -> Path:
        """Path of ``name`` inside the run directory."""
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        """Write ``text`` atomically (temporary file + rename) and return its path."""
        target = self.file(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, target)
        return target

    def write_json(self, name: str, data: Any) -> Path:
        """Write ``data`` as indented JSON atomically."""
        return self.write_text(name, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")

    def write_metrics(self, metrics: dict) -> Path:
        """Write ``metrics.json``."""
        return self.write_json("metrics.json", metrics)

    def attach_log(self, level: int = logging.INFO) -> None:
        """Send log records (of every package, at ``level`` and above) to ``log.txt`` here; a previous run
        directory's log file is detached."""
        handler = logging.FileHandler(self.file("log.txt"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(level)
        handler._mvmlm_run_log = True  # type: ignore[attr-defined]
        root = logging.getLogger()
        for old in [h for h in root.handlers if getattr(h, "_mvmlm_run_log", False)]:
            root.removeHandler(old)
            old.close()
        root.setLevel(min(root.level, level))
        root.addHandler(handler)
