"""The report's package shape: sections are pure functions of a sweep (no MLflow), only
report/source.py talks to MLflow, and report/ has no import cycle, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest

from madcluster_exp.report import build
from madcluster_exp.report.sections import Context
from madcluster_exp.report.sweep import Sweep

REPORT = Path(build.__file__).resolve().parent
PACKAGE = "madcluster_exp.report"
# What a section may import from the package (besides its own package's Context/Section).
SECTION_MAY_IMPORT = (
    "madcluster_exp.report.sweep",
    "madcluster_exp.report.tables",
    "madcluster_exp.report.sections",
    "madcluster_exp.plots",
    "madcluster_exp.metrics",
    "madcluster_exp.evaluation.sanity",
)


def _module(path: Path) -> str:
    parts = path.relative_to(REPORT.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set:
    """Every module ``path`` imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


MODULES = {_module(p): _imports(p) for p in sorted(REPORT.rglob("*.py"))}


def test_report_has_no_import_cycle_lazy_imports_included():
    edges = {
        m: {t for t in imports if t in MODULES and t != m and t != PACKAGE}
        for m, imports in MODULES.items()
    }
    done, path = set(), []

    def visit(m):
        assert m not in path, f"import cycle: {' -> '.join(path[path.index(m) :] + [m])}"
        if m in done:
            return
        path.append(m)
        for t in edges[m]:
            visit(t)
        path.pop()
        done.add(m)

    for m in edges:
        visit(m)


def test_sections_import_only_the_sweep_tables_plots_metrics_and_sanity():
    for m, imports in MODULES.items():
        if not m.startswith(f"{PACKAGE}.sections."):
            continue
        ours = {i for i in imports if i.startswith("madcluster_exp")}
        bad = {i for i in ours if not i.startswith(SECTION_MAY_IMPORT)}
        assert not bad, f"{m} imports {sorted(bad)}"
        assert not {i for i in imports if i.split(".")[0] in ("mlflow", "optuna")}, m


def test_only_source_talks_to_mlflow():
    users = sorted(
        m for m, imports in MODULES.items() if any(i.split(".")[0] == "mlflow" for i in imports)
    )
    assert users == [f"{PACKAGE}.source"]


def _sweep() -> Sweep:
    """Two configurations (MADCluster off, on) x 3 seeds, held in memory only."""
    rows = []
    for on in (False, True):
        for seed in range(3):
            rows.append(
                {
                    "run_id": f"r{int(on)}{seed}",
                    "run_name": f"mine-{'on' if on else 'off'}-s{seed}",
                    "param:seed": str(seed),
                    "param:madcluster.enabled": str(on),
                    "param:backbone.name": "mine",
                    "param:scoring.combine": "sum",
                    "test/f1": 0.5 + 0.1 * on + 0.01 * seed,
                    "test/vus_pr": 0.4 + 0.05 * on + 0.02 * seed,
                    "test/auc_pr": 0.3 + 0.01 * seed,
                    "test/auc_roc": 0.7 - 0.01 * seed,
                }
            )
    runs = pd.DataFrame(rows)
    history = pd.DataFrame({0: [1.0, 0.5], 1: [1.1, 0.6]}, index=[1, 2])
    curves = {
        k: [(f"madcluster.enabled={on}", history) for on in (False, True)]
        for k in ("train/loss", "val/loss")
    }
    return Sweep("p", "sqlite:////nonexistent/mlflow.db", runs, runs.iloc[:0], [], "", curves)


def test_every_section_is_a_pure_function_of_the_sweep(tmp_path, monkeypatch):
    import mlflow.tracking

    def no_mlflow(*args, **kwargs):
        raise AssertionError("a section read MLflow")

    monkeypatch.setattr(mlflow.tracking.MlflowClient, "__init__", no_mlflow)
    sweep = _sweep()
    sweep.factors = ["madcluster.enabled"]
    ctx = Context(tmp_path, ("test/f1", "test/vus_pr"))
    parts = [section(sweep, ctx) for section in build.SECTIONS]
    md = "\n".join(p.markdown for p in parts if p.markdown)
    assert md.startswith("# Sweep p\n")
    for heading in ("## Mean ± std over seeds", "## MADCluster on − off", "## Training curves"):
        assert heading in md
    assert "| madcluster.enabled | n | test/f1 | test/vus_pr | sanity |" in md
    files = [f for p in parts for f in p.files]
    assert files and all(f.exists() and f.parent == tmp_path for f in files)
    assert {f.name for f in files} >= {"summary.csv", "onoff.csv", "training_curves.png"}


@pytest.mark.parametrize("factors", [[], ["madcluster.enabled"]])
def test_a_section_with_nothing_to_say_adds_nothing(tmp_path, factors):
    from madcluster_exp.report.sections import kcurves, onoff, paper

    sweep = _sweep()
    sweep.factors = factors
    ctx = Context(tmp_path, ("test/f1",))
    assert kcurves.section(sweep, ctx).markdown == ""  # k not swept
    assert paper.section(sweep, ctx).markdown == ""  # a backbone the paper has no figure of
    assert (onoff.section(sweep, ctx).markdown == "") == (factors == [])


def test_timelines_say_which_seed_they_draw_and_paper_omits_datasets_without_figures(tmp_path):
    """The timelines' heading names the seed (not the count as a seed); a dataset the paper
    has no figure of is named once, with no table of n/a."""
    import numpy as np

    from madcluster_exp.report.sections import paper, timelines

    sweep = _sweep()
    sweep.factors = ["madcluster.enabled"]
    labels = np.r_[np.zeros(40), np.ones(10)]
    for rid in ("r00", "r10"):  # each configuration's lowest seed
        np.savez(tmp_path / f"{rid}.npz", test_score=labels + 0.1, test_label=labels, threshold=0.5)
        sweep.scores[rid] = tmp_path / f"{rid}.npz"
    md = timelines.section(sweep, Context(tmp_path, ("test/f1",))).markdown
    assert "## Score timelines (2 configurations, each its lowest seed: seed 0)" in md
    runs = sweep.runs.assign(**{"param:backbone.name": "usad", "param:dataset.name": "synthetic"})
    runs["test/vus_pr_entity_mean"] = runs["test/vus_pr"]
    sweep.runs = runs
    md = paper.section(sweep, Context(tmp_path, ("test/f1",))).markdown
    assert "No published figure for dataset synthetic (in Table 2): measured, not compared." in md
    assert "n/a" not in md and "###" not in md
    assert not (tmp_path / "paper_vs_measured.csv").exists()


def test_the_logged_report_links_its_images_as_mlflows_preview_resolves_them():
    from madcluster_exp.report.source import mlflow_image_links

    md = "## On/off\n\n![on/off bars](onoff_bars.png)\n\nsee [the csv](onoff.csv)\n"
    out = mlflow_image_links(md, "abc123")
    assert "![on/off bars](get-artifact?path=report%2Fonoff_bars.png&run_uuid=abc123)" in out
    assert "[the csv](onoff.csv)" in out  # only images are rewritten
    assert mlflow_image_links("![x](https://example.org/a.png)", "r") == (
        "![x](https://example.org/a.png)"
    )
