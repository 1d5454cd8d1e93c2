"""The report of an Optuna search (``python -m madcluster_exp.report <sweep>`` on a sweep run
with ``hparams_search=...``): the objective of every trial, the chosen trial's parameters, and
the TEST metrics of the chosen trial only.

The choice is the study's best trial by its objective (validation data only: the validation
loss, or VUS-PR on the validation split with injected anomalies); no test number of any other
trial is shown or written, so nothing in the report invites a choice made on test.

A shared study (``hydra.sweeper.storage``) spans every sweep process that ran it, on any
machine: its trials are read from the Optuna storage (states, values, parameters) and joined to
their MLflow runs by trial number (tag ``optuna.trial``). A one-process study in memory is
rebuilt from the sweep's own runs. Writes ``search.md``, ``search_trials.csv`` and
``search_chosen.json``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

from madcluster_exp.errors import ExpectedError

STORAGE_ENV = "MADCLUSTER_OPTUNA_STORAGE"


class SearchReportError(ExpectedError, ValueError):
    pass


def search_tags(client, parent_id: str) -> Optional[Dict[str, str]]:
    """The parent run's search tags (``optuna.study``, ``search.metric``, ...), None when the
    sweep is not an Optuna search."""
    tags = client.get_run(parent_id).data.tags
    return tags if "optuna.study" in tags else None


def trial_runs(client, parent_id: str, tags: Dict[str, str]) -> pd.DataFrame:
    """MLflow runs of the study's trials: every process's (shared storage), else this sweep's."""
    exp = client.get_run(parent_id).info.experiment_id
    query = f"tags.`optuna.study` = '{tags['optuna.study']}'"
    if tags["optuna.storage"] == "in-memory":
        query = f"tags.mlflow.parentRunId = '{parent_id}'"
    rows = []
    for r in client.search_runs([exp], filter_string=query, max_results=50_000):
        t = r.data.tags
        if "optuna.trial" not in t or t.get("optuna.storage") != tags["optuna.storage"]:
            continue
        rows.append(
            {
                "trial": int(t["optuna.trial"]),
                "run_id": r.info.run_id,
                "run_status": r.info.status,
                "sweep_run": t.get("mlflow.parentRunId"),
                "run_objective": r.data.metrics.get(tags["search.metric"], math.nan),
                **{f"param:{k}": v for k, v in r.data.params.items()},
                **{f"metric:{k}": v for k, v in r.data.metrics.items()},
            }
        )
    return pd.DataFrame(rows)


def study_trials(storage: str, study_name: str) -> Tuple[pd.DataFrame, Optional[int]]:
    """(one row per trial of the stored study: number, state, objective, params; the best
    trial's number, None when no trial is complete)."""
    import optuna

    from madcluster_exp.launchers.optuna_study import refuse_mlflow_store, sqlalchemy_url

    storage = sqlalchemy_url(storage)
    refuse_mlflow_store(storage, key="storage")  # before Optuna would add its tables to it
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception as exc:  # noqa: BLE001 - any failure: say which storage and why
        raise SearchReportError(
            f"cannot load Optuna study {study_name!r} from {storage}: "
            f"{exc}; pass storage=<url> (or set {STORAGE_ENV})"
        ) from None
    rows = [
        {
            "trial": t.number,
            "state": t.state.name,
            "objective": t.value,
            **{f"param:{k}": v for k, v in t.params.items()},
        }
        for t in study.trials
    ]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    return pd.DataFrame(rows), (study.best_trial.number if complete else None)


def memory_trials(runs: pd.DataFrame, direction: str) -> Tuple[pd.DataFrame, Optional[int]]:
    """A one-process study from its runs: the searched parameters are those that vary."""
    from madcluster_exp.report.build import NOT_A_FACTOR, _is_derived

    finished = runs["run_status"] == "FINISHED"
    factors = [
        c
        for c in runs.columns
        if c.startswith("param:")
        and c[len("param:") :] not in NOT_A_FACTOR
        and not _is_derived(c[len("param:") :])
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


def build_search_report(
    parent_id: str, uri: str, metrics: Sequence[str], out_dir: Path, storage: Optional[str] = None
) -> Tuple[List[str], List[Path]]:
    """Write the search report under ``out_dir``; (markdown lines, files written)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    tags = search_tags(client, parent_id)
    if tags is None:
        raise SearchReportError(
            f"run {parent_id} in {uri} is not an Optuna search's sweep run (no optuna.study tag)"
        )
    study, metric, direction = tags["optuna.study"], tags["search.metric"], tags["search.direction"]
    runs = trial_runs(client, parent_id, tags)
    if runs.empty:
        raise SearchReportError(f"no MLflow run of a trial of study {study!r} in {uri}")
    if tags["optuna.storage"] == "in-memory":
        trials, best = memory_trials(runs, direction)
    else:
        url = storage or os.environ.get(STORAGE_ENV) or tags["optuna.storage"]
        trials, best = study_trials(url, study)
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
    md = [
        f"# Search: study {study} ({tags['optuna.storage']})",
        "",
        f"Objective: {metric} ({tags.get('search.objective')}), {direction}d; "
        f"{len(table)} trials ({states}) from {table['sweep_run'].nunique()} sweep "
        "process(es).",
        "",
        "| trial | state | objective | " + " | ".join(names) + " | MLflow run |",
        "|" + "---|" * (4 + len(names)),
    ]
    for _, r in table.iterrows():
        mark = " ← chosen" if r["chosen"] else ""
        md.append(
            f"| {r['trial']} | {r['state']} | {_num(r['objective'])}{mark} | "
            + " | ".join(_num(r[n]) for n in names)
            + f" | {_num(r['run_id'])} |"
        )
    if best is None:
        md += ["", "No trial is complete: nothing chosen."]
        return md, files
    chosen = table[table["chosen"]].iloc[0]
    run = runs[runs["trial"] == best]
    if run.empty:
        raise SearchReportError(
            f"trial {best} of study {study!r} (the chosen one) has no MLflow run in {uri}"
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
        "| metric | value |",
        "|---|---|",
    ]
    md += [f"| {m} | {v:.4f} |" for m, v in test.items()]
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
    return md, files
