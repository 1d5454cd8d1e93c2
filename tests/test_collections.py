"""Collections of series (dataset=collection): format detection, labels, training prefixes,
bad files skipped with their reason, and a real run with one MLflow child run per series."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException

from madcluster_exp.app import run
from madcluster_exp.config import ConfigError, validate
from madcluster_exp.data import DataError, load_dataset
from madcluster_exp.data.collection import TIMEEVAL, TSBAD, UCR, scan_collection
from madcluster_exp.report.source import series_results
from tests.conftest import compose_config
from tests.dataset_fixtures import make_timeeval, make_tsbad, make_ucr


def _cfg(folder: Path, *overrides: str):
    return compose_config(["dataset=collection", f"dataset.path={folder}", *overrides])


def _series(folder: Path, name: str, *overrides: str):
    """(train values, test values, test labels) of one series, the test split unsealed."""
    raw = load_dataset(_cfg(folder, *overrides).dataset, folder).subset(name)
    raw.test.unseal()
    test = raw.test.get()
    return raw.train.values, test.values, test.labels


# ----------------------------------------------------------------------------- detection
def test_formats_are_detected_by_name_and_header(tmp_path):
    uni, _, _ = make_tsbad(tmp_path, 1)
    multi, _, _ = make_tsbad(tmp_path, 2, channels=3)
    ucr, _ = make_ucr(tmp_path, 3)
    make_timeeval(tmp_path / "machine.csv")
    make_timeeval(tmp_path / "machine.train.csv", anomaly=(0, 0))
    # Content decides: a TSB-AD-like name whose header is TimeEval's is read as TimeEval.
    make_timeeval(tmp_path / "004_X_id_4_Web_tr_100_1st_250.csv")
    make_timeeval(tmp_path / "orphan.train.csv", anomaly=(0, 0))
    (tmp_path / "notes.md").write_text("not data\n")
    (tmp_path / "readings.txt").write_text("1\n2\n3\n")
    (tmp_path / "no_prefix.csv").write_text("Data,Label\n1.0,0\n2.0,1\n")
    (tmp_path / "other.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "sub").mkdir()
    series, skipped = scan_collection(tmp_path)
    assert [(s.name, s.format) for s in series] == [
        (uni.stem, TSBAD),
        (multi.stem, TSBAD),
        (ucr.stem, UCR),
        ("004_X_id_4_Web_tr_100_1st_250", TIMEEVAL),
        ("machine", TIMEEVAL),
    ]
    assert series[-1].train_path == tmp_path / "machine.train.csv"
    assert series[-2].train_path is None
    reasons = {s.file: s.reason for s in skipped}
    assert set(reasons) == {
        "notes.md",
        "readings.txt",
        "no_prefix.csv",
        "other.csv",
        "orphan.train.csv",
        "sub",
    }
    assert "not a series file" in reasons["notes.md"]
    assert "_UCR_Anomaly_" in reasons["readings.txt"]
    assert "no '_tr_<n>_' in the file name" in reasons["no_prefix.csv"]
    assert "neither a last column 'Label'" in reasons["other.csv"]
    assert "without its series orphan.csv" in reasons["orphan.train.csv"]
    assert "not read recursively" in reasons["sub"]


# ------------------------------------------------------------------------ labels & prefixes
@pytest.mark.parametrize("one_line", [False, True], ids=["one-per-line", "all-on-one-line"])
def test_ucr_anomaly_is_one_based_inclusive_and_training_is_the_prefix(tmp_path, one_line):
    path, x = make_ucr(tmp_path, 7, n=400, train_end=150, begin=261, end=280, one_line=one_line)
    train, test, labels = _series(tmp_path, path.stem)
    np.testing.assert_allclose(train[:, 0], x[:150], rtol=1e-6)
    np.testing.assert_allclose(test[:, 0], x[150:], rtol=1e-6)
    # Values 261..280 (1-based, inclusive) are rows 260..279; the test part starts at row 150.
    np.testing.assert_array_equal(np.flatnonzero(labels), np.arange(260, 280) - 150)
    _, whole, labels = _series(tmp_path, path.stem, "dataset.test_part=whole")
    assert len(whole) == 400
    np.testing.assert_array_equal(np.flatnonzero(labels), np.arange(260, 280))


def test_tsbad_training_prefix_from_the_name_univariate_and_multivariate(tmp_path):
    for channels in (1, 3):
        path, x, y = make_tsbad(tmp_path, channels, n=400, n_train=120, channels=channels)
        train, test, labels = _series(tmp_path, path.stem)
        assert train.shape == (120, channels) and test.shape == (280, channels)
        np.testing.assert_allclose(train, x[:120], atol=1e-5)
        np.testing.assert_allclose(test, x[120:], atol=1e-5)
        np.testing.assert_array_equal(labels, y[120:])


def test_timeeval_uses_its_train_file_else_the_leading_fraction(tmp_path):
    train_x, _ = make_timeeval(tmp_path / "a.train.csv", n=200, seed=1, anomaly=(0, 0))
    x, y = make_timeeval(tmp_path / "a.csv", n=300, seed=2, anomaly=(100, 120))
    train, test, labels = _series(tmp_path, "a")
    np.testing.assert_allclose(train, train_x, atol=1e-5)
    np.testing.assert_allclose(test, x, atol=1e-5)
    np.testing.assert_array_equal(labels, y)
    x, y = make_timeeval(tmp_path / "b.csv", n=400, seed=3)
    train, test, labels = _series(tmp_path, "b", "dataset.train_fraction=0.25")
    assert len(train) == 100 and len(test) == 300
    np.testing.assert_array_equal(labels, y[100:])


def test_entities_select_series_by_name(tmp_path):
    make_tsbad(tmp_path, 1)
    make_timeeval(tmp_path / "a.csv")
    assert load_dataset(_cfg(tmp_path, "dataset.entities=[a]").dataset, tmp_path).entities == ["a"]
    with pytest.raises(DataError, match=r"\['zzz'\].*available"):
        load_dataset(_cfg(tmp_path, "dataset.entities=[zzz]").dataset, tmp_path)


# ---------------------------------------------------------------------------------- bad files
def _edit_line(path: Path, i: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[i] = text
    path.write_text("\n".join(lines) + "\n")


def _bad_ucr_token(folder):
    path, _ = make_ucr(folder, 1)
    _edit_line(path, 6, "1.5e-1x")
    return path


def _bad_ucr_token_one_line(folder):
    path, _ = make_ucr(folder, 1, one_line=True)
    tokens = path.read_text().split()
    tokens[41] = "n/a"
    path.write_text(" ".join(tokens) + "\n")
    return path


def _bad_tsbad_label(folder):
    path, _, _ = make_tsbad(folder, 1)
    _edit_line(path, 31, "0.5,2")
    return path


def _bad_timeeval_train_width(folder):
    make_timeeval(folder / "m.train.csv", channels=3, anomaly=(0, 0))
    make_timeeval(folder / "m.csv", channels=2)
    return folder / "m.csv"


@pytest.mark.parametrize(
    "write,match",
    [
        (
            _bad_ucr_token,
            r"001_UCR_Anomaly_Fixture_150_261_280.txt: line 7, value 1: '1.5e-1x' "
            r"is not a number",
        ),
        (_bad_ucr_token_one_line, r"line 1, value 42: 'n/a' is not a number"),
        (
            lambda d: make_ucr(d, 1, n=270, begin=261, end=280)[0],
            r"anomaly 261..280, but the file holds 270 values",
        ),
        (
            lambda d: make_ucr(d, 1, train_end=270, begin=261, end=280)[0],
            r"train 1..270, anomaly 261..280: expected the training part to end before",
        ),
        (
            lambda d: make_tsbad(d, 1, n=400, n_train=400)[0],
            r"'_tr_400_' in the name, but the file has 400 rows",
        ),
        (_bad_tsbad_label, r"001_Fixture_id_1_Facility_tr_150_1st_250.csv: row 31: label 2\b"),
        (_bad_timeeval_train_width, r"m.train.csv: 3 features but m.csv has 2"),
    ],
)
def test_bad_file_errors_name_the_file_row_and_problem(tmp_path, write, match):
    path = write(tmp_path)
    collection = load_dataset(_cfg(tmp_path).dataset, tmp_path)
    with pytest.raises(DataError, match=match):
        collection.subset(Path(path).stem)


def test_collection_needs_per_entity_mode_and_a_known_test_part(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset.mode='concat' with dataset=collection"):
        validate(_cfg(tmp_path, "dataset.mode=concat"))
    with pytest.raises(ConfigCompositionException, match=r"dataset\.test_part=all") as err:
        _cfg(tmp_path, "dataset.test_part=all")
    assert "expected one of [rest, whole]" in str(err.value.__cause__)


def test_folder_without_usable_series_lists_every_reason(tmp_path):
    (tmp_path / "x.md").write_text("no\n")
    with pytest.raises(DataError, match=r"no usable series file\n  x.md: x.md: not a series"):
        load_dataset(_cfg(tmp_path).dataset, tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(_cfg(tmp_path / "nowhere").dataset, tmp_path)


# -------------------------------------------------------------------------------- end to end
def test_collection_run_gives_one_child_run_per_series_and_skips_bad_files(tmp_path):
    data = tmp_path / "series"
    data.mkdir()
    good = [
        make_tsbad(data, 1)[0].stem,
        make_tsbad(data, 2, channels=3, seed=1)[0].stem,
        make_ucr(data, 3, one_line=True, seed=2)[0].stem,
    ]
    make_timeeval(data / "te.csv", n=300, seed=3, anomaly=(200, 215))
    make_timeeval(data / "te.train.csv", n=200, seed=4, anomaly=(0, 0))
    good.append("te")
    bad, _, _ = make_tsbad(data, 5, seed=5)
    _edit_line(bad, 10, "abc,0")
    short, _ = make_ucr(data, 6, n=300, train_end=40, begin=200, end=210)  # < 3 windows to fit
    (data / "README.md").write_text("notes\n")
    out = _cli(
        tmp_path,
        "dataset=collection",
        f"dataset.path={data}",
        "backbone.window=16",
        "train.epochs=2",
        "train.patience=null",
        "train.progress=none",
        "tracking.plots=false",
        "madcluster=off",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"skipped {bad.name}: {bad}: line 11, column 'Data': 'abc' is not a number" in out.stdout
    assert re.search(rf"\[{re.escape(short.stem)} \([^]]+\)\] failed \(data\): ", out.stdout)
    assert "too short for window=16" in out.stdout
    assert "skipped README.md: README.md: not a series file" in out.stdout
    assert "mean over series" in out.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("madcluster_exp")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(runs) == 1 + len(children)
    finished = {c.data.tags["series"]: c for c in children if c.info.status == "FINISHED"}
    assert sorted(finished) == sorted(good)
    (failed,) = [c for c in children if c.info.status == "FAILED"]
    assert failed.data.tags["series"] == short.stem and "too short" in failed.data.tags["error"]
    assert failed.data.tags["failure.kind"] == "data"
    formats = {name: c.data.tags["series.format"] for name, c in finished.items()}
    assert formats == {good[0]: "tsbad", good[1]: "tsbad", good[2]: "ucr", "te": "timeeval"}
    for name, child in finished.items():
        assert child.info.run_name == f"{name} ({parent.info.run_name})"
        assert 0.0 <= child.data.metrics["test/vus_pr"] <= 1.0
        assert {"test/auc_roc", "test/auc_pr", "val/best_loss"} <= set(child.data.metrics)
        assert len(client.get_metric_history(child.info.run_id, "train/loss")) == 2
        assert "scores.npz" in {a.path for a in client.list_artifacts(child.info.run_id)}
    assert (
        finished[good[1]].data.params["params/backbone"]
        != finished[good[0]].data.params["params/backbone"]
    )  # 3 channels vs 1: own model each
    tags = parent.data.tags
    assert tags["collection.series"] == "4" and tags["collection.skipped"] == "2"
    assert tags["collection.failed"] == "1" and tags["collection.failed_series"] == short.stem
    assert set(tags["collection.skipped_files"].split()) == {bad.name, "README.md"}
    # Parent metrics: the mean over series equals the mean of the children's own metrics.
    assert parent.data.metrics["test/vus_pr_entity_mean"] == pytest.approx(
        np.mean([c.data.metrics["test/vus_pr"] for c in finished.values()])
    )
    local = Path(client.download_artifacts(parent.info.run_id, "skipped.csv", str(tmp_path)))
    rows = {r["file"]: r["reason"] for r in csv.DictReader(local.open())}
    assert set(rows) == {bad.name, "README.md"}
    assert "line 11, column 'Data'" in rows[bad.name]
    table = series_results(client.tracking_uri, parent.info.run_id)
    assert sorted(table["series"]) == sorted(good + [short.stem])
    done = table[table["status"] == "FINISHED"].set_index("series")
    assert done.loc["te", "test/vus_pr"] == finished["te"].data.metrics["test/vus_pr"]


def _cli(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-m", "madcluster_exp", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow  # two CLI jobs: `make test-all`
def test_in_a_sweep_each_job_is_a_child_of_the_sweep_and_each_series_a_child_of_its_job(tmp_path):
    data = tmp_path / "series"
    data.mkdir()
    make_ucr(data, 1, n=300, train_end=120, begin=200, end=210)
    make_timeeval(data / "te.csv", n=300, anomaly=(200, 215))
    out = _cli(
        tmp_path,
        "-m",
        "dataset=collection",
        f"dataset.path={data}",
        "backbone.window=8",
        "train.epochs=1",
        "train.patience=null",
        "train.progress=none",
        "tracking.plots=false",
        "madcluster=off",
        "seed=0,1",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("madcluster_exp").experiment_id]
    )
    (sweep,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    jobs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    assert sweep.data.tags["children"] == "2" and len(jobs) == 2 and len(runs) == 1 + 2 + 4
    table = series_results(uri, sweep.info.run_id)
    assert len(table) == 4 and set(table["status"]) == {"FINISHED"}
    assert set(table["job_run_id"]) == {j.info.run_id for j in jobs}
    names = ("001_UCR_Anomaly_Fixture_120_200_210", "te")
    assert sorted(zip(table["param:seed"], table["series"])) == sorted(
        (seed, name) for seed in ("0", "1") for name in names
    )


def test_a_resumed_collection_run_continues_the_same_parent_and_child_runs(make_cfg, tmp_path):
    data = tmp_path / "series"
    data.mkdir()
    make_timeeval(data / "te.csv", n=300, anomaly=(200, 215))
    cfg = make_cfg(
        "dataset=collection",
        f"dataset.path={data}",
        "backbone.window=8",
        "train.epochs=1",
        "train.patience=null",
        "train.progress=none",
        "tracking.plots=false",
        "madcluster=off",
        fast=False,
    )
    first = run(cfg, output_dir=tmp_path / "job", verbose=False)
    again = run(cfg, output_dir=tmp_path / "job", verbose=False)
    assert again.run_id == first.run_id
    table = series_results(first.tracking_uri, first.run_id)
    assert table["series"].tolist() == ["te"] and table["status"].tolist() == ["FINISHED"]


def test_the_console_mean_over_series_is_over_the_series_where_it_is_defined():
    """A series without an anomaly in its test part has no VUS-PR: the mean is over the others,
    with their count, and the series is named once (not a NaN mean)."""
    from types import SimpleNamespace as NS

    from madcluster_exp.pipeline.collection import series_table

    def unit(name, vus, labels):
        metrics = {"test/vus_pr": vus, "test/auc_pr": vus / 2, "test/auc_roc": 0.5 + vus / 2}
        return NS(entity=name, evaluation=NS(metrics=metrics), test=NS(labels=np.array(labels)))

    units = [unit("a", 0.4, [0, 1]), unit("b", 0.6, [1, 0]), unit("free", float("nan"), [0, 0])]
    collection = NS(root=Path("c"), series={u.entity: NS(format="tsbad") for u in units})
    text = series_table("job", collection, units, [])
    mean = next(line for line in text.splitlines() if "mean over" in line).split()
    assert mean[:5] == ["mean", "over", "2", "of", "3"]
    assert [float(v) for v in mean[5:]] == pytest.approx([0.5, 0.25, 0.75])
    assert text.count("free") == 2  # its row and the one line that says why
    assert "no anomaly in the test part (metrics undefined): free" in text
    assert " nan" not in text.split("mean over")[1]
    assert "mean over series" in series_table("job", collection, units[:2], [])
