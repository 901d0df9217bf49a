"""Failure budgets of batch commands (``preprocess``, ``reports``): the ``max_failures`` option and the last line.

A batch command records each failed item, goes on, and at the end states its counts and where the failures are
listed. It exits non-zero (``error: ...``, code 2) when every item failed, or when more than ``max_failures`` (a
fraction of the items, default 0.1) failed; its outputs are complete either way, so a rerun after fixing the input
only redoes the failed items.
"""

from __future__ import annotations

from mvmlm.config import ConfigError
from mvmlm.errors import InputError

__all__ = ["DEFAULT_MAX_FAILURES", "TooManyFailuresError", "check_max_failures", "failure_summary"]

DEFAULT_MAX_FAILURES = 0.1


class TooManyFailuresError(InputError):
    """Every item, or more than ``max_failures`` of them, failed."""


def check_max_failures(value: float) -> None:
    """Refuse a ``max_failures`` outside [0, 1]."""
    if not 0 <= value <= 1:
        raise ConfigError(f"key 'max_failures': a fraction of the items in [0, 1], got {value}")


def failure_summary(done: int, failed: int, max_failures: float, *, what: str, where: str) -> str:
    """The closing line of a batch (``done`` items fine, ``failed`` failed, the failures listed in ``where``).

    Raises:
        TooManyFailuresError: everything failed, or more than ``max_failures`` of the items.
    """
    total = done + failed
    line = f"{done} of {total} {what} done, {failed} failed" + (f" (listed in {where})" if failed else "")
    if failed and failed == total:
        raise TooManyFailuresError(f"all {total} {what} failed (listed in {where})")
    if failed > max_failures * total:
        raise TooManyFailuresError(f"{line}: more than max_failures={max_failures:g} of them")
    return line
