"""A team tracking server: ``mlflow server`` on 127.0.0.1 over a PostgreSQL backend store, with
artifacts proxied by the server into a folder of its own (workers need no shared disk).

    python -m madcluster_exp.tracking.server [backend=<uri>] [port=5000] [artifacts=<folder>]
        [host=127.0.0.1] [workers=2]        (what `make server` runs)

Before the server starts, the backend database is created if it does not exist (PostgreSQL)
and MLflow's schema migrations are applied (``mlflow db upgrade``), so a store written by an
older MLflow keeps working. Workers then log to it with ``MLFLOW_TRACKING_URI=http://<host>:<port>``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional
from urllib.parse import urlsplit, urlunsplit

from madcluster_exp.errors import ExpectedError, cli_errors
from madcluster_exp.utils.cli_args import Option, parse

#: The local PostgreSQL server's `mlflow` database (trust authentication on 127.0.0.1).
DEFAULT_BACKEND = "postgresql://127.0.0.1:5432/mlflow"
BACKEND_ENV = "MLFLOW_BACKEND_URI"


class ServerError(ExpectedError, RuntimeError):
    """The server or its database could not be started; the message says why."""


def backend_uri(configured: Optional[str] = None) -> str:
    return configured or os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND


def _postgres_parts(uri: str):
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[0]
    return (parts, parts.path.lstrip("/")) if scheme in ("postgresql", "postgres") else (None, "")


def ensure_database(uri: str) -> bool:
    """Create the PostgreSQL database named in ``uri`` if it is missing; True if created.
    Other backends (SQLite, MySQL) are left to MLflow."""
    parts, name = _postgres_parts(uri)
    if parts is None:
        return False
    import psycopg
    from psycopg import sql

    admin = urlunsplit(("postgresql", parts.netloc, "/postgres", parts.query, ""))
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return not exists
    except psycopg.OperationalError as exc:
        raise ServerError(
            f"cannot reach PostgreSQL for {BACKEND_ENV}={redact(uri)}: "
            f"{str(exc).strip()}. Start PostgreSQL, or set {BACKEND_ENV}."
        ) from None


def drop_database(uri: str) -> None:
    """Drop the PostgreSQL database named in ``uri`` (tests create and drop their own)."""
    parts, name = _postgres_parts(uri)
    import psycopg
    from psycopg import sql

    admin = urlunsplit(("postgresql", parts.netloc, "/postgres", parts.query, ""))
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def redact(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def upgrade_schema(uri: str) -> None:
    """Apply MLflow's schema migrations (creates the tables in an empty database)."""
    out = subprocess.run(
        [sys.executable, "-m", "mlflow", "db", "upgrade", uri], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise ServerError(f"mlflow db upgrade {redact(uri)} failed:\n{out.stderr[-2000:]}")


def server_command(
    uri: str, port: int, artifacts: Path, host: str = "127.0.0.1", workers: int = 2
) -> List[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--backend-store-uri",
        uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str(Path(artifacts).resolve()),
        "--workers",
        str(workers),
    ]


def wait_until_ready(
    proc: subprocess.Popen, url: str, log_path: Optional[Path] = None, timeout: float = 600.0
) -> None:
    """Wait for ``<url>/health``; fail at once, with the server's own log, if the process
    exits. The timeout is generous: on a loaded machine the start can take minutes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = log_path.read_text()[-3000:] if log_path and log_path.exists() else ""
            raise ServerError(
                f"mlflow server exited with status {proc.returncode} before it was ready:\n{log}"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise ServerError(
        f"mlflow server at {url} not ready after {timeout:.0f} s (still running; "
        f"its log: {log_path})"
    )


@contextmanager
def running_server(
    uri: str, port: int, artifacts: Path, log_path: Path, workers: int = 1
) -> Iterator[str]:
    """Create and migrate the database, run the server until the block ends; yields its URL."""
    ensure_database(uri)
    upgrade_schema(uri)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            server_command(uri, port, artifacts, workers=workers),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_ready(proc, f"http://127.0.0.1:{port}", log_path)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


OPTIONS = {
    "backend": Option(f"backend store URI (default: ${BACKEND_ENV}, else {DEFAULT_BACKEND})"),
    "host": Option(
        "interface to bind (a LAN address to serve other machines)", default="127.0.0.1"
    ),
    "port": Option("port to listen on", kind=int, default=5000),
    "artifacts": Option(
        "folder the server stores artifacts in", default="outputs/server-artifacts"
    ),
    "workers": Option("server worker processes", kind=int, default=2),
}


@cli_errors
def main(argv: Optional[List[str]] = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv, OPTIONS, __doc__.split("\n\n")[1])
    uri = backend_uri(args["backend"])
    if ensure_database(uri):
        print(f"created database {redact(uri)}")
    upgrade_schema(uri)
    cmd = server_command(
        uri, args["port"], Path(args["artifacts"]), host=args["host"], workers=args["workers"]
    )
    print(
        f"MLflow server on http://{args['host']}:{args['port']} (backend {redact(uri)}, artifacts "
        f"{Path(args['artifacts']).resolve()}); workers log with "
        f"MLFLOW_TRACKING_URI=http://<this host>:{args['port']}",
        flush=True,
    )
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
