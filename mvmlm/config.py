"""Typed configs: OmegaConf structured dataclasses + YAML files + dotted command-line overrides.

Every command declares a dataclass, then calls :func:`load_config`::

    cfg = load_config(ProbeConfig, argv)      # --config file.yaml  data.root=/x  train.lr=1e-4

Unknown keys, wrong types and missing mandatory values raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["MISSING", "ConfigError", "load_config", "config_to_yaml", "config_to_dict", "describe_config"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid (unknown key, wrong type, missing value)."""


def _explain(exc: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    msg = getattr(exc, "msg", None) or str(exc).splitlines()[0]
    where = f"key {key!r}" if key else "config"
    return ConfigError(f"{source}: {where}: {msg}")


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise _explain(exc, source) from None


def build_config(schema: type[T], files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> T:
    """Merge ``schema`` defaults, YAML ``files`` (in order) and dotted ``overrides``; return the dataclass.

    Raises:
        ConfigError: naming the file or override and the key at fault.
    """
    cfg = OmegaConf.structured(schema)
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml errors come in several types
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        cfg = _merge(cfg, loaded, str(path))
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
    for item in overrides:
        try:
            dot = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as exc:
            raise _explain(exc, f"override {item!r}") from None
        cfg = _merge(cfg, dot, f"override {item!r}")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"missing mandatory value(s): {', '.join(missing)}; set them in the config file or as key=value"
        )
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise _explain(exc, "config") from None


def describe_config(schema: type) -> str:
    """The dotted keys of ``schema`` with their defaults, for ``--help``."""
    flat = OmegaConf.to_container(OmegaConf.structured(schema), resolve=False, throw_on_missing=False)
    lines: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}." if isinstance(value, dict) and value else f"{prefix}{key}")
            return
        lines.append(f"  {prefix.rstrip('.')} = {node}")

    walk(flat, "")
    return "\n".join(lines)


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
    parser.epilog = "config keys (override with key=value):\n" + describe_config(schema)
    parser.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config (repeatable)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    args = parser.parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    extra = [
        f"{key}={value}"
        for key, value in vars(args).items()
        if key not in ("config", "overrides") and value is not None
    ]
    return build_config(schema, args.config, extra + list(args.overrides))


def config_to_dict(cfg: Any) -> dict:
    """A plain nested dict of a config dataclass (or DictConfig)."""
    if dataclasses.is_dataclass(cfg):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def config_to_yaml(cfg: Any) -> str:
    """The resolved config as YAML text."""
    return OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg)))
