"""Typed configs: OmegaConf structured dataclasses + YAML files + dotted command-line overrides.

Every command declares a dataclass, then calls :func:`load_config`::

    cfg = load_config(ProbeConfig, argv)      # --config file.yaml  data.root=/x  train.lr=1e-4

Unknown keys, wrong types and missing mandatory values raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from mvmlm.errors import InputError

__all__ = [
    "MISSING",
    "ConfigError",
    "load_config",
    "build_config",
    "config_to_yaml",
    "config_to_dict",
    "describe_config",
    "AugmentConfig",
    "OptimConfig",
    "TrainConfig",
    "DataConfig",
    "RENAMED_KEYS",
    "config_file",
]

T = TypeVar("T")

_HELP_FLAGS = ("-h", "--help")


class ConfigError(ValueError, InputError):
    """A config file or override is invalid (unknown key, wrong type, missing value)."""


# ----------------------------------------------------------------------------------- the pieces every command shares


@dataclass
class AugmentConfig:
    """The training affine of the hybrid CNN-VSSM paper (3.1); evaluation images are never augmented."""

    enabled: bool = True
    degrees: float = 10.0  # rotation drawn from [-degrees, degrees]
    translate: float = 0.05  # shift drawn from [-translate, translate] x image size, per axis
    scale: list[float] = field(default_factory=lambda: [0.95, 1.05])  # zoom range [low, high]
    hflip: float = 0.0  # probability of a horizontal flip (moves the chest wall to the right; the paper used 0.5)


@dataclass
class DataConfig:
    """Where training data come from: the ``table.parquet`` of a ``mvmlm preprocess`` cache, split as it says."""

    table: str = MISSING  # table.parquet of a `mvmlm preprocess` cache folder (its split column is used as is)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    batch_size: int = 8  # items per process per micro-batch
    eval_batch_size: int = 0  # 0 = batch_size
    num_workers: int = 0  # DataLoader worker processes
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    augment_on: str = "auto"  # loader (CPU workers) | device (training device, whole batches) | auto (device on CUDA)


@dataclass
class OptimConfig:
    """AdamW (no weight decay on norms, biases and scalars) and the learning-rate schedule."""

    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "cosine"  # cosine (linear warmup, cosine decay per step) | plateau (cut on the selected metric)
    warmup_steps: int = 0  # optimizer steps of linear warmup (cosine)
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    plateau_factor: float = 0.5  # plateau: lr multiplier when the selected metric stops improving
    plateau_patience: int = 10  # plateau: evaluations without improvement before the cut
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    # LR multiplier per parameter-name prefix (a module path), e.g. {backbones: 0.1} for a slower encoder while the
    # heads learn at lr; 0 freezes those parameters. The longest matching prefix wins; {} = lr everywhere
    lr_scales: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """The training loop of every trainer (:class:`mvmlm.training.Engine`)."""

    epochs: int = 10
    max_steps: int = 0  # optimizer steps; 0 = epochs x steps per epoch
    accum_steps: int = 1  # micro-batches per optimizer step
    mixed_precision: str = "no"  # no | fp16 | bf16
    device: str = "auto"  # auto (an accelerator when visible) | cpu
    seed: int = 0
    select: str = ""  # validation metric that picks the best weights, e.g. val/auc ('' = the command's default)
    select_mode: str = "max"  # max | min
    early_stop: int = 0  # stop after this many evaluations without a better selected metric (0 = never)
    eval_every: int = 0  # optimizer steps between validations; 0 = after every epoch
    save_every: int = 0  # optimizer steps between training-state checkpoints; 0 = after every epoch
    keep_checkpoints: int = 1  # newest training states kept (0 = all)
    resume: str = "none"  # none | latest (newest state in the run's checkpoints/) | PATH of a checkpoint folder
    log_every: int = 10  # optimizer steps between tracker / progress-bar updates (train_log.jsonl gets every step)
    trackers: list[str] = field(default_factory=list)  # any Accelerate tracker: tensorboard, wandb, mlflow, ...
    find_unused_parameters: bool = False  # DDP: for models with parameters a forward may skip (slower)
    progress: bool = True  # progress bar (main process)


#: keys of earlier versions -> what replaced them; a config using one gets a one-line error naming the new key.
#: Keyed by the full dotted path, or by the last part alone where that is unambiguous.
RENAMED_KEYS: dict[str, str] = {
    "augment_params": "data.augment (its fields; data.augment.enabled switches it)",
    "cpu": "train.device=cpu",
    "warmup_epochs": "optim.warmup_steps (in optimizer steps)",
    "patience": "train.early_stop",
    "select_metric": "train.select (e.g. val/auc)",
    "tracker": "train.trackers (a list, e.g. [tensorboard])",
    "val_fraction": "the table's split column (re-split once with `mvmlm split`)",
    "split_seed": "the table's split column (re-split once with `mvmlm split`)",
    "resume": "train.resume (none | latest | PATH)",
    "train.lr": "optim.lr",
    "train.weight_decay": "optim.weight_decay",
    "train.batch_size": "data.batch_size",
    "train.num_workers": "data.num_workers",
    "train.augment": "data.augment",
    "optim.epochs": "train.epochs",
    "hazard.lr": "optim.lr",
    "hazard.weight_decay": "optim.weight_decay",
    "hazard.epochs": "train.epochs",
    "hazard.batch_size": "data.batch_size",
    "hazard.seed": "train.seed",
    "eval.every": "train.eval_every",
    "eval.batch_size": "data.eval_batch_size",
    "train.grad_checkpointing": "grad_checkpointing",
    "train.image_image_weight": "loss.image_image_weight",
    "train.multi_positive": "loss.multi_positive",
    "train.save_every_epochs": "train.save_every",
    "optim.label_smoothing": "model.label_smoothing",
    "data.root": "the crop table beside data.table (make crops with `mvmlm preprocess ... roi.enabled=true`)",
    "data.roi": "the roi.* settings of `mvmlm preprocess` (crops are made there, beside the image cache)",
    "keep_checkpoints": "train.keep_checkpoints",
}


def _renamed_hint(exc: OmegaConfBaseException, key: str | None) -> str:
    if not key or not isinstance(exc, ConfigKeyError):  # only a key the schema does not have
        return ""
    parts = str(key).split(".")
    for length in range(len(parts), 0, -1):
        old = ".".join(parts[-length:])
        if old in RENAMED_KEYS and (length > 1 or "." not in old):
            return f"; it was renamed: use {RENAMED_KEYS[old]}"
    return ""


def _explain(exc: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    msg = (getattr(exc, "msg", None) or str(exc)).partition("\n")[0]  # drop OmegaConf's full_key/object_type lines
    where = f"key {key!r}" if key else "config"
    return ConfigError(f"{source}: {where}: {msg}{_renamed_hint(exc, key)}")


def _check_sections(base: DictConfig, other: Any, source: str, path: str = "") -> None:
    """A scalar where the schema now has a section (``data.augment: false`` of earlier versions) gets a one-line
    error naming the section's fields, instead of OmegaConf's merge error without a key."""
    if isinstance(other, DictConfig):
        other = OmegaConf.to_container(other, resolve=False, throw_on_missing=False)
    if not isinstance(other, dict) or not isinstance(base, DictConfig):
        return
    for key, value in other.items():
        name = f"{path}{key}"
        node = base._get_node(key, validate_access=False) if key in list(base.keys()) else None
        if isinstance(node, DictConfig) and not isinstance(value, dict) and value is not None and value != MISSING:
            fields = ", ".join(f"{name}.{k}" for k in node.keys())
            shown = str(value).lower() if isinstance(value, bool) else value
            hint = f" (e.g. {name}.enabled={shown})" if "enabled" in node else ""
            raise ConfigError(
                f"{source}: key {name!r}: is a section now, not {value!r}; set its fields: {fields}{hint}"
            )
        if isinstance(node, DictConfig):
            _check_sections(node, value, source, f"{name}.")


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    _check_sections(base, other, source)
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise _explain(exc, source) from None


def _missing_leaves(node: Any, path: tuple = ()) -> Iterator[tuple]:
    """Key paths of the ``???`` values in a plain nested dict (lists are merged whole, so they keep theirs).

    Paths, not dotted strings: a dict key may itself contain a dot (an encoder named ``resnet50.a1``).
    """
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if value == MISSING:
            yield (*path, key)
        else:
            yield from _missing_leaves(value, (*path, key))


def _load(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return OmegaConf.load(path)  # type: ignore[return-value]
    except Exception as exc:  # yaml errors come in several types
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def _merged_config(schema: type, files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> DictConfig:
    """``schema`` defaults, YAML ``files`` (in order) and dotted ``overrides`` merged; values may still be ``???``.

    A file's ``???`` stays mandatory even where the schema has a default (OmegaConf's merge would keep the
    default, e.g. on a new entry of a ``dict[str, SomeDataclass]``) until a later file or override sets it.

    Raises:
        ConfigError: naming the file or override and the key at fault.
    """
    cfg = OmegaConf.structured(schema)
    for file in files:
        loaded = _load(Path(file))
        cfg = _merge(cfg, loaded, str(file))
        for *parents, leaf in _missing_leaves(OmegaConf.to_container(loaded, resolve=False, throw_on_missing=False)):
            node = cfg
            for key in parents:
                node = node._get_node(key)  # item access would resolve values; the node itself is wanted
            node[leaf] = MISSING
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
    for item in overrides:
        try:
            dot = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as exc:
            raise _explain(exc, f"override {item!r}") from None
        cfg = _merge(cfg, dot, f"override {item!r}")
    return cfg


def build_config(schema: type[T], files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> T:
    """Merge ``schema`` defaults, YAML ``files`` (in order) and dotted ``overrides``; return the dataclass.

    Raises:
        ConfigError: naming the file or override and the key at fault, or every mandatory value left unset.
    """
    cfg = _merged_config(schema, files, overrides)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"missing mandatory value(s): {', '.join(missing)}; set them in the config file or as key=value"
        )
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise _explain(exc, "config") from None


@functools.lru_cache
def _field_types(cls: type) -> dict[str, Any]:
    try:
        return get_type_hints(cls)
    except NameError:  # an annotation naming a class its module cannot see (e.g. one local to a function)
        return {}


def _child_type(node_type: Any, key: Any) -> Any:
    """The type of ``key`` inside a node of ``node_type`` (a dataclass or ``dict[str, V]``), or None."""
    if dataclasses.is_dataclass(node_type):
        return _field_types(node_type).get(key)
    if get_origin(node_type) is dict:
        return get_args(node_type)[1]
    return None


def _show(value: Any) -> str:
    return "''" if value == "" else str(value)


def _describe(node: Any, node_type: Any, name: str) -> Iterator[str]:
    """``name = value`` lines; an empty ``dict[str, SomeDataclass]`` also shows one entry's defaults as ``<name>``."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _describe(value, _child_type(node_type, key), f"{name}.{key}" if name else str(key))
        return
    yield f"  {name} = {_show(node)}"
    entry = get_args(node_type)[1] if get_origin(node_type) is dict else None
    if node == {} and isinstance(entry, type) and dataclasses.is_dataclass(entry):
        defaults = OmegaConf.to_container(OmegaConf.structured(entry), resolve=False, throw_on_missing=False)
        yield from _describe(defaults, entry, f"{name}.<name>")


def describe_config(schema: type, files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> str:
    """The dotted keys of ``schema`` with their values after ``files`` and ``overrides`` (defaults if none).

    For ``--help``: mandatory values not yet given show as ``???``, interpolations unresolved.

    Raises:
        ConfigError: a file is missing or invalid, or an override is.
    """
    tree = OmegaConf.to_container(_merged_config(schema, files, overrides), resolve=False, throw_on_missing=False)
    return "\n".join(_describe(tree, schema, ""))


def _epilog(schema: type, files: Sequence[str] = (), overrides: Sequence[str] = ()) -> str:
    given = [*(f"--config {file}" for file in files), *overrides]
    header = f"config keys after {' '.join(given)}" if given else "config keys with defaults"
    return f"{header} (override with key=value):\n{describe_config(schema, files, overrides)}"


def load_config(
    schema: type[T],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    description: str | None = None,
    parser: argparse.ArgumentParser | None = None,
) -> T:
    """Parse ``--config FILE`` (repeatable) and ``key=value`` overrides from ``argv`` into ``schema``.

    ``parser`` may carry extra command-specific flags; they must have a matching config key of the same
    name (dashes become underscores) and are applied as overrides.
    """
    parser = parser or argparse.ArgumentParser(prog=prog, description=description)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _epilog(schema)  # for the help argparse prints itself (an abbreviation such as --he)
    parser.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config (repeatable)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    args = list(sys.argv[1:] if argv is None else argv)
    wants_help = parser.add_help and any(arg in _HELP_FLAGS for arg in args)
    parsed = parser.parse_intermixed_args([arg for arg in args if not (wants_help and arg in _HELP_FLAGS)])
    extra = [
        f"{key}={value}"
        for key, value in vars(parsed).items()
        if key not in ("config", "overrides") and value is not None
    ]
    overrides = extra + list(parsed.overrides)
    if wants_help:  # the keys as these files and overrides leave them
        parser.epilog = _epilog(schema, parsed.config, overrides)
        parser.print_help()
        parser.exit()
    return build_config(schema, parsed.config, overrides)


def config_to_dict(cfg: Any) -> dict:
    """A plain nested dict of a config dataclass (or DictConfig)."""
    if dataclasses.is_dataclass(cfg):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def config_to_yaml(cfg: Any) -> str:
    """The resolved config as YAML text."""
    return OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg)))


SOURCE_TREE = Path(__file__).resolve().parents[1]  # configs/ lives beside the packages in a source checkout


def config_file(name: str) -> str:
    """``name`` as given when it exists, else (if relative) resolved in the source tree; ConfigError if neither."""
    path = Path(name)
    if path.is_file():
        return str(path)
    found = SOURCE_TREE / path
    if path.is_absolute() or not found.is_file():
        raise ConfigError(f"config file not found: {name} (neither here nor in the source tree {SOURCE_TREE})")
    return str(found)
