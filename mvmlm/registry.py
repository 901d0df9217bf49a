"""One generic registry for everything chosen by name in a config: encoders, sources, synthetic writers, report
backends, risk models.

    ENCODERS: Registry[Callable[..., ImageEncoder]] = Registry("image encoder")

    @ENCODERS.register("resnet34")
    def resnet34(**kwargs): ...

    build = ENCODERS.get(cfg.name)        # unknown names raise a one-line error listing the known ones

Entries may live in modules imported on first use (``lazy={"vindr": "mvmlm.data.sources.vindr"}``), so a
registry lists every name without importing every implementation.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from mvmlm.errors import InputError

__all__ = ["Registry", "UnknownNameError"]

T = TypeVar("T")


class UnknownNameError(ValueError, InputError):
    """A config names an entry that no registry holds."""


class Registry(Generic[T]):
    """Entries of one kind by name; registering a name twice is an error.

    Args:
        kind: what the entries are, for messages ("image encoder").
        lazy: name -> module that registers that name when imported (on the first :meth:`get`).
    """

    def __init__(self, kind: str, lazy: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self.lazy = dict(lazy or {})
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding the decorated object under ``name``."""

        def add(entry: T) -> T:
            self.add(name, entry)
            return entry

        return add

    def add(self, name: str, entry: T) -> None:
        """Add ``entry`` under ``name``."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        """The entry ``name``; :class:`UnknownNameError` listing the known names if there is none."""
        if name not in self._entries and name in self.lazy:
            importlib.import_module(self.lazy[name])
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """The registered names and those of modules not imported yet, sorted."""
        return sorted({*self._entries, *self.lazy})

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self.lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
