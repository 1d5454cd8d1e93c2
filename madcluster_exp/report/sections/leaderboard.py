"""The sweep's detectors among a published leaderboard (``published=<csv>``): TSB-AD's per-file
table of one metric (``uni_mergedTable_VUS-PR.csv``: one row per file, one column per detector)
joined with the sweep's series on their file names, ranked together on exactly the files the
sweep ran.

- A measured series is joined by its file name (the series run's ``series.file`` tag), else by
  its name against the published file's stem. Series the published table lacks are listed,
  never dropped silently; the published table's other files are not used.
- The measured value of a detector on a file is its mean over the seeds that finished, of
  TSB-AD's own definition of the metric where its runs logged it (``test/tsbad/<name>``,
  ``metrics.definition=tsbad``), else of the catalog's key (``test/<name>``); the table names
  the key and the protocol (param ``protocol``) of every measured row.
- The ranking is over the files where every measured detector has a value (the others are
  listed with what each lacks); a published detector without a value on one of those files
  is left out of the ranking, and listed with how many it lacks.
- Every row says where its numbers come from (``source``: published | measured); in the
  critical-difference diagram the measured detectors carry ``(here)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

import numpy as np
import pandas as pd

from madcluster_exp.metrics.catalog import ranked
from madcluster_exp.report.sections import Context, Section, lines
from madcluster_exp.report.sections.rank import mean_ranks, ranking
from madcluster_exp.report.sweep import PublishedTable, Sweep, series_long
from madcluster_exp.report.tables import frame_table

PUBLISHED, MEASURED = "published", "measured"
HERE = " (here)"
FINISHED = "FINISHED"


def metric_keys(label: str) -> List[str]:
    """The measured keys that stand for a published metric, preferred first: TSB-AD's own
    definition (``test/tsbad/vus_pr``), then the catalog's key (``test/vus_pr``)."""
    key = next(s.key for s in ranked() if s.label == label)
    return [f"test/tsbad/{key.split('/', 1)[1]}", key]


def _published_file(series: str, file, published: pd.Index) -> str:
    """The published file a series is: its file name, else its name as a file's stem; '' if
    none."""
    if isinstance(file, str) and file in published:
        return file
    stems = {Path(f).stem: f for f in published}
    return stems.get(str(series).rsplit(" / ", 1)[-1], "")


def measured_table(sweep: Sweep, table: PublishedTable) -> pd.DataFrame:
    """One row per (detector, series): the published ``file`` it joins ('' if none), the
    ``key`` used, its ``value`` (mean over the seeds that finished), ``seeds``, ``failed``
    and ``protocol``."""
    keys = metric_keys(table.metric)
    long = series_long(sweep, keys)
    long = long[long["series"].notna()]
    rows = []
    for det, d in long.groupby("detector"):
        done = d[d["status"] == FINISHED]
        key = next((k for k in keys if done[k].notna().any()), keys[-1])
        for series, g in d.groupby("series"):
            ok = g[g["status"] == FINISHED]
            rows.append(
                {
                    "detector": det,
                    "series": series,
                    "file": _published_file(series, g["file"].iloc[0], table.values.index),
                    "key": key,
                    "value": float(ok[key].mean()) if ok[key].notna().any() else np.nan,
                    "seeds": len(ok),
                    "failed": len(g) - len(ok),
                    "protocol": ", ".join(sorted(set(d["protocol"].astype(str)))),
                }
            )
    return pd.DataFrame(rows)


def leaderboard(measured: pd.DataFrame, table: PublishedTable) -> Dict[str, object]:
    """The joined ranking: ``matrix`` (files x detectors, every value present; measured
    detectors named ``<name> (measured)`` where a published one has their name),
    ``not_published`` (series without a published row), ``left_out_files`` ({file: what
    lacks}), ``left_out_published`` ({detector: files it lacks}), ``rows`` (the table)."""
    joined = measured[measured["file"] != ""]
    not_published = sorted(set(measured.loc[measured["file"] == "", "series"]))
    names = {
        d: d + " (measured)" if d in table.values.columns else d for d in set(measured["detector"])
    }
    mine = joined.pivot_table(
        index="file", columns="detector", values="value", aggfunc="first", dropna=False
    ).rename(columns=names)
    left_out_files = {}
    for f in mine.index[mine.isna().any(axis=1)]:
        if mine.loc[f].isna().all() and not joined.loc[joined["file"] == f, "seeds"].eq(0).any():
            left_out_files[f] = "no measured detector has a value (no anomaly in the test part)"
            continue
        lacking = []
        for det in mine.columns[mine.loc[f].isna()]:
            cell = joined[(joined["file"] == f) & (joined["detector"].map(names) == det)]
            why = (
                "not run"
                if cell.empty
                else f"failed on {int(cell['failed'].iloc[0])} of "
                f"{int(cell['failed'].iloc[0] + cell['seeds'].iloc[0])} seeds"
                if cell["seeds"].iloc[0] == 0
                else "undefined"
            )
            lacking.append(f"{det} ({why})")
        left_out_files[f] = ", ".join(lacking)
    mine = mine.dropna()
    pub = table.values.loc[mine.index]
    gaps = pub.isna().sum()
    left_out_published = {d: int(n) for d, n in gaps.items() if n}
    pub = pub.loc[:, gaps == 0]
    matrix = pd.concat([mine, pub], axis=1)
    ranks = mean_ranks(matrix) if len(matrix) else pd.Series(np.nan, index=matrix.columns)
    info = measured.assign(detector=measured["detector"].map(names)).drop_duplicates("detector")
    info = info.set_index("detector")
    rows = []
    for det in matrix.columns:
        here = det in info.index
        rows.append(
            {
                "detector": det,
                "source": MEASURED if here else PUBLISHED,
                "protocol": info.loc[det, "protocol"] if here else "TSB-AD (published)",
                "key": info.loc[det, "key"] if here else table.path.name,
                "files": len(matrix),
                f"mean {table.metric}": float(matrix[det].mean()) if len(matrix) else np.nan,
                "mean rank": float(ranks.get(det, np.nan)),
            }
        )
    out = pd.DataFrame(rows)
    if len(out):
        out = out.sort_values(["mean rank", "detector"]).reset_index(drop=True)
    return {
        "matrix": matrix,
        "not_published": not_published,
        "left_out_files": left_out_files,
        "left_out_published": left_out_published,
        "rows": out,
    }


def _cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def section(sweep: Sweep, ctx: Context) -> Section:
    """The leaderboard section and its files (``leaderboard.csv``, ``cd_diagram_published.png``
    with ``leaderboard_pvalues.csv``); nothing without ``published=``."""
    table = ctx.published
    if table is None:
        return Section()
    head = [
        "",
        f"## Among the published detectors ({table.path.name}: {table.metric}, rank 1 = best)",
    ]
    measured = measured_table(sweep, table)
    if measured.empty:
        return lines(head + ["", "The sweep has no series result to place."])
    board = leaderboard(measured, table)
    md = list(head)
    files: List[Path] = []
    n_series = measured["series"].nunique()
    if board["not_published"]:
        md += [""]
        md.append(
            f"Not in the published table ({len(board['not_published'])} of {n_series} series; "
            f"left out): {', '.join(board['not_published'])}"
        )
    matrix = board["matrix"]
    if matrix.shape[1] == 0 or board["rows"].empty:
        return lines(md + ["", "No file of the sweep has a published row: nothing to rank."])
    csv = ctx.out_dir / "leaderboard.csv"
    board["rows"].to_csv(csv, index=False)
    files.append(csv)
    unused = len(table.values) - measured.loc[measured["file"] != "", "file"].nunique()
    md += [
        "",
        f"Ranked on the {len(matrix)} file(s) the sweep ran where every measured detector has "
        f"a value; the published table's {unused} other file(s) are not used. Published rows: "
        "TSB-AD's numbers (its protocol: whole series, its hyper-parameters); measured rows: "
        "this sweep, mean over the seeds that finished, under the protocol named.",
    ]
    other = sorted(
        {p for p in board["rows"].loc[board["rows"]["source"] == MEASURED, "protocol"]} - {"tsbad"}
    )
    if other:
        md += [""]
        md.append(
            f"Measured under protocol={', '.join(other)}, not TSB-AD's (protocol=tsbad): "
            "those rows compare across protocols."
        )
    if board["left_out_files"]:
        md += [""]
        md.append(
            "Files left out (a measured detector has no value): "
            + "; ".join(f"{f}: {why}" for f, why in board["left_out_files"].items())
        )
    if board["left_out_published"]:
        md += [""]
        md.append(
            "Published detectors left out (no published value on some of the ranked files): "
            + ", ".join(
                f"{d} ({n} of {len(matrix)})" for d, n in board["left_out_published"].items()
            )
        )
    metric = f"mean {table.metric}"
    md += [
        "",
        frame_table(
            board["rows"],
            ["detector", "source", "protocol", "key", "files", metric, "mean rank"],
            _cell,
        ),
    ]
    labels = {
        d: d + HERE for d in board["rows"].loc[board["rows"]["source"] == MEASURED, "detector"]
    }
    test_md, test_files = ranking(
        matrix,
        ctx.out_dir / "cd_diagram_published.png",
        ctx.out_dir / "leaderboard_pvalues.csv",
        labels,
    )
    md += test_md
    if test_files:
        md.append(f"In cd_diagram_published.png the measured detectors carry '{HERE.strip()}'.")
    return lines(md, files + test_files)
