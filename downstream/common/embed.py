"""Image and breast embeddings from an MV-MLM checkpoint, a timm encoder or a random init, cached on disk.

An encoder is named by a small config, so a baseline is one key away::

    EncoderConfig(source="mvclip", checkpoint="runs/pretrain/model")                 # the pretrained image tower
    EncoderConfig(source="mvclip", checkpoint="runs/pretrain/model", init="random")  # same architecture, random init
    EncoderConfig(source="timm", name="resnet34")                                    # ImageNet weights (timm)
    EncoderConfig(source="timm", name="resnet34", init="random")                     # random init

``mvclip`` gives the image tower's embedding (token transformer + projection, before L2 normalisation); ``timm``
gives the global average pool of the encoder's last feature map. Image embeddings are cached under
``<cache>/<key>/`` where the key hashes the encoder (checkpoint file contents, or name + init + seed + timm
version), the images (cache paths, which carry the preprocessing parameters, and file sizes) and the code version;
breast embeddings pool the present views (mean or max) from the cached image embeddings.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from downstream.common.config import EmbedConfig, EncoderConfig
from mvmlm.checkpoint import CONFIG_NAME, WEIGHTS_NAME, atomic_path
from mvmlm.config import ConfigError
from mvmlm.data.exams import BREAST_SLOTS
from mvmlm.data.preprocess import NotCachedError, load_cached
from mvmlm.inference.views import resolve_device
from mvmlm.models.image_encoders import ImageEncoder, create_image_encoder, image_encoder_accepts
from mvmlm.models.mvclip import ImageTower, load_image_tower
from mvmlm.registry import Registry
from mvmlm.sweep import file_digest

__all__ = [
    "EncoderConfig",
    "EmbedConfig",
    "Backbone",
    "register_source",
    "build_backbone",
    "build_feature_encoder",
    "encoder_fingerprint",
    "Embeddings",
    "image_embeddings",
    "pool_views",
    "breast_embeddings",
]

log = logging.getLogger(__name__)

#: bump when embedding code changes its output, so old cache entries are not reused
EMBED_VERSION = 1
EMBEDDINGS_FILE = "embeddings.safetensors"
INITS = ("pretrained", "random")
FEATURES = ("embedding", "encoder")  # what an MV-MLM tower hands a probe: its projected output or its pooled CNN map
POOLS = ("mean", "max")


class Backbone(nn.Module):
    """Images ``(B, in_chans, H, W)`` -> embeddings ``(B, dim)``; what probes embed and fine-tuning trains."""

    def __init__(self, module: nn.Module, dim: int, pool: bool) -> None:
        super().__init__()
        self.module = module
        self.dim = dim
        self.pool = pool  # global average pool of a feature map (timm encoders)

    def forward(self, images: Tensor) -> Tensor:
        out = self.module(images)
        return out.mean(dim=(2, 3)) if self.pool else out


@dataclass(frozen=True)
class EncoderSource:
    """How a source builds its backbone and identifies the backbone's weights (for cache and resume keys)."""

    build: Callable[[EncoderConfig], Backbone]
    fingerprint: Callable[[EncoderConfig], dict]


SOURCES: Registry[EncoderSource] = Registry("encoder source")


def register_source(
    name: str, build: Callable[[EncoderConfig], Backbone], fingerprint: Callable[[EncoderConfig], dict]
) -> None:
    """Register an encoder source: ``build(cfg)`` makes the backbone, ``fingerprint(cfg)`` identifies its weights."""
    SOURCES.add(name, EncoderSource(build, fingerprint))


def _check(cfg: EncoderConfig) -> None:
    if cfg.source not in SOURCES:
        raise ConfigError(f"unknown encoder source {cfg.source!r}; known: {', '.join(SOURCES.names())}")
    if cfg.init not in INITS:
        raise ConfigError(f"encoder init must be one of {INITS}, got {cfg.init!r}")
    if cfg.features not in FEATURES:
        raise ConfigError(f"encoder features must be one of {FEATURES}, got {cfg.features!r}")


def build_backbone(cfg: EncoderConfig) -> Backbone:
    """The encoder ``cfg`` names, in eval mode on the CPU (random inits are seeded by ``cfg.seed``)."""
    _check(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return SOURCES.get(cfg.source).build(cfg).eval()


def build_feature_encoder(cfg: EncoderConfig) -> ImageEncoder:
    """The feature-map encoder (``(B, C, h, w)`` out) of the backbone ``cfg`` names, with the weights its ``init``
    names: an MV-MLM tower's encoder (pretrained or a seeded random init of its architecture) or a registered
    encoder (ImageNet / ``pretrained_path`` weights or random). Co-attention and any model that needs the map
    rather than the pooled embedding builds its encoder here."""
    module = build_backbone(cfg).module
    return module.encoder if isinstance(module, ImageTower) else module


def encoder_fingerprint(cfg: EncoderConfig) -> dict:
    """What identifies the encoder's weights (part of the embedding cache key)."""
    _check(cfg)
    return {"source": cfg.source, "init": cfg.init, **SOURCES.get(cfg.source).fingerprint(cfg)}


def _checkpoint_dir(cfg: EncoderConfig) -> Path:
    if not cfg.checkpoint:
        raise ConfigError("encoder source 'mvclip' needs checkpoint=<directory with model.safetensors + config.yaml>")
    directory = Path(cfg.checkpoint)
    if not (directory / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in checkpoint directory {directory}")
    return directory


def _mvclip(cfg: EncoderConfig) -> Backbone:
    directory = _checkpoint_dir(cfg)
    tower = load_image_tower(directory, weights=cfg.init == "pretrained")
    if cfg.features == "encoder":  # the image encoder's feature map, globally average-pooled
        return Backbone(tower.encoder, tower.encoder.out_channels, pool=True)
    return Backbone(tower, tower.tokens.proj.out_features, pool=False)


def _mvclip_fingerprint(cfg: EncoderConfig) -> dict:
    directory = _checkpoint_dir(cfg)
    found = {"config": file_digest(directory / CONFIG_NAME)}
    if cfg.features != "embedding":  # the projected embedding's keys stay those of earlier versions
        found["features"] = cfg.features
    if cfg.init == "pretrained":
        found["weights"] = file_digest(directory / WEIGHTS_NAME)
    else:
        found["seed"] = cfg.seed
    return found


def _timm_kwargs(cfg: EncoderConfig) -> dict[str, Any]:
    """The encoder's arguments: ``pretrained*`` ones (e.g. ``pretrained_path``, ``pretrained_prefix``) only with
    ``init: pretrained``, plus ``pretrained=True`` for encoders that download weights (timm CNNs)."""
    if cfg.init != "pretrained":
        return {k: v for k, v in cfg.kwargs.items() if not k.startswith("pretrained")}
    kwargs = {k: v for k, v in cfg.kwargs.items() if k != "pretrained"}
    if image_encoder_accepts(cfg.name, "pretrained"):
        kwargs["pretrained"] = True
    return kwargs


def _timm(cfg: EncoderConfig) -> Backbone:
    encoder = create_image_encoder(cfg.name, **_timm_kwargs(cfg))
    return Backbone(encoder, encoder.out_channels, pool=True)


def _timm_fingerprint(cfg: EncoderConfig) -> dict:
    import timm

    found: dict[str, Any] = {"name": cfg.name, "kwargs": _timm_kwargs(cfg), "timm": timm.__version__}
    path = cfg.kwargs.get("pretrained_path")
    if cfg.init == "pretrained" and path:
        found["weights"] = file_digest(Path(path).expanduser())
    if cfg.init == "random":
        found["seed"] = cfg.seed
    return found


register_source("mvclip", _mvclip, _mvclip_fingerprint)
register_source("timm", _timm, _timm_fingerprint)


@dataclass
class Embeddings:
    """Image embeddings: row ``i`` of ``vectors`` belongs to the image cached at ``paths[i]``."""

    paths: list[str]
    vectors: np.ndarray

    def rows(self, paths: Sequence[str]) -> np.ndarray:
        """The embeddings of ``paths``, in that order (KeyError naming the first unknown path)."""
        index = {p: i for i, p in enumerate(self.paths)}
        missing = [p for p in paths if p not in index]
        if missing:
            raise KeyError(f"no embedding for cached image {missing[0]} ({len(missing)} missing)")
        return self.vectors[[index[p] for p in paths]]


class _CachedImages(Dataset):
    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        return torch.from_numpy(load_cached(self.paths[index]))[None]


@torch.no_grad()
def _compute(backbone: Backbone, paths: list[str], cfg: EmbedConfig) -> np.ndarray:
    device = resolve_device(cfg.device)
    backbone = backbone.to(device).eval()
    loader = DataLoader(_CachedImages(paths), batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    out = [backbone(batch.to(device)).float().cpu() for batch in tqdm(loader, desc="embed", unit="batch")]
    return torch.cat(out).numpy()


def _data_fingerprint(paths: list[str]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{Path(path).resolve()}\t{Path(path).stat().st_size}\n".encode())
    return digest.hexdigest()


def image_embeddings(table: pd.DataFrame, encoder: EncoderConfig, cfg: EmbedConfig) -> Embeddings:
    """Embeddings of every image of a preprocessed ``table`` (its ``cache_path`` column), from the cache if there.

    Raises:
        NotCachedError: ``table`` has no ``cache_path`` column.
    """
    from safetensors.numpy import load_file, save_file

    if "cache_path" not in table.columns:
        raise NotCachedError(
            "image table has no cache_path column; embed the table.parquet of a `mvmlm preprocess` run"
        )
    paths = sorted(set(map(str, table["cache_path"])))
    if not cfg.cache:
        return Embeddings(paths, _compute(build_backbone(encoder), paths, cfg))
    key = {"version": EMBED_VERSION, "encoder": encoder_fingerprint(encoder), "images": _data_fingerprint(paths)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    folder = Path(cfg.cache) / digest
    target = folder / EMBEDDINGS_FILE
    if target.is_file():
        log.info("embeddings of %d images from cache %s", len(paths), folder)
        return Embeddings(paths, load_file(str(target))["embeddings"])
    vectors = _compute(build_backbone(encoder), paths, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "key.json") as tmp:
        tmp.write_text(json.dumps({**key, "paths": paths}, indent=1))
    with atomic_path(target) as tmp:
        save_file({"embeddings": np.ascontiguousarray(vectors, dtype=np.float32)}, str(tmp))
    log.info("embedded %d images with %s into %s", len(paths), encoder.source, folder)
    return Embeddings(paths, vectors.astype(np.float32))


def pool_views(views: Tensor, present: Tensor, pool: str) -> Tensor:
    """``(n, V, D)`` view embeddings and ``(n, V)`` presence -> ``(n, D)`` mean or max over the present views."""
    if pool not in POOLS:
        raise ValueError(f"view pooling must be one of {POOLS}, got {pool!r}")
    present = present.bool()
    if not present.any(dim=1).all():
        raise ValueError(f"{int((~present.any(dim=1)).sum())} row(s) have no present view")
    if pool == "mean":
        weights = present.unsqueeze(-1).to(views.dtype)
        return (views * weights).sum(dim=1) / weights.sum(dim=1)
    return views.masked_fill(~present.unsqueeze(-1), float("-inf")).amax(dim=1)


def breast_embeddings(breasts: pd.DataFrame, embeddings: Embeddings, pool: str = "mean") -> np.ndarray:
    """``(n_breasts, D)``: the views of each breast (``CC``/``MLO`` slots of ``build_breasts``) pooled."""
    present = np.stack([breasts[f"{slot}_present"].to_numpy(dtype=bool) for slot in BREAST_SLOTS], axis=1)
    dim = embeddings.vectors.shape[1]
    views = np.zeros((len(breasts), len(BREAST_SLOTS), dim), dtype=np.float32)
    for v, slot in enumerate(BREAST_SLOTS):
        rows = present[:, v]
        views[rows, v] = embeddings.rows([str(p) for p in breasts.loc[rows, f"{slot}_cache_path"]])
    return pool_views(torch.from_numpy(views), torch.from_numpy(present), pool).numpy()
