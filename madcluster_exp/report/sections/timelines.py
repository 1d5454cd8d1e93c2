"""One score timeline per configuration (its lowest seed), without a cap, named after that run
(the name carries the configuration id; the run id is added should two names still meet)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

from madcluster_exp.plots import plot_score_timeline
from madcluster_exp.report.sections import Context, Section, lines
from madcluster_exp.report.sweep import Sweep, timeline_runs


def section(sweep: Sweep, ctx: Context) -> Section:
    paths = score_timelines(sweep, ctx.out_dir)
    md = [
        "",
        f"## Score timelines (one per configuration, its lowest seed: {len(paths)})",
        "",
    ] + [f"![{p.stem}]({p.name})" for p in paths]
    return lines(md, paths)


def _file_label(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def score_timelines(sweep: Sweep, out_dir: Path) -> List[Path]:
    """The timelines of the runs whose scores ``sweep.scores`` holds (a run without saved
    scores, or without point scores, gets none)."""
    paths: List[Path] = []
    seen = set()
    for label, r in timeline_runs(sweep):
        local = sweep.scores.get(r["run_id"])
        if local is None:
            continue
        data = np.load(local)
        if "test_score" not in data:
            continue
        stem = _file_label(f"timeline_{r['run_name']}")
        if stem in seen:
            stem += f"_{r['run_id'][:8]}"
        seen.add(stem)
        paths.append(
            plot_score_timeline(
                out_dir / f"{stem}.png",
                data["test_score"],
                data["test_label"],
                data["threshold"],
                f"{r['run_name']} ({label})",
                bounds=data["entity_bounds"] if "entity_bounds" in data else None,
            )
        )
    return paths
