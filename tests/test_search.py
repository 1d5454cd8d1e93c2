"""Hyper-parameter search on injected validation anomalies: the injection, the objective, the
checks before a search, a study shared by two sweep processes on PostgreSQL, and its report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra.errors import ConfigCompositionException

from madcluster_exp.config import ConfigError, validate
from madcluster_exp.data import DataError, SeriesSplit
from madcluster_exp.data.inject import INJECTED_KINDS, MARGIN, inject
from madcluster_exp.evaluation.protocols import injected_metrics, injected_score
from madcluster_exp.launchers.optuna_study import check_search
from madcluster_exp.tracking.sweep import sqlalchemy_url

from .conftest import FAST


def _split(n=400, n_ch=4, entities=2, seed=0) -> SeriesSplit:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    parts = [
        (
            f"e{i}",
            np.sin(2 * np.pi * t / rng.uniform(20, 60, n_ch)) + 0.05 * rng.normal(size=(n, n_ch)),
            None,
        )
        for i in range(entities)
    ]
    return SeriesSplit.concat(parts, "val.csv")


# ---------------------------------------------------------------------------------- injection
def test_injection_labels_every_changed_row_and_leaves_the_input_alone():
    split = _split()
    before = split.values.copy()
    out = inject(split, ratio=0.1, kinds=INJECTED_KINDS, seed=3)
    np.testing.assert_array_equal(split.values, before)
    assert split.labels is None and out.split.labels is not None
    changed = (out.split.values != before).any(axis=1)
    assert not changed[out.split.labels == 0].any()  # nothing changes outside the labels
    assert {a.kind for a in out.anomalies} == set(INJECTED_KINDS)
    for seg in split.segments:
        labelled = out.split.labels[seg.start : seg.end].sum()
        assert 0.1 * seg.length <= labelled <= 0.1 * seg.length + 50  # one event over at most
    events = sorted(out.anomalies, key=lambda a: a.start)
    for a in events:
        seg = next(s for s in split.segments if s.name == a.entity)
        assert seg.start + MARGIN <= a.start < a.end <= seg.end - MARGIN  # inside its entity
        assert out.split.labels[a.start : a.end].all()
    for a, b in zip(events, events[1:]):
        assert b.start - a.end >= MARGIN  # normal context between events
    assert out.split.labels.sum() == sum(a.end - a.start for a in events)


def test_injection_is_reproducible_from_its_seed_alone():
    a, b = (inject(_split(), 0.1, INJECTED_KINDS, seed=7) for _ in range(2))
    np.testing.assert_array_equal(a.split.values, b.split.values)
    np.testing.assert_array_equal(a.split.labels, b.split.labels)
    c = inject(_split(), 0.1, INJECTED_KINDS, seed=8)
    assert not np.array_equal(a.split.labels, c.split.labels)


@pytest.mark.parametrize("kind", INJECTED_KINDS)
def test_each_kind_changes_the_series_as_documented(kind):
    split = _split(n=600, entities=1)
    clean = split.values
    std = clean.std(axis=0)
    out = inject(split, ratio=0.1, kinds=[kind], seed=1)
    assert out.anomalies and {a.kind for a in out.anomalies} == {kind}
    for a in out.anomalies:
        ch = list(a.channels)
        diff = out.split.values[a.start : a.end, ch] - clean[a.start : a.end, ch]
        others = [c for c in range(4) if c not in ch]
        np.testing.assert_array_equal(
            out.split.values[a.start : a.end, others], clean[a.start : a.end, others]
        )
        if kind == "spike":
            assert a.end - a.start == 1 and len(ch) == 1
            assert 4.0 <= abs(diff[0, 0]) / std[ch[0]] <= 7.0
        elif kind == "level_shift":
            assert 1 <= len(ch) <= 3
            np.testing.assert_allclose(diff, np.broadcast_to(diff[0], diff.shape), atol=1e-5)
            assert np.all(
                (np.abs(diff[0]) / std[ch] >= 2.0 - 1e-4)
                & (np.abs(diff[0]) / std[ch] <= 4.0 + 1e-4)
            )
        elif kind == "contextual":  # values of the channel's normal range, wrong rhythm
            seg = out.split.values[a.start : a.end, ch]
            assert np.all(seg >= clean[:, ch].min(axis=0) - 1e-5)
            assert np.all(seg <= clean[:, ch].max(axis=0) + 1e-5)
            assert np.abs(diff).max() > 0.2
        else:  # collective: half the channels at least two, flat with a little noise
            assert len(ch) >= 2
            flat = out.split.values[a.start : a.end, ch].std(axis=0) / std[ch]
            assert np.all(flat < 0.2)


def test_a_validation_split_too_short_to_inject_into_is_refused_naming_it():
    with pytest.raises(DataError, match=r"val\.csv.*e0: 15.*at least 21 rows"):
        inject(_split(n=15, entities=1), 0.1, INJECTED_KINDS, seed=0)


def test_bad_inject_and_objective_settings_are_refused_naming_the_key(make_cfg):
    with pytest.raises(ConfigError, match=r"search\.inject\.kinds contains 'ramp'"):
        validate(make_cfg("search.inject.kinds=[spike,ramp]"))
    with pytest.raises(ConfigError, match=r"search\.inject\.ratio=0\.6"):
        validate(make_cfg("search.inject.ratio=0.6"))
    with pytest.raises(ConfigCompositionException, match=r"search\.objective=test_f1") as err:
        make_cfg("search.objective=test_f1")
    assert "expected one of [val_loss, val_injected_vus_pr]" in str(err.value.__cause__)


# ---------------------------------------------------------------------------------- objective
@pytest.mark.parametrize("rule", ["sum", "product", "madcluster_only"])
def test_the_injected_objective_does_not_move_when_the_score_scale_does(make_cfg, rule):
    """What a loss-shaping parameter does to the score's scale leaves the objective alone: it
    ranks points, so only a better ordering of injected anomalies raises it."""
    cfg = make_cfg(f"scoring.combine={rule}", "search.objective=val_injected_vus_pr")
    rng = np.random.default_rng(0)
    labels = np.zeros(600, np.int8)
    labels[100:130] = labels[400:402] = 1
    val = {"backbone": rng.gamma(2.0, 1.0, 600), "madcluster": rng.gamma(2.0, 1.0, 600)}
    inj = {
        k: v + 3.0 * labels * rng.uniform(0, 1, 600)
        for k, v in {
            "backbone": rng.gamma(2.0, 1.0, 600),
            "madcluster": rng.gamma(2.0, 1.0, 600),
        }.items()
    }
    base = injected_metrics(labels, injected_score(cfg, val, inj), 100)
    assert 0.0 < base["val_injected/vus_pr"] < 1.0
    for scale in (1e-3, 50.0):
        scaled = injected_metrics(
            labels,
            injected_score(
                cfg, {k: scale * v for k, v in val.items()}, {k: scale * v for k, v in inj.items()}
            ),
            100,
        )
        for key, value in base.items():
            assert scaled[key] == pytest.approx(value, abs=1e-9), key


def test_a_job_scores_injected_validation_anomalies_and_logs_the_objective(make_cfg):
    from madcluster_exp.app import run

    cfg = make_cfg(
        "search.objective=val_injected_vus_pr", "train.epochs=1", "tracking.backend=none"
    )
    result = run(cfg, verbose=False)
    for key in ("vus_pr", "auc_pr", "auc_roc", "vus_roc"):
        assert 0.0 < result.metrics[f"val_injected/{key}"] <= 1.0
    scores = np.load(result.output_dir / "scores.npz")
    expected = inject(_val_split(cfg), 0.1, INJECTED_KINDS, seed=0).split.labels
    np.testing.assert_array_equal(scores["val_injected_label"], expected)
    assert len(scores["val_injected_score"]) == len(scores["val_score"])
    again = injected_metrics(
        scores["val_injected_label"], scores["val_injected_score"], int(cfg.metrics.range_window)
    )
    assert again["val_injected/vus_pr"] == pytest.approx(result.metrics["val_injected/vus_pr"])


def _val_split(cfg):
    from madcluster_exp.backbones import backbone_class
    from madcluster_exp.data import load_dataset, prepare

    raw = load_dataset(cfg.dataset, Path(cfg.paths.root_dir) / cfg.paths.data_dir)
    window = backbone_class(cfg.backbone.name).data_window(int(cfg.backbone.window))
    return prepare(raw, window, float(cfg.dataset.val_fraction), cfg.dataset.normalize).val


# ------------------------------------------------------------------------------------- checks
def test_a_search_whose_direction_contradicts_its_objective_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"hydra\.sweeper\.direction=minimize with search\."
        r"objective=val_injected_vus_pr.*expected hydra\."
        r"sweeper\.direction=maximize",
    ):
        check_search("val_injected_vus_pr", "minimize", None, "s")
    with pytest.raises(ConfigError, match="without hydra.sweeper.study_name"):
        check_search("val_loss", ["minimize"], "postgresql://h/optuna", None)
    check_search("val_injected_vus_pr", "maximize", "postgresql://h/optuna", "s")


def test_postgres_storage_urls_get_the_installed_driver():
    assert (
        sqlalchemy_url("postgresql://u:p@h:5432/optuna") == "postgresql+psycopg://u:p@h:5432/optuna"
    )
    assert sqlalchemy_url("postgres://h/o") == "postgresql+psycopg://h/o"
    for same in ("postgresql+psycopg://h/o", "sqlite:///x.db", None):
        assert sqlalchemy_url(same) == same


def test_a_stored_study_is_created_once_and_kept_to_its_direction(postgres_uri):
    import optuna

    from madcluster_exp.launchers.optuna_study import prepare_study

    storage = sqlalchemy_url(postgres_uri)
    prepare_study(storage, "s", ["maximize"])
    assert prepare_study(storage, "s", ["maximize"]).direction.name == "MAXIMIZE"
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["s"]
    with pytest.raises(
        ConfigError,
        match=r"study .s. in .*direction maximize, but this search "
        r"would minimize; choose another "
        r"hydra\.sweeper\.study_name",
    ):
        prepare_study(storage, "s", ["minimize"])


# ------------------------------------------------------------------------------ shared study
def _env():
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "MADCLUSTER_OPTUNA_STORAGE")
    }


def test_two_sweep_processes_share_one_study_in_postgres_and_lose_no_trial(tmp_path, postgres_uri):
    import optuna
    from mlflow.tracking import MlflowClient

    from madcluster_exp.tracking.server import drop_database, ensure_database

    # Optuna and MLflow each in a database of their own (both keep an alembic_version table).
    mlflow_uri = sqlalchemy_url(postgres_uri + "_mlflow")
    ensure_database(mlflow_uri)
    try:
        storage = sqlalchemy_url(postgres_uri)
        args = [
            *FAST,
            "train.epochs=1",
            "hparams_search=optuna_injected",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.study_name=shared",
            f"tracking.uri={mlflow_uri}",
        ]
        MlflowClient(mlflow_uri).create_experiment("madcluster_exp")  # the team's store exists
        procs = []
        # One process names the storage as a person would (postgresql://), one as SQLAlchemy.
        for name, url in (("a", postgres_uri), ("b", storage)):
            (tmp_path / name).mkdir()
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "madcluster_exp",
                        "-m",
                        *args,
                        f"hydra.sweeper.storage={url}",
                    ],
                    cwd=tmp_path / name,
                    env=_env(),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        outs = [p.communicate(timeout=900)[0] for p in procs]
        for p, out in zip(procs, outs):
            assert p.returncode == 0, out[-3000:]

        study = optuna.load_study(study_name="shared", storage=storage)
        trials = study.get_trials()
        assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # 2 + 2, distinct numbers
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        assert all(0.0 < t.value <= 1.0 for t in trials)
        assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["shared"]

        client = MlflowClient(mlflow_uri)
        exp = client.get_experiment_by_name("madcluster_exp")
        runs = client.search_runs([exp.experiment_id], max_results=100)
        parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
        children = {
            int(r.data.tags["optuna.trial"]): r for r in runs if "mlflow.parentRunId" in r.data.tags
        }
        assert len(parents) == 2 and len(runs) == 6 and sorted(children) == [0, 1, 2, 3]
        a, b = (p.info for p in parents)
        assert a.start_time < b.end_time and b.start_time < a.end_time  # ran at once
        for p in parents:
            assert p.data.tags["optuna.storage"] == storage and p.data.tags["children"] == "2"
        for t in trials:  # each trial's MLflow run: finished, same value, same parameters
            run = children[t.number]
            assert run.info.status == "FINISHED"
            assert run.data.metrics["val_injected/vus_pr"] == pytest.approx(t.value)
            for key, value in t.params.items():
                assert float(run.data.params[key]) == pytest.approx(value)
            assert run.data.tags["optuna.study"] == "shared"

        # The report of either process's sweep covers the whole study.
        (sweep_dir,) = [
            p.parent for p in (tmp_path / "a").glob("outputs/multiruns/*/*/mlflow_parent.json")
        ]
        rep = subprocess.run(
            [
                sys.executable,
                "-m",
                "madcluster_exp.report",
                str(sweep_dir),
                "log=false",
                f"storage={storage}",
            ],
            cwd=tmp_path / "a",
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert rep.returncode == 0, rep.stderr[-3000:]
        assert "4 trials (4 complete) from 2 sweep process(es)" in rep.stdout
        _check_report(tmp_path / "a", study.best_trial.number, children, "maximize")

        # MLflow's database as the study storage: refused, naming it, before Optuna adds a table.
        from sqlalchemy import create_engine, inspect

        from madcluster_exp.launchers.optuna_study import prepare_study

        with pytest.raises(
            ConfigError,
            match=r"hydra\.sweeper\.storage=postgresql\+psycopg://127\.0\.0\.1:5432/"
            r"madcluster_test_\w+_mlflow is MLflow's tracking database .* a database of its own",
        ):
            prepare_study(mlflow_uri, "shared", ["maximize"])
        engine = create_engine(mlflow_uri)
        tables = set(inspect(engine).get_table_names())
        engine.dispose()
        assert {"experiments", "runs"} <= tables and "studies" not in tables
    finally:
        drop_database(mlflow_uri)


def _check_report(cwd: Path, best: int, children: dict, direction: str) -> None:
    """The report's trials table has every objective and no test metric; the chosen trial is
    the best objective, and its test metrics are the chosen run's."""
    (report_dir,) = (cwd / "outputs" / "reports").iterdir()
    table = pd.read_csv(report_dir / "search_trials.csv")
    assert not [c for c in table.columns if "test" in c]
    assert sorted(table["trial"]) == sorted(children)
    pick = table["objective"].idxmax() if direction == "maximize" else table["objective"].idxmin()
    assert table.loc[pick, "trial"] == best and table["chosen"].tolist().count(True) == 1
    chosen = json.loads((report_dir / "search_chosen.json").read_text())
    run = children[best]
    assert chosen["trial"] == best and chosen["run_id"] == run.info.run_id
    assert chosen["test"] and all(
        math.isclose(v, run.data.metrics[k]) for k, v in chosen["test"].items()
    )
    md = (report_dir / "report.md").read_text()
    assert f"| test/vus_pr | {run.data.metrics['test/vus_pr']:.4f} |" in md
    assert md.count("| test/") == len(chosen["test"])  # one trial's test metrics, no more
