"""Shared fixtures: compose configs the way the CLI does, with outputs in a temp dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterable

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from madcluster_exp.app import CONFIG_DIR
from madcluster_exp.launchers.local_cluster import free_port  # noqa: F401 - tests use it

# Small enough for seconds-long runs, large enough for real signal.
FAST = [
    "dataset.n_entities=2",
    "dataset.train_length=800",
    "dataset.test_length=800",
    "dataset.n_channels=4",
    "backbone.window=32",
    "train.epochs=2",
    "train.patience=null",
    "train.progress=none",
    "tracking.plots=false",
]


@pytest.fixture(scope="session", autouse=True)
def _leave_the_checkout_alone(tmp_path_factory):
    """Run the whole session from a temporary directory, without $MLFLOW_TRACKING_URI.

    Whatever a test (or a library under it) writes relative to the working directory lands
    there and not in the checkout: MLflow's default store (``./mlflow.db``) and artifact root
    (``./mlruns``, used by an experiment created without a location), a command's default
    ``outputs/``. A tracking URI set in the shell running the tests (a team server, say) would
    send every in-process test run there instead of the test's own ``outputs/mlflow.db``;
    tests that want a server set it themselves."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


def compose_config(overrides: Iterable[str] = ()) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def make_cfg(tmp_path: Path):
    """make_cfg(*overrides, fast=True) -> composed config writing only under tmp_path."""

    def _make(*overrides: str, fast: bool = True) -> DictConfig:
        base = [f"paths.output_dir={tmp_path / 'outputs'}", f"paths.root_dir={tmp_path}"]
        return compose_config(base + (FAST if fast else []) + list(overrides))

    return _make


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory) -> Path:
    """An outputs folder whose MLflow store (``mlflow.db``) tests share: creating a SQLite store
    costs seconds, so tests that find their own runs by id or tag use this one."""
    return tmp_path_factory.mktemp("shared_store") / "outputs"


POSTGRES_ADMIN = "postgresql://127.0.0.1:5432/postgres"


def require_service(name: str, reachable: bool, how_to_start: str) -> None:
    """Skip a test whose service is missing, saying what to start; under CI a missing service
    is a failure (CI's machines run it)."""
    if reachable:
        return
    message = f"{name} is not reachable: {how_to_start}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


@pytest.fixture
def postgres_uri():
    """A fresh PostgreSQL database on 127.0.0.1:5432 for one test, dropped afterwards."""
    import uuid

    from madcluster_exp.tracking.server import drop_database, ensure_database

    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN, connect_timeout=5):
            reachable = True
    except Exception:  # noqa: BLE001 - any failure means: not usable here
        reachable = False
    require_service(
        "PostgreSQL on 127.0.0.1:5432",
        reachable,
        "start it (trust authentication for local connections), e.g. `pg_ctlcluster 15 main start`",
    )
    uri = f"postgresql://127.0.0.1:5432/madcluster_test_{uuid.uuid4().hex[:12]}"
    ensure_database(uri)
    try:
        yield uri
    finally:
        drop_database(uri)


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(tmp_path, postgres_uri):
    """`make server` as a person runs it, on a free port, over a fresh database."""
    port = free_port()
    log_path = tmp_path / "server.log"
    env = {**os.environ, "MLFLOW_BACKEND_URI": postgres_uri}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                "make",
                "-s",
                "-C",
                str(ROOT),
                "server",
                f"PORT={port}",
                f"SERVER_ARTIFACTS={tmp_path / 'server-artifacts'}",
                f"PYTHON={sys.executable}",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    from madcluster_exp.tracking.server import wait_until_ready

    try:
        wait_until_ready(proc, f"http://127.0.0.1:{port}", log_path)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.fixture
def ray_cluster(tmp_path_factory):
    """A real local Ray cluster: a head and one worker node, separate processes on 127.0.0.1,
    one CPU each. Yields the address for RAY_ADDRESS; stops both nodes afterwards."""
    try:
        import ray  # noqa: F401
    except ImportError:
        ray = None
    require_service("Ray", ray is not None, "install the extra: pip install -e .[ray]")
    from madcluster_exp.launchers.local_cluster import local_cluster

    with local_cluster(tmp_path_factory.mktemp("ray"), cpus_per_node=1, workers=1) as address:
        yield address
