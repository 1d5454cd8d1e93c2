"""The report's one markdown table writer, and the cell formats its sections share."""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence

import pandas as pd


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A pipe table: the header, its ``|---|`` rule, one line per row of cells (text)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def frame_table(
    df: pd.DataFrame,
    columns: Optional[Sequence[str]] = None,
    cell: Callable[[object], str] = str,
) -> str:
    """A pipe table of a frame's ``columns`` (default: all), one line per row, each value
    written by ``cell``."""
    columns = list(df.columns) if columns is None else list(columns)
    return markdown_table(columns, ([cell(r[c]) for c in columns] for _, r in df.iterrows()))


def mean_std(mean: float, std: float) -> str:
    """``0.1234 ± 0.0123``; the mean alone without a std (one seed); ``n/a`` without a mean."""
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.4f} ± {std:.4f}" if not math.isnan(std) else f"{mean:.4f}"


def missing(value) -> bool:
    """None or a float NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))
