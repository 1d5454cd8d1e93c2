"""An Optuna study several sweep processes share (``hydra.sweeper.storage``), and the checks a
search needs before its first trial.

Every process that runs ``python -m madcluster_exp -m hparams_search=...`` with the same storage
and study name adds its ``n_trials`` trials to one study: Optuna's RDB storage hands out trial
numbers and records values in the database, and each process's sampler reads every finished
trial of the study before it suggests the next. What this module adds:

- a PostgreSQL URL is put in SQLAlchemy form for psycopg 3 (``postgresql://`` ->
  ``postgresql+psycopg://``), and its database is created if missing;
- the study is created before any trial, retrying when another process creates Optuna's tables
  or the study at the same moment (SQLAlchemy's ``create_all`` is not atomic across processes);
- a storage without a study name is refused (every process would start a study of its own), as
  are an objective and a direction that disagree (``search.objective`` decides which is
  right), and an existing study whose direction is not the search's.
"""
from __future__ import annotations

import time
from typing import List, Optional, Sequence
from urllib.parse import urlsplit

from madcluster_exp.config import SEARCH_OBJECTIVES, ConfigError

#: Attempts at creating or loading a study while another process creates the same one.
CREATE_ATTEMPTS = 8


def sqlalchemy_url(storage: Optional[str]) -> Optional[str]:
    """``postgresql://`` / ``postgres://`` with the psycopg 3 driver (the one installed);
    other URLs (``postgresql+<driver>://``, SQLite, MySQL) unchanged."""
    if storage is None:
        return None
    scheme = urlsplit(storage).scheme
    if scheme in ("postgresql", "postgres"):
        return "postgresql+psycopg" + storage[len(scheme):]
    return storage


def direction_names(direction) -> List[str]:
    """The sweeper's ``direction`` (a name, an enum, or a list of them) as lower-case names."""
    single = isinstance(direction, str) or hasattr(direction, "name")
    items = [direction] if single else list(direction)
    return [str(getattr(d, "name", d)).lower() for d in items]


def check_search(objective: str, direction, storage: Optional[str],
                 study_name: Optional[str]) -> None:
    """Refuse a search whose direction contradicts ``search.objective``, or a shared storage
    without a study name; the message names the keys and the values expected."""
    metric, wanted = SEARCH_OBJECTIVES[objective]
    have = direction_names(direction)
    if have != [wanted]:
        raise ConfigError(f"hydra.sweeper.direction={have if len(have) > 1 else have[0]} with "
                          f"search.objective={objective}: a job returns {metric}, which a "
                          f"search must {wanted}; expected hydra.sweeper.direction={wanted}")
    if storage is not None and not study_name:
        raise ConfigError(f"hydra.sweeper.storage={_redact(storage)} without "
                          "hydra.sweeper.study_name: every sweep process would start a study "
                          "of its own; expected a study name shared by all of them")


def prepare_study(storage: str, study_name: str, directions: Sequence[str]):
    """Create (or load) the study in ``storage`` before the sweeper does, surviving other
    processes doing the same at once; returns the study."""
    import optuna
    from sqlalchemy.exc import DBAPIError

    from madcluster_exp.tracking.server import ensure_database

    ensure_database(storage)  # PostgreSQL only; the server's database set-up
    last: Optional[Exception] = None
    for attempt in range(CREATE_ATTEMPTS):
        try:
            study = optuna.create_study(storage=storage, study_name=study_name,
                                        directions=list(directions), load_if_exists=True)
            break
        except DBAPIError as exc:  # tables or the study created by another process meanwhile
            last = exc
            time.sleep(0.2 * (attempt + 1))
    else:
        raise ConfigError(f"hydra.sweeper.storage={_redact(storage)}: could not create or load "
                          f"study {study_name!r} after {CREATE_ATTEMPTS} attempts: {last}")
    have = [d.name.lower() for d in study.directions]
    if have != list(directions):
        raise ConfigError(f"study {study_name!r} in {_redact(storage)} exists with direction "
                          f"{have}, but this search would {list(directions)}; choose another "
                          "hydra.sweeper.study_name")
    return study


def _redact(uri: str) -> str:
    from madcluster_exp.tracking.server import redact

    return redact(uri)
