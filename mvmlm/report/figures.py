"""Images for the page: PNG files and matplotlib figures as ``data:`` URIs (the page needs no other file)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

__all__ = ["png_uri", "file_uri", "line_plot"]


def png_uri(data: bytes) -> str:
    """A ``data:image/png;base64,...`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def file_uri(path: Path) -> str | None:
    """The PNG file as a data URI, or None when it does not exist."""
    return png_uri(path.read_bytes()) if path.is_file() else None


def line_plot(title: str, xlabel: str, series: Sequence[tuple[str, Sequence[float], Sequence[float]]]) -> str:
    """A small line chart (one line per ``(label, x, y)``) as a data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.0), dpi=100)
    for label, x, y in series:
        ax.plot(x, y, label=label, linestyle="--" if label.startswith("chance") else "-")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return png_uri(buffer.getvalue())
