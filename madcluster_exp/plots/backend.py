"""matplotlib for files only: the Agg backend (never needs a display), imported on first use
so that commands that draw nothing do not pay for it."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot with the Agg backend selected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` and free it (figures are drawn once, for a file)."""
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
