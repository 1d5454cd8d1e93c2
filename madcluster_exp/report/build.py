"""Tables and plots across the runs of a sweep, from MLflow.

    python -m madcluster_exp.report <parent-run-id | sweep dir>
        [report.metrics=[test/f1,test/vus_pr,...]] [uri=<tracking uri>] [out=<dir>]
        [storage=<optuna storage of a search>]

- ``summary.md`` / ``summary.csv``: every configuration of the sweep (the parameters that vary,
  seeds pooled) with mean ± std over seeds of each chosen metric;
- ``onoff.md`` / ``onoff.csv`` (when MADCluster was swept off/on): per configuration the on - off
  difference, paired by seed, with a paired t-test (two-sided p-value; n = number of pairs;
  no p-value below onoff.FEW_PAIRS pairs, and the report says so);
- plots (PNG, embedded in report.md, drawn by madcluster_exp/plots/): metric bars off vs on
  with std over seeds, k-sweep curves (when madcluster.k varies), training curves (one line per
  configuration: mean over seeds, bars = min..max), and one score timeline per configuration
  (its first seed), without a cap.
- ``paper_vs_measured.csv`` (when runs measure a figure the paper published): the published
  value beside the measured mean ± std, per metric (:mod:`madcluster_exp.report.paper`);
- for an Optuna search (``hparams_search=...``) instead of the tables: the objective of every
  trial, the chosen trial's parameters and its test metrics only
  (:mod:`madcluster_exp.report.search`).
- where each detector stands (madcluster_exp/report_rank.py): per series and aggregate VUS-PR,
  AUC-PR, AUC-ROC, mean rank, ``cd_diagram.png``; a sanity column here and in the summary.

A configuration is one value of every swept parameter (every key that varies in the children's
overrides, e.g. each of an Optuna search's parameters) and of any other key that tells runs apart.

Everything is written under ``outputs/reports/<parent run id>/`` and logged as artifacts of the
parent run. Failed and killed jobs are listed and left out of the statistics.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd

from madcluster_exp.errors import ExpectedError, cli_errors
from madcluster_exp.plots import plot_score_timeline
from madcluster_exp.plots.sweep import KCurves, SweepCurves, plot_k_curves, plot_sweep_curves
from madcluster_exp.report import onoff, paper, search
from madcluster_exp.report.rank import rank_section, summary_sanity
from madcluster_exp.tracking import resolve_tracking_uri
from madcluster_exp.tracking.sweep import PARENT_FILE
from madcluster_exp.utils.cli_args import Option, parse

DEFAULT_METRICS = [
    "test/f1",
    "test/auc_roc",
    "test/auc_pr",
    "test/vus_roc",
    "test/vus_pr",
    "test/affiliation_precision",
    "test/affiliation_recall",
    "test/f1_oracle",
]
# The losses whose per-epoch history the training curves show.
CURVE_KEYS = ("train/loss", "val/loss")
# Parameters that identify a run but never define a configuration to compare.
NOT_A_FACTOR = {
    "seed",
    "search.trial",
    "tracking.run_name_suffix",
    "notes",
    "torch_threads",
    "paths.root_dir",
    "paths.output_dir",
}


# A paired t-test on fewer pairs than this says little; the report shows no p-value then.


class ReportError(ExpectedError, ValueError):
    pass


@dataclass
class Sweep:
    parent_id: str
    uri: str
    runs: pd.DataFrame  # one row per child run: params and final metrics
    failed: pd.DataFrame
    factors: List[str]  # params that vary across children (seed excluded)
    command: str = ""  # the sweep's command line (from the parent's hydra.overrides tag)


# --------------------------------------------------------------------------------- loading
def locate_parent(target: str, uri: Optional[str]):
    path = Path(target)
    if path.is_dir():
        info_path = path / PARENT_FILE
        if not info_path.exists():
            raise ReportError(
                f"{path}: no {PARENT_FILE}; is this a multirun sweep directory "
                "run with tracking=mlflow?"
            )
        info = json.loads(info_path.read_text())
        return info["run_id"], uri or info["tracking_uri"]
    return target, resolve_tracking_uri(uri, Path.cwd() / "outputs")


def load_sweep(parent_id: str, uri: str) -> Sweep:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    try:
        parent = client.get_run(parent_id)
    except MlflowException as exc:
        raise ReportError(f"no parent run {parent_id!r} in {uri}: {exc.message}") from None
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        max_results=50_000,
    )
    if not children:
        raise ReportError(f"run {parent_id} has no child runs in {uri}")
    rows = []
    for r in children:
        row = {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "status": r.info.status,
            "overrides": r.data.tags.get("hydra.overrides", ""),
        }
        row.update({f"param:{k}": v for k, v in r.data.params.items()})
        row.update(r.data.metrics)
        rows.append(row)
    df = pd.DataFrame(rows)
    ok = df["status"] == "FINISHED"
    overrides = parent.data.tags.get("hydra.overrides")
    command = f"python -m madcluster_exp -m {overrides}".strip() if overrides is not None else ""
    return Sweep(
        parent_id,
        uri,
        df[ok].reset_index(drop=True),
        df[~ok].reset_index(drop=True),
        sweep_factors(df[ok]),
        command,
    )


def _is_derived(name: str) -> bool:
    """Values a run computes (parameter counts, MACs, the effective score rule), not choices."""
    return "/" in name or name in {"score_rule", "data_window"}


def swept_keys(df: pd.DataFrame) -> List[str]:
    """Config keys set to more than one value in the children's command-line overrides (each
    parameter of a grid or an Optuna search), seed and group choices excluded."""
    values: dict = {}
    for text in df.get("overrides", pd.Series(dtype=str)).fillna(""):
        for item in str(text).split():
            key, _, value = item.lstrip("+~").partition("=")
            values.setdefault(key, set()).add(value)
    return sorted(
        k
        for k, v in values.items()
        if len(v) > 1 and f"param:{k}" in df and k not in NOT_A_FACTOR and not _is_derived(k)
    )


def sweep_factors(df: pd.DataFrame) -> List[str]:
    """The config keys that define the sweep's configurations, seed excluded: every swept
    parameter, then the other keys that vary, keeping only those that refine the grouping
    (choosing ``backbone=usad`` changes twenty ``backbone.*`` keys; ``backbone.name`` alone
    tells the configurations apart)."""
    candidates = [c[len("param:") :] for c in df.columns if c.startswith("param:")]
    candidates = [
        c
        for c in candidates
        if c not in NOT_A_FACTOR
        and not _is_derived(c)
        and df[f"param:{c}"].nunique(dropna=False) > 1
    ]
    candidates.sort(key=lambda c: (not c.endswith(".name"), c != "madcluster.enabled", c))
    swept = [c for c in swept_keys(df) if c in candidates]
    candidates = swept + [c for c in candidates if c not in swept]
    chosen: List[str] = []
    n_groups = 1
    for c in candidates:
        n = df.groupby([f"param:{k}" for k in chosen + [c]], dropna=False).ngroups
        if n > n_groups or c in swept:
            chosen.append(c)
            n_groups = n
    return chosen


# ---------------------------------------------------------------------------------- tables
def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.4f} ± {std:.4f}" if not math.isnan(std) else f"{mean:.4f}"


def summary_table(sweep: Sweep, metrics: Sequence[str]) -> pd.DataFrame:
    keys = [f"param:{f}" for f in sweep.factors]
    df = sweep.runs
    groups = df.groupby(keys, dropna=False, sort=True) if keys else [((), df)]
    rows = []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(sweep.factors, key))
        row["n"] = len(g)
        for m in metrics:
            vals = pd.to_numeric(g[m], errors="coerce") if m in g else pd.Series(dtype=float)
            row[f"{m} mean"] = float(vals.mean()) if len(vals) else float("nan")
            row[f"{m} std"] = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame, factors: Sequence[str], metrics: Sequence[str], kind: str) -> str:
    header = list(factors)
    if kind == "summary":
        header += ["n"] + list(metrics) + (["sanity"] if "sanity" in df else [])
    else:
        header += ["pairs"] + [f"{m} (on − off)" for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in df.iterrows():
        cells = [str(r.get(f, "")) for f in factors]
        if kind == "summary":
            cells.append(str(int(r["n"])))
            cells += [
                _fmt(r.get(f"{m} mean", float("nan")), r.get(f"{m} std", float("nan")))
                for m in metrics
            ]
            cells += [str(r["sanity"])] if "sanity" in r else []
        else:
            cells.append(str(int(r["pairs"])))
            for m in metrics:
                diff = r.get(f"{m} diff", float("nan"))
                if diff is None or (isinstance(diff, float) and math.isnan(diff)):
                    cells.append("n/a")
                    continue
                p = r.get(f"{m} p", float("nan"))
                sig = "" if math.isnan(p) else f" (p={p:.3g})"
                cells.append(f"{r[f'{m} off']:.4f} → {r[f'{m} on']:.4f}: {diff:+.4f}{sig}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------- what plots show
def k_curves(sweep: Sweep, metrics: Sequence[str]) -> KCurves:
    """Per metric, per group of the other factors (one unlabelled group when k is the only
    one): mean and std over seeds at each k."""
    df = sweep.runs.copy()
    df["k"] = pd.to_numeric(df["param:madcluster.k"])
    factors = [f for f in sweep.factors if f != "madcluster.k"]
    others = [f"param:{f}" for f in factors]
    out: KCurves = {}
    for m in metrics:
        groups = df.groupby(others, dropna=False) if others else [((), df)]
        out[m] = [
            (_group_label(factors, key), g.groupby("k")[m].agg(["mean", "std"]).sort_index())
            for key, g in groups
        ]
    return out


def _group_label(factors: Sequence[str], key) -> Optional[str]:
    """``backbone=knn, seed=0`` for a group's key; None for the one group of no factors."""
    key = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{f}={v}" for f, v in zip(factors, key)) or None


def configurations(sweep: Sweep) -> List[tuple]:
    """(label, runs) per configuration, in summary-table order: runs that share every factor
    (seeds pooled)."""
    keys = [f"param:{f}" for f in sweep.factors]
    if not keys:
        return [("all runs", sweep.runs)]
    out = []
    for key, g in sweep.runs.groupby(keys, dropna=False, sort=True):
        out.append((_group_label(sweep.factors, key), g))
    return out


def _history(client, run_id: str, key: str) -> pd.Series:
    hist = sorted(client.get_metric_history(run_id, key), key=lambda h: h.step)
    return pd.Series([h.value for h in hist], index=[h.step + 1 for h in hist], dtype=float)


def training_curves(sweep: Sweep) -> SweepCurves:
    """Per loss (train, val), per configuration: its runs' values, epochs (from 1) x runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep.uri)
    groups = configurations(sweep)
    return {
        key: [
            (label, pd.concat([_history(client, rid, key) for rid in g["run_id"]], axis=1))
            for label, g in groups
        ]
        for key in CURVE_KEYS
    }


def _file_label(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def score_timelines(sweep: Sweep, out_dir: Path) -> List[Path]:
    """One score timeline per configuration (its lowest seed), named after that run (the name
    carries the configuration id; the run id is added should two names still meet)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep.uri)
    paths: List[Path] = []
    seen = set()
    for label, g in configurations(sweep):
        r = g.sort_values("param:seed").iloc[0]
        try:
            local = client.download_artifacts(r["run_id"], "scores.npz", tempfile.mkdtemp())
        except Exception:  # noqa: BLE001 - a run without saved scores just gets no timeline
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


# ------------------------------------------------------------------------------------- main
def build_report(
    target: str,
    metrics: Optional[Sequence[str]] = None,
    uri: Optional[str] = None,
    out_root: Optional[Path] = None,
    log: bool = True,
    storage: Optional[str] = None,
) -> Path:
    parent_id, tracking_uri = locate_parent(target, uri)
    sweep = load_sweep(parent_id, tracking_uri)
    wanted = list(metrics or DEFAULT_METRICS)
    unknown = [m for m in wanted if m not in sweep.runs.columns]
    if unknown:
        have = sorted(c for c in sweep.runs.columns if "/" in c and not c.startswith("param:"))
        raise ReportError(f"report.metrics names {unknown}, which no run logged; available: {have}")
    out_dir = (out_root or Path("outputs/reports")) / parent_id
    out_dir.mkdir(parents=True, exist_ok=True)
    from mlflow.tracking import MlflowClient

    if search.search_tags(MlflowClient(tracking_uri), parent_id) is not None:
        # An Optuna search: objective per trial, test metrics of the chosen trial only.
        md, files = search.build_search_report(parent_id, tracking_uri, wanted, out_dir, storage)
        files.append(plot_sweep_curves(training_curves(sweep), out_dir / "training_curves.png"))
        return _finish(md, files, out_dir, parent_id, tracking_uri, log)
    files: List[Path] = []

    summary = summary_table(sweep, wanted)
    summary["sanity"] = summary_sanity(sweep, summary)
    summary.to_csv(out_dir / "summary.csv", index=False)
    md = [f"# Sweep {parent_id}", "", f"- MLflow parent run: `{parent_id}` ({tracking_uri})"]
    if sweep.command:
        md.append(f"- Sweep command: `{sweep.command}`")
    md += [
        f"- {len(sweep.runs)} finished runs"
        + (
            f", {len(sweep.failed)} failed or killed (left out): "
            + ", ".join(sweep.failed["run_name"].astype(str))
            if len(sweep.failed)
            else ""
        ),
        f"- Configurations ({len(summary)}) differ in: "
        + (", ".join(sweep.factors) or "nothing (seeds only)"),
        "",
        "## Mean ± std over seeds",
        "",
        to_markdown(summary, sweep.factors, wanted, "summary"),
    ]
    files += [out_dir / "summary.csv"]

    onoff_md, onoff_files = onoff.section(sweep, wanted, out_dir)
    md += onoff_md
    files += onoff_files
    paper_md, paper_files = paper.section(sweep.runs, out_dir)
    md += paper_md
    files += paper_files
    if "madcluster.k" in sweep.factors:
        files.append(plot_k_curves(k_curves(sweep, wanted[:4]), out_dir / "k_sweep.png"))
        md += ["", "## Number of clusters k", "", "![metrics against k](k_sweep.png)"]
    rank_md, rank_files = rank_section(sweep, out_dir)
    md += rank_md
    files += rank_files
    files.append(plot_sweep_curves(training_curves(sweep), out_dir / "training_curves.png"))
    md += ["", "## Training curves", "", "![training curves](training_curves.png)"]
    timelines = score_timelines(sweep, out_dir)
    files += timelines
    md += [
        "",
        f"## Score timelines (one per configuration, its lowest seed: {len(timelines)})",
        "",
    ] + [f"![{p.stem}]({p.name})" for p in timelines]
    return _finish(md, files, out_dir, parent_id, tracking_uri, log)


def _finish(
    md: List[str], files: List[Path], out_dir: Path, parent_id: str, tracking_uri: str, log: bool
) -> Path:
    """Write report.md, log every file to the parent run (when asked), print the report."""
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    files.insert(0, out_dir / "report.md")
    if log:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        for f in files:
            client.log_artifact(parent_id, str(f), "report")
    print("\n".join(md))
    print(
        f"\nreport written to {out_dir} and logged to parent run {parent_id}"
        if log
        else f"\nreport written to {out_dir}"
    )
    return out_dir


OPTIONS = {
    "target": Option("parent run id or sweep directory", required=True),
    "report.metrics": Option("metrics to tabulate, e.g. [test/f1,test/vus_pr]", kind=list),
    "uri": Option("tracking uri (default: the sweep's, else $MLFLOW_TRACKING_URI)"),
    "out": Option("output folder (default: outputs/reports/<parent id>)"),
    "log": Option("log the report as artifacts of the parent run", kind=bool, default=True),
    "storage": Option(
        "Optuna storage of a search's shared study (default: "
        f"${search.STORAGE_ENV}, else the sweep's optuna.storage tag)"
    ),
}


@cli_errors
def main(argv: Optional[List[str]] = None) -> int:
    args = parse(
        sys.argv[1:] if argv is None else argv,
        OPTIONS,
        __doc__.split("\n\n")[1],
        positional="target",
    )
    build_report(
        args["target"],
        args["report.metrics"],
        args["uri"],
        Path(args["out"]) if args["out"] else None,
        args["log"],
        args["storage"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
