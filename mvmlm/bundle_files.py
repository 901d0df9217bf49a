"""A bundle directory's files on disk: the manifest (format version, kind, sha256 of every file but the card), its
check, and where a bundle lies (a directory, or the Hub cache's snapshot of a repo id). Used by :mod:`mvmlm.bundle`;
imports neither torch nor an application package."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from mvmlm.errors import InputError
from mvmlm.sweep import file_digest

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "CARD_NAME",
    "BundleError",
    "hashed_files",
    "read_json",
    "read_manifest",
    "verify_bundle",
    "resolve_bundle",
]

#: bump when a bundle written now cannot be read by the code of an earlier version
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
CARD_NAME = "README.md"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # org/name, as the Hub spells it
_UNHASHED = {MANIFEST_NAME, CARD_NAME}  # the card may be edited on the Hub; the facts it shows are in config.json


class BundleError(ValueError, InputError):
    """A bundle directory cannot be used: a file missing or altered, an unknown kind, a newer format."""


def hashed_files(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``directory`` but hidden ones, the manifest and the card."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))
    return {p.relative_to(directory).as_posix(): file_digest(p) for p in files if p.name not in _UNHASHED}


def read_json(path: Path) -> dict[str, Any]:
    """A bundle's JSON file; missing or invalid: a :class:`BundleError` naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: missing; not an mvmlm model bundle (or an incomplete copy of one)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """``manifest.json`` of a bundle, its format version checked."""
    path = Path(directory) / MANIFEST_NAME
    manifest = read_json(path)
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format {version!r}, this mvmlm reads format {FORMAT_VERSION} and older; upgrade mvmlm"
        )
    return manifest


def verify_bundle(directory: str | Path) -> dict[str, Any]:
    """The manifest of ``directory`` after checking every file it lists against its sha256.

    Raises:
        BundleError: naming the first missing or altered file, or a newer format version.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    for name, expected in manifest.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle (listed in {MANIFEST_NAME})")
        if file_digest(path) != expected:
            raise BundleError(f"{path}: altered (its sha256 differs from the one in {MANIFEST_NAME})")
    return manifest


def resolve_bundle(
    dir_or_repo_id: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """A local bundle directory: ``dir_or_repo_id`` itself, or the Hub cache's snapshot of that repo id (downloaded
    unless cached; with ``HF_HUB_OFFLINE=1`` only the cache is read)."""
    if os.path.isdir(dir_or_repo_id):
        return Path(dir_or_repo_id)
    if Path(dir_or_repo_id).exists() or not _REPO_ID.fullmatch(str(dir_or_repo_id)):
        raise BundleError(f"{dir_or_repo_id}: neither a bundle directory nor a Hub repo id (org/name)")
    try:
        return Path(
            snapshot_download(
                repo_id=str(dir_or_repo_id),
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                local_files_only=local_files_only,
                token=token,
            )
        )
    except (HfHubHTTPError, LocalEntryNotFoundError) as error:
        raise BundleError(f"{dir_or_repo_id}: not on the Hub nor in its cache ({type(error).__name__})") from error
