"""optuna-dashboard over a search's study storage, served on 127.0.0.1 (``make dashboard``).

    python -m madcluster_exp.launchers.dashboard [storage=<url>] [port=8080] [host=127.0.0.1]
        (make dashboard [STORAGE=<url>] [DASHBOARD_PORT=8080])

The storage is the one the searches were given (``hydra.sweeper.storage``, else
``$MADCLUSTER_OPTUNA_STORAGE``): ``postgresql://<host>:5432/optuna``, ``sqlite:///<file>``.
The dashboard reads it as it is (no table is created, no schema migrated); MLflow's tracking
database, a storage no study was written to yet, and a SQLite file that does not exist are
refused with what to pass instead. A search without a storage keeps its study in memory: there
is nothing to show, its report (``python -m madcluster_exp.report <sweep>``) has the trials.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

from madcluster_exp.errors import ExpectedError, cli_errors
from madcluster_exp.launchers.optuna_study import (
    STORAGE_ENV,
    redact,
    refuse_mlflow_store,
    sqlalchemy_url,
)
from madcluster_exp.utils.cli_args import Option, parse

OPTIONS = {
    "storage": Option(f"the searches' study storage URL (default: ${STORAGE_ENV})"),
    "port": Option("port to serve on", kind=int, default=8080),
    "host": Option("address to serve on (127.0.0.1: this machine only)", default="127.0.0.1"),
}


class DashboardError(ExpectedError, RuntimeError):
    """The dashboard cannot serve this storage (or this port); the message says what to do."""


def study_storage(configured: Optional[str]) -> str:
    """The storage URL to show, in SQLAlchemy form, checked to hold Optuna's studies."""
    storage = configured or os.environ.get(STORAGE_ENV)
    if not storage:
        raise DashboardError(
            f"no study storage: pass storage=<url> (make dashboard STORAGE=<url>) or set "
            f"{STORAGE_ENV}, e.g. postgresql://<host>:5432/optuna; a search without "
            "hydra.sweeper.storage keeps its study in memory (its report lists the trials)"
        )
    url = sqlalchemy_url(storage)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if str(path) != ":memory:" and not path.is_file():
            raise DashboardError(f"storage={url}: {path} does not exist")
    refuse_mlflow_store(url, key="storage")
    from sqlalchemy import create_engine, inspect

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    if "studies" not in tables:
        raise DashboardError(
            f"storage={redact(url)} has no Optuna study yet (no studies table): run a search "
            f"with hydra.sweeper.storage={redact(url)} first, or pass the storage the "
            "searches use"
        )
    return url


@cli_errors
def main(argv: Optional[List[str]] = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv, OPTIONS, __doc__.split("\n\n")[1])
    url = study_storage(args["storage"])
    import optuna_dashboard

    host, port = args["host"], args["port"]
    print(
        f"Optuna dashboard on http://{host}:{port}/dashboard (storage {redact(url)}); "
        "Ctrl-C stops it",
        flush=True,
    )
    try:
        optuna_dashboard.run_server(url, host=host, port=port)
    except OSError as exc:
        raise DashboardError(
            f"cannot serve on {host}:{port}: {exc.strerror or exc}; pass another port "
            "(make dashboard DASHBOARD_PORT=<port>)"
        ) from None
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
