"""What the jobs of one sweep share through the tracker: the parent run (its id in the sweep
directory's ``mlflow_parent.json``, or in the environment for launchers that start workers
before the file exists) and, for an Optuna search, the study's tags."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional
from urllib.parse import urlsplit

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
    from madcluster_exp.tracking.server import redact

    storage = sweeper.get("storage")
    return {
        "optuna.study": str(sweeper.get("study_name")),
        "optuna.storage": redact(sqlalchemy_url(storage)) if storage else "in-memory",
    }
