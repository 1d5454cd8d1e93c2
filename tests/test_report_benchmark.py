"""A benchmark sweep's report, from a real SQLite MLflow store written with MlflowClient (no
training): arms are detectors, failed series runs are counted (collapse as a sanity flag), the
on − off gain splits into its representation and score parts, anomaly-free series are named
once, and ``published=`` ranks the sweep among TSB-AD's published detectors.

The store: a sweep parent; per detector (knn; usad off, on, on_backbone_only) and seed (0, 1) a
job run (a collection, dataset.mode=per_entity, protocol=tsbad); under each job one series run
per file, as pipeline/collection.py writes them (tags ``series``, ``series.file``; a failed
series: status FAILED, tags ``error`` and ``failure.kind``; the job: ``collection.failed``)."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ttest_rel

from madcluster_exp.report.build import build_report, main
from madcluster_exp.report.sections.onoff import FEW_PAIRS, POOLED, parts_table
from madcluster_exp.report.source import read_published
from madcluster_exp.report.sweep import ReportError

METRICS = ["test/vus_pr", "test/auc_pr", "test/auc_roc"]
FILES = [f"10{i}_X_id_{i}_Fixture_tr_100_1st_200.csv" for i in range(1, 6)]
STEMS = [Path(f).stem for f in FILES]
FREE = STEMS[3]  # no anomaly in its test part: every VUS-PR / AUC undefined
UNPUBLISHED = STEMS[4]  # not in the published table
#: (backbone, family, madcluster.enabled, scoring.combine): base VUS-PR
DETECTORS = {
    ("knn", "classical", "False", "sum"): 0.30,
    ("usad", "reconstruction", "False", "sum"): 0.40,
    ("usad", "reconstruction", "True", "backbone_only"): 0.45,
    ("usad", "reconstruction", "True", "sum"): 0.55,
}
#: (detector name, seed, file index): (failure.kind tag or None, error)
FAILED = {
    ("usad/on", 1, 1): ("collapse", "CollapseError: MADCluster score constant on validation"),
    ("usad/off", 0, 2): (None, "RuntimeError: out of memory"),
    ("knn", 1, 4): ("data", "DataError: too short for the window"),
}
PUBLISHED = pd.DataFrame(
    {
        "file": [FILES[0], FILES[1], FILES[2], FILES[3], "999_Other_id_9_X_tr_1_1st_2.csv"],
        "IForest": [0.50] * 5,
        "LOF": [0.60, np.nan, 0.60, 0.60, 0.60],  # no published value on the second file
        "Sub-KNN": [0.20] * 5,
        "ts_len": [1000] * 5,
        "anomaly_ratio": [0.05] * 5,
    }
)


def name(backbone: str, family: str, enabled: str, combine: str) -> str:
    if family == "classical":
        return backbone
    arm = "off" if enabled == "False" else "on_backbone_only" if combine == "bo" else "on"
    return f"{backbone}/{arm}"


def detector_name(key) -> str:
    backbone, family, enabled, combine = key
    return name(backbone, family, enabled, "bo" if combine == "backbone_only" else combine)


def vus(key, seed: int, i: int) -> float:
    """test/vus_pr of a series run (test/tsbad/vus_pr: 0.01 lower, so the two differ)."""
    return DETECTORS[key] + 0.02 * i + 0.01 * seed


def _metrics(value: float) -> dict:
    return {
        "test/vus_pr": value,
        "test/tsbad/vus_pr": value - 0.01,
        "test/auc_pr": value - 0.05,
        "test/auc_roc": 0.5 + value / 2,
        "sanity/score_mode_fraction": 0.01,
        "sanity/score_relative_range": 1.0,
    }


def make_store(root: Path):
    """The sweep above in ``root/mlflow.db``: (tracking uri, parent run id)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("madcluster_exp", artifact_location=str(root / "artifacts"))
    parent = client.create_run(exp, tags={"sweep": "parent"}, run_name="benchmark")
    pid = parent.info.run_id
    client.set_tag(pid, "hydra.overrides", "experiment=benchmark dataset=collection")
    for key in DETECTORS:
        backbone, family, enabled, combine = key
        det = detector_name(key)
        for seed in (0, 1):
            params = {
                "backbone.name": backbone,
                "backbone.family": family,
                "madcluster.enabled": enabled,
                "scoring.combine": combine,
                "seed": str(seed),
                "dataset.name": "collection",
                "dataset.mode": "per_entity",
                "protocol": "tsbad",
            }
            madcluster = "off" if enabled == "False" else "on"
            overrides = f"backbone={backbone} madcluster={madcluster} seed={seed}"
            job = client.create_run(
                exp,
                run_name=f"{det}-s{seed}",
                tags={"mlflow.parentRunId": pid, "hydra.overrides": overrides},
            )
            jid = job.info.run_id
            p = [Param(k, v) for k, v in params.items()]
            values, failed = [], 0
            for i, (file, stem) in enumerate(zip(FILES, STEMS)):
                tags = {
                    "mlflow.parentRunId": jid,
                    "series": stem,
                    "series.file": file,
                    "series.format": "tsbad",
                }
                child = client.create_run(exp, run_name=f"{det}-s{seed}/{stem}", tags=tags)
                cid = child.info.run_id
                failure = FAILED.get((det, seed, i))
                if failure:
                    kind, error = failure
                    t = [RunTag("error", error)] + ([RunTag("failure.kind", kind)] if kind else [])
                    client.log_batch(cid, params=p, tags=t)
                    client.set_terminated(cid, "FAILED")
                    failed += 1
                    continue
                value = np.nan if stem == FREE else vus(key, seed, i)
                values.append(value)
                m = [Metric(k, v, 0, 0) for k, v in _metrics(value).items()]
                client.log_batch(cid, metrics=m, params=p)
                client.set_terminated(cid, "FINISHED")
            pooled = _metrics(float(np.nanmean(values)))
            client.log_batch(
                jid,
                metrics=[Metric(k, v, 0, 0) for k, v in pooled.items()],
                params=p,
                tags=[RunTag("collection.failed", str(failed))],
            )
            client.set_terminated(jid, "FINISHED")
    client.set_terminated(pid, "FINISHED")
    return uri, pid


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report of the sweep, with the published table: (out dir, report.md text). The store
    lives in memory where the system has a tmpfs (/dev/shm): SQLite's commits (MLflow's schema
    migrations alone are dozens) cost seconds on a disk."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        root = Path(tempfile.mkdtemp(prefix="bench_report", dir=shm))
    else:
        root = tmp_path_factory.mktemp("bench_report")
    try:
        yield _report(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _report(root: Path):
    uri, pid = make_store(root)
    published = root / "uni_mergedTable_VUS-PR.csv"
    PUBLISHED.to_csv(published, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # anomaly-free series: words, no warning
        out = build_report(pid, METRICS, uri, root / "reports", log=False, published=published)
    return out, (out / "report.md").read_text()


def _row(md: str, start: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(start))


def test_every_arm_is_its_own_detector_and_a_series_is_a_series(report):
    out, md = report
    table = pd.read_csv(out / "rank_table.csv").set_index("detector")
    assert list(table.index) == ["usad/on", "usad/on_backbone_only", "usad/off", "knn"]
    assert table["series"].tolist() == [5, 5, 5, 5]  # five files, not ten
    # Ranked on the four series with an anomaly; the order holds on each of them.
    assert table["mean rank"].tolist() == [1.0, 2.0, 3.0, 4.0]
    per_series = pd.read_csv(out / "rank_per_series.csv")
    assert sorted(set(per_series["series"])) == STEMS
    cd = out / "cd_diagram.png"
    assert cd.stat().st_size > 0
    assert "Friedman + Nemenyi over 4 series" in md


def test_failures_are_counted_per_detector_and_collapse_is_a_sanity_flag(report):
    out, md = report
    table = pd.read_csv(out / "rank_table.csv").set_index("detector")
    assert table.loc["usad/on", "failed"] == "collapse 1"
    assert table.loc["usad/off", "failed"] == "error 1"
    assert table.loc["knn", "failed"] == "data 1"
    assert table.loc["usad/on_backbone_only", "failed"] == "0"
    per_series = pd.read_csv(out / "rank_per_series.csv").set_index(["detector", "series"])
    cell = per_series.loc[("usad/on", STEMS[1])]
    assert cell["sanity"] == "MADCluster score constant on validation: 1 of 2 seeds"
    assert cell["seeds"] == 1
    # The seed that finished still counts: its value is the cell's mean.
    key = ("knn", "classical", "False", "sum")
    assert per_series.loc[("usad/on", STEMS[1]), "test/vus_pr"] == pytest.approx(
        vus(("usad", "reconstruction", "True", "sum"), 0, 1)
    )
    assert per_series.loc[("knn", UNPUBLISHED), "test/vus_pr"] == pytest.approx(vus(key, 0, 4))
    assert "MADCluster score constant on validation on 1/5 series" in table.loc["usad/on", "sanity"]
    assert "- 40 series runs: 37 finished, 3 failed (collapse 1, error 1, data 1;" in md


def test_anomaly_free_series_are_named_once_and_means_are_over_defined_series(report):
    out, md = report
    assert md.count(FREE) >= 1
    line = _row(md, "No anomaly in the test part of 1 series")
    assert line.endswith(f": {FREE}")
    assert "Left out of the ranks" not in md  # the anomaly-free series is not "missing"
    table = pd.read_csv(out / "rank_table.csv").set_index("detector")
    assert table.loc["knn", "test/vus_pr n"] == 4
    key = ("knn", "classical", "False", "sum")
    expected = np.mean(
        [np.mean([vus(key, s, i) for s in (0, 1) if (i, s) != (4, 1)]) for i in (0, 1, 2, 4)]
    )
    assert table.loc["knn", "test/vus_pr"] == pytest.approx(expected)
    assert _row(md, "| knn | 5 | ").split(" | ")[2] == f"{expected:.4f} (on 4)"


def test_the_gain_splits_into_representation_and_score_parts(report):
    out, md = report
    parts = pd.read_csv(out / "onoff_parts.csv").set_index("series")
    assert set(parts["backbone"]) == {"usad"}
    assert list(parts.index) == [STEMS[0], STEMS[1], STEMS[2], UNPUBLISHED, POOLED]
    m = "test/vus_pr"
    first = parts.loc[STEMS[0]]
    assert first[f"{m} pairs"] == 2
    assert first[f"{m} representation"] == pytest.approx(0.05)
    assert first[f"{m} score"] == pytest.approx(0.10)
    assert first[f"{m} total"] == pytest.approx(0.15)
    assert parts.loc[STEMS[1], f"{m} pairs"] == 1  # usad/on's seed 1 collapsed there
    pooled = parts.loc[POOLED]
    assert pooled[f"{m} pairs"] == 4 and np.isnan(pooled[f"{m} representation p"])  # < FEW_PAIRS
    arms = {
        a: [
            np.mean([vus(k, s, i) for s in (0, 1) if (detector_name(k), s, i) not in FAILED])
            for i in (0, 1, 2, 4)
        ]
        for a, k in (
            ("off", ("usad", "reconstruction", "False", "sum")),
            ("bo", ("usad", "reconstruction", "True", "backbone_only")),
            ("on", ("usad", "reconstruction", "True", "sum")),
        )
    }
    assert pooled[f"{m} representation"] == pytest.approx(
        np.mean(np.subtract(arms["bo"], arms["off"]))
    )
    assert pooled[f"{m} score"] == pytest.approx(np.mean(np.subtract(arms["on"], arms["bo"])))
    assert "### Where the gain comes from (VUS-PR" in md
    assert _row(md, f"| usad | {STEMS[0]} | 2 | ").endswith("| +0.0500 | +0.1000 | +0.1500 |")


def test_the_parts_carry_a_paired_test_from_few_pairs_on():
    seeds = range(FEW_PAIRS)
    off = [0.40, 0.42, 0.41, 0.45, 0.43]
    bo = [0.46, 0.45, 0.49, 0.47, 0.50]
    on = [0.55, 0.58, 0.56, 0.60, 0.57]
    rows = [
        {
            "backbone": "usad",
            "arm": arm,
            "seed": s,
            "series": "s",
            "status": "FINISHED",
            "param:backbone.name": "usad",
            "test/vus_pr": v[s],
        }
        for arm, v in (("off", off), ("on_backbone_only", bo), ("on", on))
        for s in seeds
    ]
    table = parts_table(
        pd.DataFrame(rows), ["madcluster.enabled", "scoring.combine"], ["test/vus_pr"]
    )
    (row,) = table.to_dict("records")
    assert row["test/vus_pr pairs"] == FEW_PAIRS
    assert row["test/vus_pr representation p"] == pytest.approx(ttest_rel(bo, off).pvalue)
    assert row["test/vus_pr score p"] == pytest.approx(ttest_rel(on, bo).pvalue)
    assert row["test/vus_pr total"] == pytest.approx(np.mean(on) - np.mean(off))


def test_published_ranks_the_sweep_among_tsbad_detectors_on_the_files_it_ran(report):
    out, md = report
    board = pd.read_csv(out / "leaderboard.csv").set_index("detector")
    assert list(board.index) == [
        "usad/on",
        "IForest",
        "usad/on_backbone_only",
        "usad/off",
        "knn",
        "Sub-KNN",
    ]
    assert board["mean rank"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert board.loc["IForest", "source"] == "published"
    assert board.loc["usad/on", "source"] == "measured"
    assert board.loc["usad/on", "protocol"] == "tsbad"
    assert board.loc["usad/on", "key"] == "test/tsbad/vus_pr"  # TSB-AD's own definition
    assert set(board["files"]) == {3}  # files 1-3: the fourth has no anomaly, the fifth no row
    # usad/off on the third file: seed 0 failed, seed 1's TSB-AD VUS-PR
    off = ("usad", "reconstruction", "False", "sum")
    expected = np.mean([vus(off, 0, 0) + 0.005, vus(off, 0, 1) + 0.005, vus(off, 1, 2)]) - 0.01
    assert board.loc["usad/off", "mean VUS-PR"] == pytest.approx(expected)
    assert f"Not in the published table (1 of 5 series; left out): {UNPUBLISHED}" in md
    assert (
        "Published detectors left out (no published value on some of the ranked files): "
        "LOF (1 of 3)" in md
    )
    assert f"{FILES[3]}: " in _row(md, "Files left out (a measured detector has no value)")
    assert "LOF" not in board.index and "999_Other" not in md
    assert (out / "cd_diagram_published.png").stat().st_size > 0
    assert "| usad/on | measured | tsbad | test/tsbad/vus_pr | 3 |" in md


def test_published_table_is_read_and_checked(tmp_path):
    good = tmp_path / "uni_mergedTable_AUC-PR.csv"
    PUBLISHED.to_csv(good, index=False)
    table = read_published(good)
    assert table.metric == "AUC-PR"
    assert list(table.values.columns) == ["IForest", "LOF", "Sub-KNN"]  # description columns out
    odd = tmp_path / "results.csv"
    PUBLISHED.to_csv(odd, index=False)
    with pytest.raises(ReportError, match="published.metric=<label>"):
        read_published(odd)
    assert read_published(odd, "VUS-PR").metric == "VUS-PR"
    (tmp_path / "bad.csv").write_text("name,IForest\na,0.1\n")
    with pytest.raises(ReportError, match="no 'file' column"):
        read_published(tmp_path / "bad.csv", "VUS-PR")


def test_the_cli_names_published_in_its_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "published=<TSB-AD per-file results csv>" in text
    assert "published.metric" in text
