"""The report's sections: one module each, with ``section(sweep, ctx) -> Section``.

A section is a pure function of the sweep (its runs and what :mod:`madcluster_exp.report.source`
read for it) and of the report's settings (:class:`Context`): it writes its files under
``ctx.out_dir`` and returns its markdown and those files; it reads nothing from MLflow. A
section imports only :mod:`~madcluster_exp.report.sweep`, :mod:`~madcluster_exp.report.tables`,
this package, plots, metrics and evaluation.sanity; report/build.py lists the sections in
report order (a new section: a module here and one line there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

from madcluster_exp.report.sweep import PublishedTable


@dataclass(frozen=True)
class Context:
    """The report's settings: where its files go, the metrics it tabulates (report.metrics,
    else the catalog's report metrics), and a published per-file table to place the sweep's
    detectors among (``published=``; None without one)."""

    out_dir: Path
    metrics: Tuple[str, ...]
    published: Optional[PublishedTable] = None


@dataclass(frozen=True)
class Section:
    """A section's markdown (lines joined by newlines; empty: no section) and the files it
    wrote, in the order they are logged."""

    markdown: str = ""
    files: List[Path] = field(default_factory=list)


def lines(md: List[str], files: List[Path] = ()) -> Section:
    """A section from its markdown lines."""
    return Section("\n".join(md), list(files))
