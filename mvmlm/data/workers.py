"""Per-item work in worker processes, so that a crash or a hang costs one item and not the batch.

A decoder plugin that aborts (a C++ assertion), segfaults or never returns on a damaged file kills or blocks only
the worker it ran in: the item is recorded as failed with the reason (``decoder crashed: signal 6 (SIGABRT)``,
``timed out after 120 s``) and a fresh worker takes the next item, with one worker as with many. Workers die with
their parent (Linux: ``PR_SET_PDEATHSIG``; elsewhere an idle worker notices within a second), so a killed run
leaves no orphans; Ctrl-C reaches the parent only, which stops its workers.
"""

from __future__ import annotations

import ctypes
import faulthandler
import math
import multiprocessing
import os
import signal
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from multiprocessing.connection import Connection, wait

from tqdm import tqdm

__all__ = ["run_isolated"]

_PR_SET_PDEATHSIG = 1
_IDLE_CHECK_S = 1.0


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux); exit now if the parent is already gone."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)


def _serve(conn: Connection, fn: Callable[..., object], parent: int) -> None:
    """Worker loop: run ``fn(*args)`` for each ``args`` received; send back None or the error text."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.disable()  # a crash is reported by the parent as a failure row, not as a traceback dump
    _die_with_parent(parent)
    while True:
        if not conn.poll(_IDLE_CHECK_S):
            if os.getppid() != parent:
                return
            continue
        try:
            args = conn.recv()
        except EOFError:
            return
        try:
            with warnings.catch_warnings():  # per-item warnings would print over the parent's progress bar
                warnings.simplefilter("ignore")
                fn(*args)
            result = None
        except Exception as exc:  # noqa: BLE001 - the item's failure, reported to the parent
            result = f"{type(exc).__name__}: {exc}"
        conn.send(result)


class _Worker:
    """One worker process and the item it is working on."""

    def __init__(self, context: multiprocessing.context.BaseContext, fn: Callable[..., object]) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, fn, os.getpid()), daemon=True)
        self.process.start()
        child.close()
        self.key: Hashable | None = None
        self.deadline = math.inf

    def give(self, key: Hashable, args: tuple, timeout: float | None) -> None:
        self.conn.send(args)
        self.key, self.deadline = key, time.monotonic() + timeout if timeout else math.inf

    def result(self, name: str) -> str | None:
        """The finished item's result, or why the worker died (it is then stopped)."""
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.process.join()
            code = self.process.exitcode
            if code is not None and code < 0:
                return f"{name} crashed: signal {-code} ({signal.Signals(-code).name})"
            return f"{name} crashed: worker exited with code {code}"

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


def run_isolated(
    fn: Callable[..., object],
    tasks: Sequence[tuple[Hashable, tuple]],
    *,
    workers: int = 1,
    timeout: float | None = None,
    name: str = "worker",
    desc: str = "",
    progress: bool = True,
) -> dict[Hashable, str]:
    """Run ``fn(*args)`` for every ``(key, args)`` of ``tasks`` in ``workers`` processes; key -> error text.

    ``fn`` must be a module-level function; it fails an item by raising. An item whose worker crashes (the error
    names the signal) or runs longer than ``timeout`` seconds (the worker is killed) fails too; a fresh worker
    takes the next item.
    """
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    queue = deque(tasks)
    errors: dict[Hashable, str] = {}
    pool: list[_Worker] = []
    try:
        pool = [_Worker(context, fn) for _ in range(min(max(1, workers), len(tasks)))]
        with tqdm(total=len(tasks), desc=desc, unit="img", disable=not progress) as bar:
            while queue or any(w.key is not None for w in pool):
                for i, worker in enumerate(pool):
                    if worker.key is None and queue:
                        if not worker.process.is_alive():  # died after its last item
                            worker.stop()
                            pool[i] = worker = _Worker(context, fn)
                        worker.give(*queue.popleft(), timeout)
                busy = [w for w in pool if w.key is not None]
                left = min(w.deadline for w in busy) - time.monotonic()
                wait(
                    [x for w in busy for x in (w.conn, w.process.sentinel)], None if left == math.inf else max(0, left)
                )
                for i, worker in enumerate(pool):
                    if worker.key is None:
                        continue
                    if worker.conn.poll() or not worker.process.is_alive():
                        error = worker.result(name)
                    elif time.monotonic() >= worker.deadline:
                        error = f"timed out after {timeout:g} s"
                        worker.stop()
                    else:
                        continue
                    if error is not None:
                        errors[worker.key] = error
                    worker.key = None
                    if not worker.process.is_alive():
                        worker.stop()
                        pool[i] = _Worker(context, fn)
                    bar.update()
    finally:
        for worker in pool:
            worker.stop()
    return errors
