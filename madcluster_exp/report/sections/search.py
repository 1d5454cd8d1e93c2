"""The report of an Optuna search (``python -m madcluster_exp.report <sweep>`` on a sweep run
with ``hparams_search=...``): the objective of every trial, the chosen trial's parameters, and
the TEST metrics of the chosen trial only.

The choice is the study's best trial by its objective (validation data only: the validation
loss, or VUS-PR on the validation split with injected anomalies); no test number of any other
trial is shown or written, so nothing in the report invites a choice made on test.

A shared study (``hydra.sweeper.storage``) spans every sweep process that ran it, on any
machine: its trials are read from the Optuna storage (states, values, parameters) and joined to
their MLflow runs by trial number (tag ``optuna.trial``). A one-process study in memory is
rebuilt from the sweep's own runs. Both are read by :mod:`madcluster_exp.report.source`.
Writes ``search_trials.csv`` and ``search_chosen.json``.
"""

from __future__ import annotations

import json
import math
from typing import Optional, Tuple

import pandas as pd

from madcluster_exp.report.sections import Context, Section, lines
from madcluster_exp.report.sweep import (
    NOT_A_FACTOR,
    SearchReportError,
    Sweep,
    is_derived,
)
from madcluster_exp.report.tables import markdown_table


def memory_trials(runs: pd.DataFrame, direction: str) -> Tuple[pd.DataFrame, Optional[int]]:
    """A one-process study from its runs: the searched parameters are those that vary."""
    finished = runs["run_status"] == "FINISHED"
    factors = [
        c
        for c in runs.columns
        if c.startswith("param:")
        and c[len("param:") :] not in NOT_A_FACTOR
        and not is_derived(c[len("param:") :])
        and runs[c].nunique(dropna=False) > 1
    ]
    df = runs[["trial", *factors]].copy()
    df["state"] = ["COMPLETE" if ok else "FAIL" for ok in finished]
    df["objective"] = runs["run_objective"].where(finished)
    done = df.dropna(subset=["objective"])
    if done.empty:
        return df, None
    best = done["objective"].idxmax() if direction == "maximize" else done["objective"].idxmin()
    return df, int(done.loc[best, "trial"])


def _num(v) -> str:
    return (
        "n/a"
        if v is None or (isinstance(v, float) and math.isnan(v))
        else (f"{v:.6g}" if isinstance(v, float) else str(v))
    )


def section(sweep: Sweep, ctx: Context) -> Section:
    """The search report (``sweep.search``): every trial's objective, the chosen trial's
    parameters and its test metrics (``ctx.metrics`` it logged)."""
    search, out_dir, metrics = sweep.search, ctx.out_dir, ctx.metrics
    tags, runs = search.tags, search.runs
    study, metric, direction = tags["optuna.study"], tags["search.metric"], tags["search.direction"]
    if search.study is None:
        trials, best = memory_trials(runs, direction)
    else:
        trials, best = search.study
    joined = trials.merge(
        runs[["trial", "run_id", "run_status", "sweep_run"]], on="trial", how="left"
    ).sort_values("trial")
    params = [c for c in joined.columns if c.startswith("param:")]
    joined["chosen"] = joined["trial"] == best
    table = joined[
        ["trial", "state", "objective", *params, "chosen", "run_id", "run_status", "sweep_run"]
    ].rename(columns={c: c[len("param:") :] for c in params})
    names = [c[len("param:") :] for c in params]
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "search_trials.csv"]
    table.to_csv(files[0], index=False)

    states = ", ".join(
        f"{n} {s.lower()}" for s, n in table["state"].value_counts().sort_index().items()
    )
    rows = [
        [
            str(r["trial"]),
            str(r["state"]),
            _num(r["objective"]) + (" ← chosen" if r["chosen"] else ""),
            *(_num(r[n]) for n in names),
            _num(r["run_id"]),
        ]
        for _, r in table.iterrows()
    ]
    md = [
        f"# Search: study {study} ({tags['optuna.storage']})",
        "",
        f"Objective: {metric} ({tags.get('search.objective')}), {direction}d; "
        f"{len(table)} trials ({states}) from {table['sweep_run'].nunique()} sweep "
        "process(es).",
        "",
        markdown_table(["trial", "state", "objective", *names, "MLflow run"], rows),
    ]
    if best is None:
        md += ["", "No trial is complete: nothing chosen."]
        return lines(md, files)
    chosen = table[table["chosen"]].iloc[0]
    run = runs[runs["trial"] == best]
    if run.empty:
        raise SearchReportError(
            f"trial {best} of study {study!r} (the chosen one) has no MLflow run in {sweep.uri}"
        )
    run = run.iloc[0]
    wanted = [m for m in metrics if f"metric:{m}" in run and not pd.isna(run[f"metric:{m}"])]
    test = {m: float(run[f"metric:{m}"]) for m in wanted}
    md += [
        "",
        f"## Chosen trial {best} (best {metric}: {_num(chosen['objective'])})",
        "",
        "Parameters: " + ", ".join(f"{n}={_num(chosen[n])}" for n in names),
        "",
        "Test metrics of the chosen trial only (chosen on the objective alone, never on test):",
        "",
        markdown_table(["metric", "value"], ([m, f"{v:.4f}"] for m, v in test.items())),
    ]
    chosen_path = out_dir / "search_chosen.json"
    chosen_path.write_text(
        json.dumps(
            {
                "study": study,
                "trial": int(best),
                "objective": float(chosen["objective"]),
                "metric": metric,
                "direction": direction,
                "run_id": run["run_id"],
                "params": {n: chosen[n] for n in names},
                "test": test,
            },
            indent=2,
            default=str,
        )
    )
    files.append(chosen_path)
    return lines(md, files)
