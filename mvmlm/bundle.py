"""Model bundles: one self-contained directory per trained model, saved and loaded with huggingface_hub's
``ModelHubMixin`` conventions (``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``)::

    bundle = FinetunedBundle(model, bundle_config(kind_config, heads, preprocessing, card))
    bundle.save_pretrained("runs/finetune/models/unit")     # model files + config.json + manifest.json + README.md
    model = mvmlm.load_model("runs/finetune/models/unit")   # or a Hub repo id (through the Hub cache)

A bundle directory holds the model's own files (``model.safetensors`` and its ``config.yaml``, or for coxnet plain
arrays in safetensors + JSON; never a pickle), ``config.json`` (format version, ``kind``, the model config, its
heads and class names, the image preprocessing it was trained with, the model card's facts), ``manifest.json``
(format version, kind and the sha256 of every file but the card) and ``README.md`` (the model card, generated).
A missing or altered file, or a newer format version, is refused with one line naming the file (the manifest, its
check and where a bundle lies: :mod:`mvmlm.bundle_files`).

The class of a bundle is found by its ``kind`` through the entry-point group ``mvmlm.models`` (pyproject.toml), so
this core module names no application class. This module imports neither torch nor an application package.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

from huggingface_hub import ModelCard, ModelHubMixin

from mvmlm.bundle_card import ModelCardInfo, format_ci, model_card
from mvmlm.bundle_files import (
    CARD_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    BundleError,
    hashed_files,
    read_json,
    read_manifest,
    resolve_bundle,
    verify_bundle,
)

__all__ = [
    "FORMAT_VERSION",
    "ENTRY_POINT_GROUP",
    "MANIFEST_NAME",
    "CONFIG_JSON",
    "CARD_NAME",
    "BundleError",
    "ModelCardInfo",
    "format_ci",
    "Bundle",
    "bundle_config",
    "preprocessing_of",
    "resolve_bundle",
    "verify_bundle",
    "model_class",
    "load_model",
    "TEXT_ENCODER_DIR",
    "include_text_encoder",
]

ENTRY_POINT_GROUP = "mvmlm.models"
CONFIG_JSON = "config.json"  # huggingface_hub.constants.CONFIG_NAME
TEXT_ENCODER_DIR = "text_encoder"  # a vendored frozen text encoder (--include-text-encoder)


def bundle_config(
    model: Mapping[str, Any],
    heads: Mapping[str, list[str]],
    preprocessing: Mapping[str, Any],
    card: ModelCardInfo | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """What ``config.json`` holds besides the format version and the kind (plain JSON values)."""
    return {
        "model": dict(model),
        "heads": {name: list(classes) for name, classes in heads.items()},
        "preprocessing": dict(preprocessing),
        "card": dataclasses.asdict(card or ModelCardInfo()),
        **extra,
    }


def preprocessing_of(table: str | Path) -> dict[str, Any]:
    """The image preprocessing parameters (:class:`mvmlm.data.preprocess.PreprocessParams`) of the cache a
    ``table.parquet`` came from: read from the cache folder's ``config.yaml`` (written by ``mvmlm preprocess``),
    else recovered from the folder name when its hash matches the default crop settings at that size.

    Raises:
        BundleError: naming the folder, when neither tells the parameters.
    """
    from mvmlm.config import build_config, config_to_dict
    from mvmlm.data.preprocess import PreprocessParams, read_cached_table
    from mvmlm.data.preprocess_command import PreprocessConfig

    table = Path(table)
    folders = [table.parent]
    first = read_cached_table(table)["cache_path"].head(1).tolist()
    if first:
        folders.append(Path(first[0]).parents[3])  # <folder>/images/<dataset>/<patient>/<image>.npy
    names = [f.name for f in dataclasses.fields(PreprocessParams)]
    for folder in folders:
        if (folder / "config.yaml").is_file():
            cfg = build_config(PreprocessConfig, [folder / "config.yaml"])
            params = PreprocessParams(**{name: getattr(cfg, name) for name in names})
            if _names_cache(folder, params):
                return config_to_dict(params)
        height, _, width = folder.name.partition("-")[0].partition("x")
        if height.isdigit() and width.isdigit():
            params = PreprocessParams(height=int(height), width=int(width))
            if _names_cache(folder, params):
                return config_to_dict(params)
    raise BundleError(
        f"{table}: cannot tell the preprocessing of its cache folder {folders[-1]} (no config.yaml of `mvmlm "
        "preprocess` there)"
    )


def _names_cache(folder: Path, params: Any) -> bool:
    """Whether ``folder`` is a cache folder of ``params`` (``<key>`` or ``<key>-<table hash>``)."""
    return folder.name == params.key() or folder.name.startswith(f"{params.key()}-")


def model_class(kind: str) -> type[Bundle]:
    """The bundle class registered for ``kind`` in the entry-point group ``mvmlm.models``."""
    found = {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}
    if kind not in found:
        raise BundleError(f"unknown bundle kind {kind!r}; installed: {', '.join(sorted(found)) or 'none'}")
    cls = found[kind].load()
    if not (isinstance(cls, type) and issubclass(cls, Bundle)) or cls.kind != kind:
        raise TypeError(f"entry point {kind} = {found[kind].value} is not a Bundle of kind {kind!r}")
    return cls


def load_model(dir_or_repo_id: str | Path, **hub_kwargs: Any) -> Bundle:
    """Any mvmlm bundle, from a directory or a Hub repo id; its class is chosen by the ``kind`` it records.

    Args:
        hub_kwargs: ``revision``, ``cache_dir``, ``token``, ``local_files_only``, ``force_download``.
    """
    directory = resolve_bundle(dir_or_repo_id, **hub_kwargs)
    kind = read_manifest(directory).get("kind", "")
    return model_class(kind).from_pretrained(str(directory))


def include_text_encoder(directory: str | Path) -> Path:
    """Vendor the frozen text encoder a bundle references (by name + revision) into ``directory/text_encoder``
    (weights and tokenizer as ``save_pretrained`` writes them) and re-hash the bundle: loading it then never touches
    the Hub, for air-gapped sites. The encoder is read as usual (Hub cache, or downloaded) this once.

    Raises:
        BundleError: a bundle whose model has no frozen text encoder.
    """
    directory = Path(directory)
    bundle = load_model(directory)
    encoder = bundle.frozen_text_encoder()
    if encoder is None:
        raise BundleError(f"{directory}: a {bundle.kind} bundle has no frozen text encoder to include")
    reference = {"model": encoder.model_name, "revision": encoder.revision, "dtype": str(encoder.dtype)}
    bundle.config["text_encoder"] = {"vendored": TEXT_ENCODER_DIR, **reference}
    bundle.save_pretrained(directory)
    return directory / TEXT_ENCODER_DIR


def _write_text_encoder(encoder: Any, target: Path) -> None:
    """The loaded frozen text encoder's weights and tokenizer into ``target`` (unless it was read from there)."""
    if Path(encoder.model_name).resolve() == target.resolve():
        return
    encoder.load()
    encoder._model.save_pretrained(target)  # FrozenTextEncoder keeps the loaded transformers objects privately
    encoder._tokenizer.save_pretrained(target)


class Bundle(ModelHubMixin, library_name="mvmlm", tags=["mammography", "mvmlm"]):
    """A trained model with everything needed to use it on new images. Subclasses set ``kind`` and ``level``
    (``breast``: CC + MLO per item; ``exam``: L-CC, L-MLO, R-CC, R-MLO), write and read their model files
    (:meth:`write_files`, :meth:`read_module`) and score views (:meth:`predict_views`); an image tower can also
    :meth:`embed_images`.

    Args:
        module: the model (an ``nn.Module``, or for coxnet its arrays).
        config: what ``config.json`` holds besides format and kind (:func:`bundle_config`).
    """

    kind: ClassVar[str] = ""
    level: ClassVar[str] = "breast"

    def __init__(self, module: Any, config: dict) -> None:
        self.module = module
        self.config = config

    # ------------------------------------------------------------------ what a kind provides

    def write_files(self, directory: Path) -> None:
        """Write the model's own files (weights and their config) into ``directory``."""
        raise NotImplementedError

    @classmethod
    def read_module(cls, directory: Path, config: dict) -> Any:
        """The model read back from the files :meth:`write_files` wrote (no download, no pickle)."""
        raise NotImplementedError

    #: whether it predicts from lesion crops too (``predict --rois FILE.csv``, :mod:`mvmlm.inference.rois`)
    needs_rois: ClassVar[bool] = False

    def predict_views(self, images: Any, mask: Any, crops: tuple[Any, Any] | None = None) -> dict[str, Any]:
        """``images (B, V, 1, H, W)``, ``mask (B, V)`` (and for :attr:`needs_rois` the lesion ``crops`` as
        ``(images, mask)`` of the same shapes) -> per head class probabilities ``(B, K)`` (breast level) or
        ``(B, 2, K)`` (exam level, sides L, R); further entries (e.g. ``attention (B, V)``) are reported too."""
        raise BundleError(f"a {self.kind} bundle does not predict classes; use embed")

    def prepare_units(self, rows: Any, images: Any, covariates: str = "") -> tuple[Any, list[dict[str, str]]]:
        """Before predicting: the units ``rows`` (``build_breasts`` / ``build_exams`` rows) with what the model needs
        besides the images (e.g. a risk model's covariates, from the canonical ``images`` rows of the input and the
        CSV ``covariates``), without the units it cannot predict, and ``skipped.csv`` rows ``{"path", "reason"}``
        for their files. By default every unit, unchanged."""
        if covariates:
            raise BundleError(f"a {self.kind} bundle takes no covariates file")
        return rows, []

    def unit_columns(self, rows: Any, out: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The output columns of each unit of ``rows`` (one batch) from :meth:`predict_views`'s ``out``, for a bundle
        that writes its own (e.g. a risk model's k-year risks); None: the per-head class probabilities."""
        return None

    #: ``mvmlm predict`` formats besides ``table`` and ``json``: each also writes ``predictions_<format>.csv``
    formats: ClassVar[tuple[str, ...]] = ()

    def format_predictions(self, predictions: Any, fmt: str) -> Any:
        """``predictions`` (a DataFrame) in the layout ``fmt``, one of :attr:`formats`."""
        raise BundleError(f"a {self.kind} bundle has no output format {fmt!r}")

    def frozen_text_encoder(self) -> Any:
        """The frozen text encoder (:class:`~mvmlm.models.text_encoders.FrozenTextEncoder`) the model references by
        name + revision, or None; by default the module's ``text_encoder`` (MV-CLIP)."""
        return getattr(self.module, "text_encoder", None)

    def use_text_encoder(self, encoder: Any) -> None:
        """Encode texts with ``encoder`` from now on (e.g. the bundle's vendored copy)."""
        self.module.text_encoder = encoder

    def unit_inputs(self, rows: Any) -> dict[str, Any]:
        """Inputs besides the views for one batch of units (``rows``: what :meth:`prepare_units` returned, the batch's
        rows) as tensors with one row per unit, given to :meth:`predict_views` by name (e.g. co-attention's metadata
        text states); none by default."""
        return {}

    def embed_images(self, images: Any) -> Any:
        """``(N, 1, H, W)`` -> ``(N, D)`` embeddings of the image tower."""
        raise BundleError(f"a {self.kind} bundle has no image tower to embed with")

    def input_transform(self, image: Any) -> Any:
        """A preprocessed image ``(1, H, W)`` -> the network input (e.g. resized); the identity by default."""
        return image

    # ------------------------------------------------------------------ shared

    @property
    def heads(self) -> dict[str, list[str]]:
        """Head name -> class names, in output order."""
        return self.config.get("heads", {})

    @property
    def preprocessing(self) -> Any:
        """The :class:`~mvmlm.data.preprocess.PreprocessParams` the model was trained with."""
        from mvmlm.data.preprocess import PreprocessParams, RoiParams

        params = dict(self.config["preprocessing"])
        return PreprocessParams(**{**params, "roi": RoiParams(**params.get("roi", {}))})

    @property
    def card(self) -> ModelCardInfo:
        return ModelCardInfo(**self.config.get("card", {}))

    def predict(self, paths: Any, **options: Any) -> Any:
        """Predictions (a DataFrame, one row per breast / exam) for DICOM files, folders or a table; see
        :func:`mvmlm.inference.predict.predict_paths` for ``options``."""
        from mvmlm.inference.predict import predict_paths

        return predict_paths(self, paths, **options).predictions

    def embed(self, paths: Any, **options: Any) -> Any:
        """Per-view and per-breast embeddings (a DataFrame) of DICOM files, folders or a table."""
        from mvmlm.inference.embed import embed_paths

        return embed_paths(self, paths, **options).embeddings

    def explain(self, paths: Any, **options: Any) -> Any:
        """Heatmaps of ``paths`` (files, folders, a table): see :func:`mvmlm.inference.explain.explain_paths`."""
        from mvmlm.inference.explain import explain_paths

        return explain_paths(self, paths, **options)

    def _save_pretrained(self, save_directory: Path) -> None:
        directory = Path(save_directory)
        (directory / CARD_NAME).unlink(missing_ok=True)  # save_pretrained writes a fresh card afterwards
        self.write_files(directory)
        if self.config.get("text_encoder"):
            _write_text_encoder(self.frozen_text_encoder(), directory / TEXT_ENCODER_DIR)
        header = {"format_version": FORMAT_VERSION, "kind": self.kind, "level": self.level}
        (directory / CONFIG_JSON).write_text(json.dumps({**header, **self.config}, indent=2, default=str) + "\n")
        manifest = {**header, "files": hashed_files(directory)}
        (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        **_: Any,
    ) -> Bundle:
        directory = resolve_bundle(
            model_id,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        manifest = verify_bundle(directory)
        if manifest.get("kind") != cls.kind:
            raise BundleError(f"{directory / MANIFEST_NAME}: a {manifest.get('kind')!r} bundle, not {cls.kind!r}")
        stored = read_json(directory / CONFIG_JSON)
        config = {k: v for k, v in stored.items() if k not in ("format_version", "kind", "level")}
        bundle = cls(cls.read_module(directory, config), config)
        if (directory / TEXT_ENCODER_DIR).is_dir():
            bundle._use_vendored_text_encoder(directory / TEXT_ENCODER_DIR)
        return bundle

    def _use_vendored_text_encoder(self, path: Path) -> None:
        from mvmlm.models.text_encoders import FrozenTextEncoder

        referenced = self.frozen_text_encoder()
        dtype = str(referenced.dtype).removeprefix("torch.")
        self.use_text_encoder(FrozenTextEncoder(str(path), None, referenced.max_length, dtype, local_files_only=True))

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The model card: what the model predicts, its data and metrics, provenance and intended use."""
        return model_card(self)
