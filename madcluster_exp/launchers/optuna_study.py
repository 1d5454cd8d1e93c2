"""An Optuna study several sweep processes share (``hydra.sweeper.storage``), and the checks a
search needs before its first trial.

Every process that runs ``python -m madcluster_exp -m hparams_search=...`` with the same storage
and study name adds its ``n_trials`` trials to one study: Optuna's RDB storage hands out trial
numbers and records values in the database, and each process's sampler reads every finished
trial of the study before it suggests the next. What this module adds:

- a PostgreSQL URL is put in SQLAlchemy form for psycopg 3 (``postgresql://`` ->
  ``postgresql+psycopg://``), and its database is created if missing;
- the study is created before any trial, one process at a time: Optuna's first connection to
  an empty database creates its tables and stamps their version in separate steps, which two
  processes must not interleave (a PostgreSQL session advisory lock serialises it; other
  databases retry);
- a storage without a study name is refused (every process would start a study of its own), as
  are an objective and a direction that disagree (``search.objective`` decides which is
  right), and an existing study whose direction is not the search's;
- a storage that is MLflow's tracking database is refused before Optuna touches it (Optuna
  would add its tables next to MLflow's and then fail on MLflow's ``alembic_version``).
"""

from __future__ import annotations

import time
import zlib
from contextlib import contextmanager
from typing import List, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

from madcluster_exp.config import SEARCH_OBJECTIVES, ConfigError
from madcluster_exp.tracking.server import redact  # noqa: F401 - re-exported
from madcluster_exp.tracking.sweep import (  # noqa: F401 - the launchers' storage helpers
    OWN_DATABASE,
    refuse_mlflow_store,
    sqlalchemy_url,
)

#: Where a search (``conf/hparams_search/*.yaml``), its report and the dashboard find the study
#: storage when none is given.
STORAGE_ENV = "MADCLUSTER_OPTUNA_STORAGE"
#: Attempts at creating or loading a study while another process creates the same one.
CREATE_ATTEMPTS = 8
#: The advisory lock (a bigint of PostgreSQL's) held while a process sets up the study.
LOCK_KEY = zlib.crc32(b"madcluster_exp.optuna_study")


def direction_names(direction) -> List[str]:
    """The sweeper's ``direction`` (a name, an enum, or a list of them) as lower-case names."""
    single = isinstance(direction, str) or hasattr(direction, "name")
    items = [direction] if single else list(direction)
    return [str(getattr(d, "name", d)).lower() for d in items]


def check_search(
    objective: str, direction, storage: Optional[str], study_name: Optional[str]
) -> None:
    """Refuse a search whose direction contradicts ``search.objective``, or a shared storage
    without a study name; the message names the keys and the values expected."""
    metric, wanted = SEARCH_OBJECTIVES[objective]
    have = direction_names(direction)
    if have != [wanted]:
        raise ConfigError(
            f"hydra.sweeper.direction={have if len(have) > 1 else have[0]} with "
            f"search.objective={objective}: a job returns {metric}, which a "
            f"search must {wanted}; expected hydra.sweeper.direction={wanted}"
        )
    if storage is not None and not study_name:
        raise ConfigError(
            f"hydra.sweeper.storage={redact(storage)} without "
            "hydra.sweeper.study_name: every sweep process would start a study "
            "of its own; expected a study name shared by all of them"
        )


def prepare_study(storage: str, study_name: str, directions: Sequence[str]):
    """Create (or load) the study in ``storage`` before the sweeper does, surviving other
    processes doing the same at once; returns the study."""
    import optuna
    from sqlalchemy.exc import DBAPIError

    from madcluster_exp.tracking.server import ensure_database

    ensure_database(storage)  # PostgreSQL only; the server's database set-up
    refuse_mlflow_store(storage)
    last: Optional[Exception] = None
    for attempt in range(CREATE_ATTEMPTS):
        try:
            with _postgres_lock(storage):
                _check_stored_direction(storage, study_name, directions)
                study = optuna.create_study(
                    storage=storage,
                    study_name=study_name,
                    directions=list(directions),
                    load_if_exists=True,
                )
            break
        except DBAPIError as exc:  # tables or the study created by another process meanwhile
            last = exc
            time.sleep(0.2 * (attempt + 1))
        except RuntimeError as exc:  # Optuna: the stored schema is another version's
            if "compatible with the table schema" not in str(exc):
                raise
            raise ConfigError(
                f"hydra.sweeper.storage={redact(storage)}: {exc} Upgrading changes the schema "
                "for every process using the storage: upgrade Optuna on all of them first "
                "(pip install -e . installs the project's Optuna)."
            ) from None
    else:
        raise ConfigError(
            f"hydra.sweeper.storage={redact(storage)}: could not create or load "
            f"study {study_name!r} after {CREATE_ATTEMPTS} attempts: {last}"
        )
    return study


def _check_stored_direction(storage: str, study_name: str, directions: Sequence[str]) -> None:
    """Refuse to join a stored study that optimises the other way (before Optuna would)."""
    import optuna

    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        have = [d.name.lower() for d in summary.directions]
        if summary.study_name == study_name and have != list(directions):
            raise ConfigError(
                f"study {study_name!r} in {redact(storage)} exists with direction "
                f"{', '.join(have)}, but this search would "
                f"{', '.join(directions)}; choose another hydra.sweeper.study_name"
            )


@contextmanager
def _postgres_lock(storage: str):
    """Hold a PostgreSQL session advisory lock (released when its connection closes) while
    the body runs; other databases: no lock."""
    parts = urlsplit(storage)
    if parts.scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        yield
        return
    import psycopg

    with psycopg.connect(
        urlunsplit(("postgresql",) + tuple(parts)[1:]), autocommit=True, connect_timeout=10
    ) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        yield
