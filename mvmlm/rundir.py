"""Run directories: every command writes its resolved config, provenance, metrics and logs into one folder."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mvmlm.config import ConfigError, config_to_yaml
from mvmlm.errors import RunFinished

__all__ = ["RunDir", "TRAINING_STATE", "confirm_runs", "git_commit", "move_aside", "overwrite_run", "package_versions"]

log = logging.getLogger(__name__)

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


def _occupied(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def move_aside(out: str | Path) -> Path | None:
    """Move ``out`` (a non-empty folder or a file) to ``<out>.old-<time>`` beside it; nothing is deleted. Returns
    where it went (None when there was nothing to move)."""
    out = Path(out)
    if not _occupied(out):
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target, n = out.with_name(f"{out.name}.old-{stamp}"), 0
    while target.exists():
        n += 1
        target = out.with_name(f"{out.name}.old-{stamp}-{n}")
    _detach_run_logs()  # an earlier run of this process logging into out is over
    out.rename(target)
    log.warning("--overwrite: moved the earlier %s aside to %s (nothing was deleted)", out, target)
    return target


def overwrite_run(cfg: Any, wait_s: float = 600.0) -> Path | None:
    """``--overwrite``: a new run into ``cfg.out`` in place of what is there, which is moved aside (:func:`move_aside`).

    In a distributed launch only the first process (``RANK`` 0) moves it; the others wait (up to ``wait_s``) until
    it has, since none can write before all have started.

    Raises:
        ConfigError: together with ``train.resume`` continuing a run (the two contradict each other); an empty ``out``
            or one holding the current directory.
    """
    resume = getattr(getattr(cfg, "train", None), "resume", "none")
    if resume not in ("", "none"):
        raise ConfigError(f"--overwrite starts a new run and cannot continue one (train.resume={resume}); drop one")
    if not cfg.out:
        raise ConfigError("--overwrite: key 'out' is empty; name the folder to start afresh in")
    out = Path(cfg.out)
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise ConfigError(f"--overwrite: out={cfg.out} holds the current directory; it is not moved aside")
    if int(os.environ.get("RANK", "0")) == 0:
        return move_aside(out)
    deadline = time.monotonic() + wait_s
    while _occupied(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    return None


def _same_settings(cfg: Any, path: Path) -> bool:
    """Whether ``cfg`` equals the config recorded at ``path``, apart from how the run was started (train.resume)."""
    import yaml

    if not path.is_file():
        return False

    def settings(tree: dict) -> dict:
        train = {k: v for k, v in (tree.get("train") or {}).items() if k != "resume"}
        return {**tree, "train": train}

    return settings(yaml.safe_load(config_to_yaml(cfg))) == settings(yaml.safe_load(path.read_text()))


class _RunLog(logging.FileHandler):
    """``log.txt`` of a run; while ``held`` its records wait in memory (nothing is written until :meth:`write_held`)."""

    def __init__(self, path: Path, held: bool) -> None:
        super().__init__(path, delay=held)  # a held log opens its file only when its records are written
        self.held: list[logging.LogRecord] | None = [] if held else None

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is not None:
            self.held.append(record)
        else:
            super().emit(record)

    def write_held(self) -> None:
        held, self.held = self.held or [], None
        for record in held:
            super().emit(record)


def _detach_run_logs() -> None:
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RunLog)]:
        root.removeHandler(old)
        old.close()


#: continued runs whose records (config, provenance, log lines) wait until the resume is confirmed, by path
_PENDING: dict[Path, RunDir] = {}


def confirm_runs(workdir: str | Path) -> None:
    """Write the held records of the continued runs at ``workdir`` or above it: the training state there was accepted
    (:class:`~mvmlm.training.Engine` calls this once it has checked the checkpoint's layout)."""
    where = Path(workdir).resolve()
    for path in [p for p in _PENDING if p == where or p in where.parents]:
        _PENDING[path].confirm()


@dataclass
class RunDir:
    """A run directory holding ``config.yaml``, ``provenance.json``, ``metrics.json`` and ``log.txt``."""

    path: Path
    #: a continued run's own records, written by :meth:`confirm` (``{relative name: text}``)
    held: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, out: str | Path, cfg: Any, *, main_process: bool = True, resume: str | None = None) -> RunDir:
        """Create (or reuse) ``out`` and record the resolved config and provenance in it.

        Only the main process writes; other processes of a distributed run get the same object.

        Args:
            resume: a trainer's ``train.resume``. With ``none``, a folder that already holds a run's training state
                is refused (nothing is written), so a rerun never destroys an earlier run. When continuing a run
                (``latest`` or a path), its own ``config.yaml`` / ``provenance.json`` stay as they are and this
                invocation's go to ``resumes/<time>/``, written (with this invocation's lines of ``log.txt``) only
                once the resume is confirmed (:func:`confirm_runs`, or a first write here), so a refused resume
                touches nothing; a run that finished (it wrote ``metrics.json``) raises
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
        _PENDING.clear()  # one run at a time per process (like its log): an earlier refused run's records are dropped
        if main_process:
            provenance = {
                "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "host": platform.node(),
                "git_commit": git_commit(),
                "packages": package_versions(),
            }
            records = {"config.yaml": config_to_yaml(cfg), "provenance.json": json.dumps(provenance, indent=2) + "\n"}
            if continuing and run.file("config.yaml").is_file():
                folder = f"resumes/{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
                run.held = {f"{folder}/{name}": text for name, text in records.items()}
                _PENDING[run.path.resolve()] = run
            else:
                run.path.mkdir(parents=True, exist_ok=True)
                for name, text in records.items():
                    run.write_text(name, text)
            run.attach_log(held=bool(run.held))
        return run

    def confirm(self) -> None:
        """Write a continued run's held records (its ``resumes/<time>/`` config and provenance, its log lines)."""
        _PENDING.pop(self.path.resolve(), None)
        held, self.held = self.held, {}
        for name, text in held.items():
            self.write_text(name, text)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, _RunLog) and handler.baseFilename == os.path.abspath(self.file("log.txt")):
                handler.write_held()

    def file(self, name: str) -> Path:
        """Path of ``name`` inside the run directory."""
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        """Write ``text`` atomically (temporary file + rename) and return its path (a continued run's held records
        first)."""
        if self.held:
            self.confirm()
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

    def attach_log(self, level: int = logging.INFO, *, held: bool = False) -> None:
        """Send log records (of every package, at ``level`` and above) to ``log.txt`` here (``held``: kept in memory
        until :meth:`confirm`); a previous run directory's log file is detached."""
        handler = _RunLog(self.file("log.txt"), held)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(level)
        _detach_run_logs()
        root = logging.getLogger()
        root.setLevel(min(root.level, level))
        root.addHandler(handler)
