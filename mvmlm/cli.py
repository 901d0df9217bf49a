"""The ``mvmlm`` umbrella command: ``mvmlm <command> [--config FILE] [key=value ...]``.

Commands are found through the entry-point group ``mvmlm.commands`` (see pyproject.toml): each entry names a
:class:`Command`, a light description living in a module that imports neither torch nor the command's code. The
command's module is imported only when it runs; ``--help`` needs only its config schema, so it answers at once.
A package outside mvmlm adds a command by declaring an entry point in the same group.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from mvmlm.errors import InputError, RunFinished

__all__ = ["ENTRY_POINT_GROUP", "Command", "commands", "main", "run_command", "module_main"]

ENTRY_POINT_GROUP = "mvmlm.commands"


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Command:
    """A command of the ``mvmlm`` CLI.

    Attributes:
        name: what follows ``mvmlm``.
        summary: one line for ``mvmlm --help``.
        main: ``"package.module:function"`` taking ``argv``; imported only when the command runs.
        config: ``"package.module:Schema"`` of its typed config, importable without torch (``--help`` reads it).
        description: plain text shown first by ``--help``.
        flags: config keys also accepted as ``--flag VALUE`` (``--resume latest`` sets ``train.resume``).
        list_flags: list-valued config keys also accepted as ``--flag A B C``.
        switches: boolean config keys also accepted as ``--flag`` (sets them to true).
        overwritable: whether ``--overwrite`` is offered (False where ``out`` is not one run's output but a root
            shared by many, like the preprocess cache root whose folders are keyed by their inputs).

    Every overwritable command whose config has an ``out`` key takes ``--overwrite``: what ``out`` holds is moved
    aside to ``<out>.old-<time>`` (never deleted) before the command starts (:func:`mvmlm.rundir.overwrite_run`).
    """

    name: str
    summary: str
    main: str
    config: str
    description: str = ""
    flags: tuple[tuple[str, str], ...] = ()  # (flag, config key)
    list_flags: tuple[tuple[str, str], ...] = ()  # (flag, config key of a list)
    switches: tuple[tuple[str, str], ...] = ()  # (flag, config key of a bool)
    overwritable: bool = True

    def parse(self, argv: Sequence[str] | None = None) -> Any:
        """The typed config of ``argv`` (``--config FILE``, flags, ``key=value``); ``--help`` prints and exits."""
        import argparse
        import dataclasses

        from mvmlm.config import load_config

        prog = f"mvmlm {self.name}"
        schema = _load(self.config)
        parser = argparse.ArgumentParser(prog=prog, description=self.description or self.summary)
        if argv is None:
            argv = sys.argv[1:]
        overwrite = False
        has_out = dataclasses.is_dataclass(schema) and any(f.name == "out" for f in dataclasses.fields(schema))
        if self.overwritable and has_out:
            help_text = "move what out holds aside to OUT.old-<time> (nothing is deleted), then start afresh"
            parser.add_argument("--overwrite", action="store_true", default=None, help=help_text)
            overwrite, argv = "--overwrite" in argv, [arg for arg in argv if arg != "--overwrite"]
        for flag, key in self.flags:
            parser.add_argument(f"--{flag}", dest=key, metavar=key.rsplit(".", 1)[-1].upper(), help=f"same as {key}=")
        for flag, key in self.list_flags:
            name = key.rsplit(".", 1)[-1].upper()
            parser.add_argument(f"--{flag}", dest=key, nargs="+", metavar=name, help=f"same as {key}=[...]")
        for flag, key in self.switches:
            parser.add_argument(f"--{flag}", dest=key, action="store_const", const="true", help=f"same as {key}=true")
        cfg = load_config(schema, self._lists_as_overrides(argv), parser=parser)
        if overwrite:
            from mvmlm.rundir import overwrite_run

            overwrite_run(cfg)
        return cfg

    def _lists_as_overrides(self, argv: Sequence[str]) -> list[str]:
        """``--flag A B C`` of a list flag as the override ``key=["A", "B", "C"]``: its values end at the next
        ``-option`` or ``key=value`` (argparse's ``nargs`` would swallow the overrides that follow)."""
        import json

        keys = {f"--{flag}": key for flag, key in self.list_flags}
        args, out = list(argv), []
        while args:
            arg = args.pop(0)
            if arg not in keys:
                out.append(arg)
                continue
            values = []
            while args and not args[0].startswith("-") and "=" not in args[0]:
                values.append(args.pop(0))
            out.append(f"{keys[arg]}={json.dumps(values)}")
        return out

    def run(self, argv: Sequence[str] | None = None) -> Any:
        """Import the command's ``main`` and call it with ``argv``."""
        return _load(self.main)(None if argv is None else list(argv))


def commands() -> dict[str, Command]:
    """Every installed command by name, in the order of the entry points' names."""
    found: dict[str, Command] = {}
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        command = entry.load()
        if not isinstance(command, Command) or command.name != entry.name:
            raise TypeError(f"entry point {entry.name} = {entry.value} is not a Command named {entry.name!r}")
        found[entry.name] = command
    return found


def _usage(known: dict[str, Command]) -> str:
    width = max(map(len, known), default=0)
    rows = "\n".join(f"  {name:<{width}}  {command.summary}" for name, command in known.items())
    return (
        "usage: mvmlm <command> [--config FILE] [key=value ...]\n\n"
        f"commands:\n{rows}\n\n`mvmlm <command> --help` explains a command and lists its config keys."
    )


def run_command(entry: Callable[[list[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run a command's ``main`` turning user errors (bad config or input, missing files) into ``error: ...``, exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("accelerate", "openjpeg"):  # per-checkpoint / per-tile INFO lines drown the progress
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        entry(None if argv is None else list(argv))
    except (InputError, FileNotFoundError) as exc:  # ConfigError is an InputError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunFinished as done:
        print(done)
        return 0
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its command."""
    args = list(sys.argv[1:] if argv is None else argv)
    known = commands()
    if not args or args[0] in ("-h", "--help"):
        print(_usage(known))
        return 0
    name, rest = args[0], args[1:]
    if name not in known:
        print(f"mvmlm: unknown command {name!r}\n\n{_usage(known)}", file=sys.stderr)
        return 2
    command = known[name]
    if any(arg in ("-h", "--help") for arg in rest):
        return run_command(command.parse, rest)  # prints the help from the config schema alone, then exits
    return run_command(command.run, rest)


def module_main(name: str) -> int:
    """What ``python -m <package>`` runs: the command ``name`` with the process's arguments."""
    return main([name, *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
