"""Tables and plots across the runs of a sweep, from MLflow.

    python -m madcluster_exp.report <parent-run-id | sweep dir>
        [report.metrics=[test/f1,test/vus_pr,...]] [uri=<tracking uri>] [out=<dir>]
        [storage=<optuna storage of a search>] [published=<TSB-AD per-file results csv>]

- ``summary.md`` / ``summary.csv``: every configuration of the sweep (the parameters that vary,
  seeds pooled) with mean ± std over seeds of each chosen metric (default: the metrics the
  catalog, madcluster_exp/metrics/catalog.py, shows in reports);
- ``onoff.md`` / ``onoff.csv`` (when MADCluster was swept off/on): per configuration the on - off
  difference, paired by seed, with a paired t-test (two-sided p-value; n = number of pairs;
  no p-value below onoff.FEW_PAIRS pairs, and the report says so);
- plots (PNG, embedded in report.md, drawn by madcluster_exp/plots/): metric bars off vs on
  with std over seeds, k-sweep curves (when madcluster.k varies), training curves (one line per
  configuration: mean over seeds, bars = min..max), and one score timeline per configuration
  (its first seed), without a cap.
- ``paper_vs_measured.csv`` (when runs measure a figure the paper published): the published
  value beside the measured mean ± std, per metric (:mod:`madcluster_exp.report.sections.paper`);
- for an Optuna search (``hparams_search=...``) instead of the tables: the objective of every
  trial, the chosen trial's parameters and its test metrics only
  (:mod:`madcluster_exp.report.sections.search`).
- where each detector stands (:mod:`madcluster_exp.report.sections.rank`): per series and
  aggregate VUS-PR, AUC-PR, AUC-ROC, mean rank, ``cd_diagram.png``; a sanity column here and in
  the summary. Arms are detectors (``usad/off``, ``usad/on``, ``usad/on_backbone_only``);
  failed runs are counted per detector (collapse, data, error), not dropped silently.
- with ``published=<csv>`` (TSB-AD's per-file table, e.g. ``uni_mergedTable_VUS-PR.csv``): the
  sweep's detectors ranked among the published ones on the files the sweep ran
  (:mod:`madcluster_exp.report.sections.leaderboard`): ``leaderboard.csv``,
  ``cd_diagram_published.png``, each row marked published or measured, with its protocol.

A configuration is one value of every swept parameter (every key that varies in the children's
overrides, e.g. each of an Optuna search's parameters) and of any other key that tells runs apart.

Everything is written under ``outputs/reports/<parent run id>/`` and logged as artifacts of the
parent run. Failed and killed jobs are listed and left out of the statistics.

The report is assembled here from its sections (report/sections/, one module each, listed in
order below); report/source.py reads everything they need from MLflow first.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Sequence

from madcluster_exp.errors import cli_errors
from madcluster_exp.metrics.catalog import report_keys
from madcluster_exp.report import source
from madcluster_exp.report.sections import (
    Context,
    curves,
    kcurves,
    leaderboard,
    onoff,
    paper,
    rank,
    search,
    summary,
    timelines,
)
from madcluster_exp.report.sweep import ReportError
from madcluster_exp.utils.cli_args import Option, parse

#: A sweep's report, section by section.
SECTIONS = (
    summary.section,
    onoff.section,
    paper.section,
    paper.complexity_section,
    kcurves.section,
    rank.section,
    leaderboard.section,
    curves.section,
    timelines.section,
)
#: An Optuna search's report: its trials and chosen trial, and the training curves' figure.
SEARCH_SECTIONS = (search.section, curves.figure)


def build_report(
    target: str,
    metrics: Optional[Sequence[str]] = None,
    uri: Optional[str] = None,
    out_root: Optional[Path] = None,
    log: bool = True,
    storage: Optional[str] = None,
    published: Optional[Path] = None,
    published_metric: Optional[str] = None,
) -> Path:
    table = source.read_published(published, published_metric) if published else None
    parent_id, tracking_uri = source.locate_parent(target, uri)
    sweep = source.load_sweep(parent_id, tracking_uri)
    wanted = list(metrics or report_keys())
    unknown = [m for m in wanted if m not in sweep.runs.columns]
    if unknown:
        have = sorted(c for c in sweep.runs.columns if "/" in c and not c.startswith("param:"))
        raise ReportError(f"report.metrics names {unknown}, which no run logged; available: {have}")
    out_dir = (out_root or Path("outputs/reports")) / parent_id
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep = source.read_details(sweep, storage)
    ctx = Context(out_dir, tuple(wanted), table)
    parts = [s(sweep, ctx) for s in (SECTIONS if sweep.search is None else SEARCH_SECTIONS)]
    md = "\n".join(p.markdown for p in parts if p.markdown)
    files = [f for p in parts for f in p.files]
    return _finish(md, files, out_dir, parent_id, tracking_uri, log)


def _finish(
    md: str, files: List[Path], out_dir: Path, parent_id: str, tracking_uri: str, log: bool
) -> Path:
    """Write report.md, log every file to the parent run (when asked), print the report."""
    (out_dir / "report.md").write_text(md + "\n")
    files.insert(0, out_dir / "report.md")
    if log:
        source.log_report(tracking_uri, parent_id, files)
    print(md)
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
        f"${source.STORAGE_ENV}, else the sweep's optuna.storage tag)"
    ),
    "published": Option(
        "TSB-AD's published per-file results (e.g. uni_mergedTable_VUS-PR.csv): rank the "
        "sweep's detectors among its detectors on the files the sweep ran"
    ),
    "published.metric": Option(
        "the metric the published table holds (VUS-PR, AUC-PR, AUC-ROC; default: from its "
        "file name)"
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
        Path(args["published"]) if args["published"] else None,
        args["published.metric"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
