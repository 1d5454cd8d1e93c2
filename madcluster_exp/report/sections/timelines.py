"""One score timeline per configuration (its lowest seed), without a cap, named after that run
(the name carries the configuration id; the run id is added should two names still meet)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np

from madcluster_exp.plots import plot_score_timeline
from madcluster_exp.report.sections import Context, Section, lines
from madcluster_exp.report.sweep import Sweep, timeline_runs


def section(sweep: Sweep, ctx: Context) -> Section:
    drawn = score_timelines(sweep, ctx.out_dir)
    paths = [p for p, _ in drawn]
    if not drawn:
        return lines(["", "## Score timelines", "", "No configuration's run saved its scores."])
    seeds = sorted({str(s) for _, s in drawn}, key=lambda s: (len(s), s))
    which = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(seeds)}"
    md = [
        "",
        f"## Score timelines ({len(paths)} configuration{'s' * (len(paths) != 1)}, each its "
        f"lowest seed: {which})",
        "",
    ] + [f"![{p.stem}]({p.name})" for p in paths]
    return lines(md, paths)


def _file_label(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def score_timelines(sweep: Sweep, out_dir: Path) -> List[Tuple[Path, object]]:
    """(file, seed) of the timelines of the runs whose scores ``sweep.scores`` holds (a run
    without saved scores, or without point scores, gets none)."""
    paths: List[Tuple[Path, object]] = []
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
        path = plot_score_timeline(
            out_dir / f"{stem}.png",
            data["test_score"],
            data["test_label"],
            data["threshold"],
            f"{r['run_name']} ({label})",
            bounds=data["entity_bounds"] if "entity_bounds" in data else None,
        )
        paths.append((path, r.get("param:seed")))
    return paths
