"""The base class of errors a user can fix by changing their input (a file, a folder, a table, a config value)."""

from __future__ import annotations

__all__ = ["InputError", "RunFinished"]


class InputError(Exception):
    """Bad input a user can fix; the message names the file, row or key and says what to do.

    The ``mvmlm`` command shows it as one ``error: ...`` line (no traceback) and exits with code 2. Subclasses also
    derive from the built-in error they refine (``ValueError``, ``ImportError``, ``OSError``), so callers catching
    those keep working.
    """


class RunFinished(Exception):
    """A resumed run that had already finished: nothing to do. The ``mvmlm`` command prints the message and exits 0,
    leaving the run directory as it was."""
