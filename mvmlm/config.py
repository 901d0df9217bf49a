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
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mvmlm.errors import InputError

__all__ = ["MISSING", "ConfigError", "load_config", "config_to_yaml", "config_to_dict", "describe_config"]

T = TypeVar("T")

_HELP_FLAGS = ("-h", "--help")


class ConfigError(ValueError, InputError):
    """A config file or override is invalid (unknown key, wrong type, missing value)."""


def _explain(exc: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    msg = (getattr(exc, "msg", None) or str(exc)).partition("\n")[0]  # drop OmegaConf's full_key/object_type lines
    where = f"key {key!r}" if key else "config"
    return ConfigError(f"{source}: {where}: {msg}")


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
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
