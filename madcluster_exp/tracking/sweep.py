"""What the jobs of one sweep share through the tracker: the parent run (its id in the sweep
directory's ``mlflow_parent.json``, or in the environment for launchers that start workers
before the file exists) and, for an Optuna search, the study's tags."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional
from urllib.parse import urlsplit

from madcluster_exp.config import ConfigError
from madcluster_exp.tracking.server import redact

PARENT_RUN_ENV = "MADCLUSTER_PARENT_RUN_ID"
PARENT_FILE = "mlflow_parent.json"


def read_parent(sweep_dir: Path) -> Optional[str]:
    """The sweep's parent run id (the sweep callback writes it), else the environment's."""
    path = sweep_dir / PARENT_FILE
    if path.exists():
        return json.loads(path.read_text())["run_id"]
    return os.environ.get(PARENT_RUN_ENV)


def sqlalchemy_url(storage: Optional[str]) -> Optional[str]:
    """``postgresql://`` / ``postgres://`` with the psycopg 3 driver (the one installed);
    other URLs (``postgresql+<driver>://``, SQLite, MySQL) unchanged."""
    if storage is None:
        return None
    scheme = urlsplit(storage).scheme
    if scheme in ("postgresql", "postgres"):
        return "postgresql+psycopg" + storage[len(scheme) :]
    return storage


def search_tags(sweeper: Mapping[str, Any]) -> Dict[str, str]:
    """The study a run belongs to: ``optuna.study`` and ``optuna.storage`` (password hidden;
    ``in-memory`` for a one-process study), on the parent run and on every trial's run."""
    storage = sweeper.get("storage")
    return {
        "optuna.study": str(sweeper.get("study_name")),
        "optuna.storage": redact(sqlalchemy_url(storage)) if storage else "in-memory",
    }


#: Tables of MLflow's tracking database (SQLAlchemy store) that Optuna's schema does not have.
MLFLOW_TABLES = frozenset({"experiments", "runs"})
#: What to give a study instead.
OWN_DATABASE = (
    "a database of its own, e.g. postgresql://<host>:5432/optuna (created if missing) or "
    "sqlite:///outputs/optuna.db"
)


def refuse_mlflow_store(storage: str, key: str = "hydra.sweeper.storage") -> None:
    """Raise :class:`ConfigError` if an Optuna study ``storage`` holds MLflow's tracking tables:
    Optuna would create its own tables there and then refuse the database's schema version (MLflow's
    ``alembic_version``), and MLflow's migrations would meet Optuna's tables. Reads the table
    names only; nothing is created."""
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.exc import SQLAlchemyError

    url = sqlalchemy_url(storage)
    try:
        engine = create_engine(url)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise ConfigError(
            f"{key}={redact(url)}: not a database URL SQLAlchemy can open: {exc}"
        ) from None
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
    except SQLAlchemyError as exc:
        raise ConfigError(
            f"{key}={redact(url)}: cannot open the study storage: {str(exc).splitlines()[0]}"
        ) from None
    finally:
        engine.dispose()
    if MLFLOW_TABLES <= tables:
        raise ConfigError(
            f"{key}={redact(url)} is MLflow's tracking database (it has MLflow's tables "
            f"{', '.join(sorted(MLFLOW_TABLES))}): an Optuna study cannot share it (each keeps "
            f"its schema version in alembic_version). Give the study {OWN_DATABASE}."
        )
