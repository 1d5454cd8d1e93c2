"""The project's Optuna sweeper (hydra/sweeper=madcluster_optuna) on a current Optuna: the search
space, what it tells the study for every outcome of a job, the refusal of MLflow's database as a
study storage, and `make dashboard` (optuna-dashboard over the storage). The study shared by two
sweep processes in PostgreSQL and its report: tests/test_search.py."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus

from madcluster_exp.app import CONFIG_DIR
from madcluster_exp.config import ConfigError
from madcluster_exp.launchers.optuna_sweep import (
    OptunaSweep,
    make_sampler,
    override_value,
    search_space,
)

from .conftest import FAST, ROOT, free_port

SWEEPER = "hydra_plugins.madcluster_optuna_sweeper.optuna_sweeper.OptunaStudySweeper"


def test_optuna_is_a_current_major_and_both_searches_use_the_projects_sweeper():
    import optuna
    import optuna_dashboard

    assert int(optuna.__version__.split(".")[0]) >= 4, optuna.__version__
    assert callable(optuna_dashboard.run_server)
    for search, direction in (("optuna_val", "minimize"), ("optuna_injected", "maximize")):
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            cfg = compose(
                config_name="config",
                overrides=[f"hparams_search={search}"],
                return_hydra_config=True,
            )
        sweeper = cfg.hydra.sweeper
        assert sweeper._target_ == SWEEPER and sweeper.direction == direction
        assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
        assert sweeper.params["backbone.lr"] == "tag(log, interval(0.0001, 0.01))"
    assert "hydra_plugins.hydra_optuna_sweeper._impl" not in sys.modules


# ------------------------------------------------------------------------------ search space
def test_hydra_sweep_overrides_become_optuna_distributions():
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    dists, fixed = search_space(
        [
            "a=tag(log, interval(1e-4, 1e-2))",
            "b=range(0, 10)",
            "c=choice(on, off, 3, true)",
            "d=range(1, 7, 2)",  # 1, 3, 5: Hydra's range stops before its stop
            "e=range(0.5, 2.0, 0.5)",
            "f=x,y",
            "g=shuffle(range(1, 4))",
            "h=interval(0.0, 0.3)",
            "seed=3",
            "+extra='a b'",
            "b=interval(2, 4)",  # replaces the earlier b; Hydra's interval is a float one
        ]
    )
    assert dists == {
        "a": FloatDistribution(1e-4, 1e-2, log=True),
        "b": FloatDistribution(2.0, 4.0),
        "c": CategoricalDistribution(["on", "off", 3, True]),
        "d": IntDistribution(1, 5, step=2),
        "e": FloatDistribution(0.5, 1.5, step=0.5),
        "f": CategoricalDistribution(["x", "y"]),
        "g": dists["g"],
        "h": FloatDistribution(0.0, 0.3),
    }
    assert sorted(dists["g"].choices) == [1, 2, 3]
    assert fixed == {"seed": "3", "+extra": "'a b'"}
    with pytest.raises(ConfigError, match=r"needs discrete values .* not an interval"):
        make_sampler({"_target_": "optuna.samplers.GridSampler"}, {"a": dists["a"]})
    grid, size = make_sampler(
        {"_target_": "optuna.samplers.GridSampler", "seed": 0},
        {k: dists[k] for k in ("c", "d", "e")},
    )
    assert size == 4 * 3 * 3 and type(grid).__name__ == "GridSampler"
    tpe, size = make_sampler({"_target_": "optuna.samplers.TPESampler", "seed": 1}, dists)
    assert size is None and type(tpe).__name__ == "TPESampler"


@pytest.mark.parametrize(
    "value", [0.1, 1e-05, 3, -2, True, False, None, "on", "deepsvdd", "a b", "x,y", "it's", "k=v"]
)
def test_a_suggested_value_is_written_as_an_override_hydra_reads_back(value):
    (parsed,) = OverridesParser.create().parse_overrides([f"key={override_value(value)}"])
    assert not parsed.is_sweep_override()
    assert parsed.value() == value and type(parsed.value()) is type(value)


# -------------------------------------------------------------------------------- sweep loop
class _Launcher:
    """Runs each batch of jobs by a rule (what Hydra's launchers return), recording them."""

    def __init__(self, outcome):
        self.outcome = outcome
        self.batches = []

    def launch(self, job_overrides, initial_job_idx):
        self.batches.append([list(o) for o in job_overrides])
        returns = []
        for ov in job_overrides:
            params = dict(o.split("=", 1) for o in ov)
            status, value = self.outcome(params, len(self.batches))
            ret = JobReturn(overrides=list(ov), status=status)
            ret.return_value = value
            returns.append(ret)
        return returns


class _NoComposition:
    def validate_batch_is_legal(self, batch):
        pass


def _sweep(outcome, n_jobs=2):
    sweep = OptunaSweep({"n_jobs": n_jobs})
    sweep.launcher = _Launcher(outcome)
    return sweep


def test_each_outcome_of_a_job_is_told_and_an_interrupted_batch_is_marked_fail(tmp_path):
    """A value: COMPLETE with it; NaN (a job that failed inside the project): FAIL, the sweep goes
    on; a batch that never returns (Ctrl-C): its trials FAIL, none left RUNNING."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        storage=storage, study_name="s", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    dists, fixed = search_space(["x=interval(0.0, 1.0)", "k=choice(a,b)", "seed=3"])

    def outcome(params, batch):
        if batch == 3:
            raise KeyboardInterrupt
        trial = int(params["search.trial"])
        return JobStatus.COMPLETED, (math.nan if trial == 1 else float(params["x"]) + 1.0)

    sweep = _sweep(outcome)
    with pytest.raises(KeyboardInterrupt):
        sweep._run(study, _NoComposition(), dists, fixed, None, 6, 0.0)
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    for t in trials:
        assert set(t.params) == {"x", "k"} and t.user_attrs == {"seed": "3"}
        if t.state.name == "COMPLETE":
            assert t.value == pytest.approx(t.params["x"] + 1.0)
    jobs = [job for batch in sweep.launcher.batches for job in batch]
    assert [job[-1] for job in jobs] == [f"search.trial={n}" for n in range(6)]
    for job, t in zip(jobs, trials):  # each job's overrides are its trial's values
        assert job[:3] == [f"x={t.params['x']!r}", f"k={t.params['k']}", "seed=3"]
    assert sweep.job_idx == 4  # the interrupted batch never returned


def test_a_job_whose_error_escapes_counts_against_max_failure_rate(tmp_path):
    import optuna

    def outcome(params, batch):
        if params["search.trial"] in ("1", "3"):
            return JobStatus.FAILED, ValueError(f"boom {params['search.trial']}")
        return JobStatus.COMPLETED, 0.5

    dists, fixed = search_space(["x=interval(0.0, 1.0)"])
    study = optuna.create_study(study_name="tolerant")
    _sweep(outcome)._run(study, _NoComposition(), dists, fixed, None, 4, 0.5)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"] * 2

    study = optuna.create_study(study_name="strict")
    with pytest.raises(ValueError, match="boom 1"):
        _sweep(outcome)._run(study, _NoComposition(), dists, fixed, None, 4, 0.0)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]  # stopped after batch 1


# ----------------------------------------------------------------------- a sweep, end to end
def _env():
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "MADCLUSTER_OPTUNA_STORAGE")
    }


def _tables(db: Path) -> set:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


@pytest.mark.slow  # a sweep process (~10 s); the sweep loop's outcomes are tested fast above
def test_a_grid_sweep_marks_the_failing_job_fail_and_goes_on(tmp_path):
    """Two jobs in a SQLite study (GridSampler: each grid value once): the one with an invalid
    setting fails inside the project, its trial is FAIL, the other completes and is the best."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "madcluster_exp",
            "-m",
            *FAST,
            "hparams_search=optuna_val",
            "hydra.sweeper.params=null",
            "hydra.sweeper.sampler._target_=optuna.samplers.GridSampler",
            "hydra.sweeper.n_trials=5",  # the grid has 2 points: 2 trials
            f"hydra.sweeper.storage={storage}",
            "train.epochs=choice(1,-1)",
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    trials = optuna.load_study(study_name="madcluster_val", storage=storage).get_trials()
    states = {t.params["train.epochs"]: t.state.name for t in trials}
    assert states == {1: "COMPLETE", -1: "FAIL"}
    (done,) = [t for t in trials if t.state.name == "COMPLETE"]
    assert math.isfinite(done.value) and done.value > 0
    (results,) = tmp_path.glob("outputs/multiruns/*/*/optimization_results.yaml")
    text = results.read_text()
    assert f"best_trial: {done.number}" in text and "FAIL: 1" in text
    assert "marked FAIL" in out.stdout + out.stderr


def test_mlflow_s_database_as_the_study_storage_is_refused_before_any_trial(tmp_path):
    """The sweep names the storage and what to use; Optuna adds nothing to MLflow's database."""
    mlflow_db = tmp_path / "outputs" / "mlflow.db"  # the default tracking store of this folder
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "madcluster_exp",
            "-m",
            *FAST,
            "hparams_search=optuna_injected",
            f"hydra.sweeper.storage=sqlite:///{mlflow_db}",
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert (
        f"error: hydra.sweeper.storage=sqlite:///{mlflow_db} is MLflow's tracking database"
        in out.stderr
    )
    assert "a database of its own, e.g. postgresql://<host>:5432/optuna" in out.stderr
    assert "Traceback" not in out.stderr
    assert not list(tmp_path.glob("outputs/multiruns/*/*/0"))  # no job ran
    # The dashboard and a search's report refuse it alike.
    from madcluster_exp.launchers.dashboard import study_storage
    from madcluster_exp.report.source import study_trials

    with pytest.raises(ConfigError, match=r"storage=sqlite:///.*mlflow\.db is MLflow's tracking"):
        study_storage(f"sqlite:///{mlflow_db}")
    with pytest.raises(ConfigError, match=r"storage=sqlite:///.*mlflow\.db is MLflow's tracking"):
        study_trials(f"sqlite:///{mlflow_db}", "madcluster_injected")
    tables = _tables(mlflow_db)
    assert {"experiments", "runs"} <= tables and not {"studies", "trials"} & tables


# -------------------------------------------------------------------------------- dashboard
def _study_db(path: Path) -> str:
    import optuna

    storage = f"sqlite:///{path}"
    study = optuna.create_study(storage=storage, study_name="dash_study", direction="maximize")
    trial = study.ask({"backbone.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)})
    study.tell(trial, 0.42)
    return storage


def test_make_dashboard_serves_the_studies_of_the_storage_on_localhost(tmp_path):
    storage = _study_db(tmp_path / "optuna.db")
    port = free_port()
    log_path = tmp_path / "dashboard.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                "make",
                "-s",
                "-C",
                str(ROOT),
                "dashboard",
                f"STORAGE={storage}",
                f"DASHBOARD_PORT={port}",
                f"PYTHON={sys.executable}",
            ],
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/dashboard"
    try:
        deadline = time.monotonic() + 60
        page = None
        while page is None and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    page = (resp.status, resp.read().decode())
            except OSError:
                time.sleep(0.3)
        assert page is not None, f"no answer from {url} in 60 s: {log_path.read_text()[-3000:]}"
        assert page[0] == 200 and "<html" in page[1].lower()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as resp:
            studies = json.loads(resp.read())["study_summaries"]
        assert [s["study_name"] for s in studies] == ["dash_study"]
        assert f"Optuna dashboard on {url} (storage {storage})" in log_path.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_dashboard_refuses_a_storage_it_cannot_show_saying_what_to_pass(tmp_path):
    """(MLflow's database: test_mlflow_s_database_as_the_study_storage_is_refused_...)"""
    from madcluster_exp.launchers.dashboard import DashboardError, study_storage

    with pytest.raises(DashboardError, match=r"no study storage: pass storage=<url>"):
        study_storage(None)
    missing = tmp_path / "nope.db"
    with pytest.raises(DashboardError, match=rf"{missing} does not exist"):
        study_storage(f"sqlite:///{missing}")
    assert not missing.exists()
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(DashboardError, match=r"has no Optuna study yet"):
        study_storage(f"sqlite:///{empty}")
    good = _study_db(tmp_path / "optuna.db")
    assert study_storage(good) == good
