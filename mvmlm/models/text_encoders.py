"""Frozen Hugging Face text encoder (default Bio_ClinicalBERT) and an on-disk cache of its hidden states.

The encoder is frozen, so its output for a report never changes: :class:`TextFeatureCache` encodes each unique
report once and reuses the stored hidden states across batches, epochs and runs. A cache hit does not even load
the model. Offline clusters: pre-download the model (``huggingface-cli download <model> --revision <rev>``) and
set ``HF_HUB_OFFLINE=1``, or point ``model`` at a local directory written by ``save_pretrained``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mvmlm.checkpoint import atomic_path
from mvmlm.errors import InputError
from mvmlm.models.configs import DEFAULT_TEXT_MODEL, DEFAULT_TEXT_REVISION

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "DEFAULT_TEXT_REVISION",
    "TextModelUnavailableError",
    "FrozenTextEncoder",
    "TextFeatureCache",
    "text_hash",
]


class TextModelUnavailableError(OSError, InputError):
    """The text model's files are neither reachable nor in the local cache."""


def text_hash(text: str) -> str:
    """The cache key of one report: sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch dtype {name!r}; use float32, bfloat16 or float16")
    return dtype


def _directory_fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _is_path(name: str) -> bool:
    """Whether a model name can only be a folder (a hub id is ``name`` or ``owner/name``)."""
    return Path(name).is_absolute() or name.startswith(("./", "../", "~")) or name.count("/") > 1


class FrozenTextEncoder:
    """A frozen Hugging Face encoder: texts -> last hidden states + attention mask, no gradients.

    Deliberately not an ``nn.Module``: its weights belong to the hub snapshot, not to MV-CLIP checkpoints, and
    DDP never sees them. The model is loaded on first use and follows the device it is asked to encode on.

    Args:
        model: hub name or local directory.
        revision: hub commit (ignored for a local directory).
        max_length: tokens per text after truncation.
        dtype: torch dtype name of the weights (``float32``, ``bfloat16``, ``float16``).
        local_files_only: never touch the network (also implied by ``HF_HUB_OFFLINE=1``).
    """

    def __init__(
        self,
        model: str = DEFAULT_TEXT_MODEL,
        revision: str | None = DEFAULT_TEXT_REVISION,
        max_length: int = 256,
        dtype: str = "float32",
        local_files_only: bool = False,
    ) -> None:
        self.model_name = model
        self.is_local = Path(model).expanduser().is_dir()
        self.revision = None if self.is_local else revision
        self.max_length = max_length
        self.dtype = _dtype(dtype)
        self.local_files_only = local_files_only
        self._tokenizer: Any = None
        self._model: Any = None
        self._fingerprint: str | None = None

    def _unavailable(self, exc: Exception) -> TextModelUnavailableError:
        """One line: a local directory that is missing or unreadable is named as such; a hub model gets the
        pre-download hint."""
        reason = " ".join(str(exc).split())
        if self.is_local:
            return TextModelUnavailableError(f"text model directory {self.model_name} could not be loaded: {reason}")
        if _is_path(self.model_name):
            return TextModelUnavailableError(
                f"text model directory not found: {self.model_name} (model.text.model takes a local directory written "
                f"by save_pretrained or a hub id such as {DEFAULT_TEXT_MODEL})"
            )
        rev = f" --revision {self.revision}" if self.revision else ""
        return TextModelUnavailableError(
            f"text model {self.model_name!r} (revision {self.revision or 'main'}) could not be loaded: {reason}. "
            f"Pre-download it on a machine with internet: `huggingface-cli download {self.model_name}{rev}`, then "
            f"run with HF_HUB_OFFLINE=1; or set the text model to a local directory written by save_pretrained."
        )

    def _pretrained_kwargs(self) -> dict[str, Any]:
        return {"revision": self.revision, "local_files_only": self.local_files_only}

    @property
    def fingerprint(self) -> str:
        """What identifies the weights: ``name@revision`` for hub models, a content hash for local directories."""
        if self._fingerprint is None:
            path = Path(self.model_name).expanduser()
            self._fingerprint = (
                f"local:{_directory_fingerprint(path)}" if self.is_local else f"{self.model_name}@{self.revision}"
            )
        return self._fingerprint

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states (reads only the model's config)."""
        from transformers import AutoConfig

        if self._model is not None:
            return int(self._model.config.hidden_size)
        try:
            return int(AutoConfig.from_pretrained(self.model_name, **self._pretrained_kwargs()).hidden_size)
        except (OSError, ValueError) as exc:
            raise self._unavailable(exc) from exc

    def load(self) -> None:
        """Load tokenizer and weights (once); eval mode, gradients off."""
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_name, **self._pretrained_kwargs())
            model = AutoModel.from_pretrained(self.model_name, dtype=self.dtype, **self._pretrained_kwargs())
        except (OSError, ValueError) as exc:
            raise self._unavailable(exc) from exc
        self._model = model.eval().requires_grad_(False)

    def encode(self, texts: Sequence[str], device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """Encode ``texts`` on ``device`` (default: where the model is).

        Returns:
            ``hidden (B, L, H)`` float32 last hidden states and ``mask (B, L)`` bool (True = real token), where
            ``L`` is the longest tokenised text of the batch, at most ``max_length``.
        """
        self.load()
        if device is not None and self._model.device != torch.device(device):
            self._model.to(device)
        batch = self._tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self._model.device)
        with torch.no_grad():
            hidden = self._model(**batch).last_hidden_state
        return hidden.float(), batch["attention_mask"].bool()


class TextFeatureCache:
    """Hidden states of a :class:`FrozenTextEncoder`, stored once per unique text under ``root``.

    Layout: ``root/<key>/key.json`` (what the key stands for) and ``shard-<uuid>.safetensors`` files, each holding
    the real tokens of a batch of texts (``hidden (T, H)``, ``offsets (n + 1,)``) and the texts' sha256 in its
    metadata. The key covers the model, its revision (or the local directory's content hash), ``max_length`` and
    the storage dtype. Shards are written atomically under unique names, so several processes can fill one cache.
    Values come back through the storage dtype whether they were cached or just encoded.
    """

    def __init__(self, root: str | Path, encoder: FrozenTextEncoder, store_dtype: str = "float16") -> None:
        self.encoder = encoder
        self.store_dtype = _dtype(store_dtype)
        key = {
            "model": encoder.model_name if not encoder.is_local else "local",
            "weights": encoder.fingerprint,
            "max_length": encoder.max_length,
            "store_dtype": store_dtype,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.directory = Path(root) / digest
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.directory / "key.json").is_file():
            with atomic_path(self.directory / "key.json") as tmp:
                tmp.write_text(json.dumps(key, indent=1))
        self._index: dict[str, tuple[Path, int]] = {}
        self._seen: set[Path] = set()
        self._scan()

    def __len__(self) -> int:
        return len(self._index)

    def _scan(self) -> None:
        """Index shards written since the last scan (by this or another process)."""
        from safetensors import safe_open

        for path in sorted(self.directory.glob("shard-*.safetensors")):
            if path in self._seen:
                continue
            with safe_open(str(path), framework="pt") as handle:
                hashes = json.loads(handle.metadata()["hashes"])
            for i, digest in enumerate(hashes):
                self._index.setdefault(digest, (path, i))
            self._seen.add(path)

    def _write_shard(self, hashes: list[str], hidden: Tensor, mask: Tensor) -> None:
        from safetensors.torch import save_file

        rows = [h[m] for h, m in zip(hidden.to(self.store_dtype).cpu(), mask.cpu(), strict=True)]
        offsets = torch.tensor([0] + [len(r) for r in rows]).cumsum(0)
        path = self.directory / f"shard-{uuid.uuid4().hex}.safetensors"
        with atomic_path(path) as tmp:
            save_file(
                {"hidden": torch.cat(rows), "offsets": offsets}, str(tmp), metadata={"hashes": json.dumps(hashes)}
            )
        self._seen.add(path)
        for i, digest in enumerate(hashes):
            self._index.setdefault(digest, (path, i))

    def ensure(self, texts: Sequence[str], batch_size: int = 64, device: torch.device | str | None = None) -> int:
        """Encode (on ``device``) and store every text of ``texts`` not cached yet; returns how many were encoded."""
        wanted = {text_hash(t): t for t in texts}
        missing = [d for d in wanted if d not in self._index]
        if missing:
            self._scan()
            missing = [d for d in missing if d not in self._index]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            hidden, mask = self.encoder.encode([wanted[d] for d in chunk], device)
            self._write_shard(chunk, hidden, mask)
        return len(missing)

    def __call__(
        self, texts: Sequence[str], batch_size: int = 64, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """Hidden states of ``texts`` (missing ones encoded on ``device``): ``hidden (B, L, H)`` float32 on the CPU,
        ``mask (B, L)``.

        Real tokens come first in each row, padding after (the token transformer does not depend on positions).
        """
        from safetensors import safe_open

        self.ensure(texts, batch_size, device)
        hashes = [text_hash(t) for t in texts]
        by_shard: dict[Path, list[int]] = {}
        for digest in set(hashes):
            path, i = self._index[digest]
            by_shard.setdefault(path, []).append(i)
        rows: dict[tuple[Path, int], Tensor] = {}
        for path, indices in by_shard.items():
            with safe_open(str(path), framework="pt") as handle:
                offsets = handle.get_tensor("offsets")
                hidden = handle.get_slice("hidden")
                for i in indices:
                    rows[path, i] = hidden[int(offsets[i]) : int(offsets[i + 1])]
        sequences = [rows[self._index[d]] for d in hashes]
        lengths = torch.tensor([len(s) for s in sequences])
        padded = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True).float()
        mask = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
        return padded, mask
