"""Errors a person reads: expected failures print their message alone, without a traceback.

Every error the user can fix by changing a command, a config value or a data file derives from
:class:`ExpectedError` (config, data, report and evaluate errors, bad metric inputs). The command
line entry points print such an error as ``error: <message>`` and exit with status 2; anything
else is a bug and keeps its traceback. ``MADCLUSTER_FULL_ERROR=1`` (or Hydra's
``HYDRA_FULL_ERROR=1``) shows the full traceback of expected errors too.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable, Optional, TypeVar

F = TypeVar("F", bound=Callable[..., int])
EXIT_USAGE = 2
#: A command stopped by Ctrl-C exits as a shell reports SIGINT: 128 + 2.
EXIT_INTERRUPTED = 130


class ExpectedError(Exception):
    """A failure whose message says what to change; no traceback needed."""

    #: Raised before the job's MLflow run existed (a config or data error found up front).
    before_run: bool = False


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a job after its MLflow run was marked KILLED: what a person needs to go
    on with it (the entry point prints it as one line). ``checkpoint_epoch``: the last epoch
    whose checkpoint is in ``job_dir`` (None: no checkpoint, nothing to continue)."""

    def __init__(
        self,
        run_id: Optional[str],
        run_name: str,
        job_dir: Path,
        checkpoint_epoch: Optional[int],
    ):
        super().__init__(f"{run_name} interrupted")
        self.run_id = run_id
        self.run_name = run_name
        self.job_dir = job_dir
        self.checkpoint_epoch = checkpoint_epoch


def full_error_requested() -> bool:
    return any(
        os.environ.get(v, "") not in ("", "0")
        for v in ("MADCLUSTER_FULL_ERROR", "HYDRA_FULL_ERROR")
    )


def report(exc: BaseException) -> int:
    """Print an expected error for a person and return the exit status to use."""
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_USAGE


def cli_errors(main: F) -> F:
    """Decorate a command-line ``main``: expected errors become a message and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except ExpectedError as exc:
            if full_error_requested():
                raise
            return report(exc)

    return wrapper  # type: ignore[return-value]
