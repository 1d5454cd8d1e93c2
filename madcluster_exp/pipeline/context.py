"""What a job knows of the Hydra run it is part of, read once at the entry point.

``python -m madcluster_exp`` reads Hydra's runtime config into a :class:`JobContext`
(``app.context_from_hydra``) and hands it to :func:`madcluster_exp.pipeline.job.run`; nothing
below the entry point reads ``HydraConfig``. A job
started from Python (tests, notebooks) gets :meth:`JobContext.outside_hydra`: the current
directory, no sweep, no overrides.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from madcluster_exp.tracking.sweep import read_parent

#: The sweeper settings a trial's tags name (:func:`search_tags`).
SWEEPER_KEYS = ("study_name", "storage")


@dataclass(frozen=True)
class JobContext:
    #: The directory the command was started from: relative paths resolve against it.
    cwd: Path
    #: Whether a Hydra command runs the job (then ``overrides`` are its command line's).
    under_hydra: bool = False
    #: Hydra's job directory; None: the job makes its own under ``paths.output_dir``.
    output_dir: Optional[Path] = None
    multirun: bool = False
    overrides: Tuple[str, ...] = ()
    job_num: Optional[int] = None
    #: The sweep directory (absolute; multirun only): holds the sweep's parent run id.
    sweep_dir: Optional[Path] = None
    #: The launcher's ``n_jobs`` (jobs run at once; negative: one per core), None if unset.
    launcher_jobs: Optional[int] = None
    #: The sweeper's study name and storage (an Optuna search), the keys it sets.
    sweeper: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def outside_hydra(cls) -> "JobContext":
        """A job started from Python: the current directory, no sweep."""
        return cls(cwd=Path(os.getcwd()))

    def parent_run_id(self) -> Optional[str]:
        """The sweep's parent run (multirun: written by the sweep callback), else None."""
        return read_parent(self.sweep_dir) if self.multirun else None

    def sweep_threads(self) -> Optional[int]:
        """Threads per job when a parallel launcher runs several jobs at once: PyTorch's OpenMP
        threads spin at barriers, so jobs that share cores must split them (a 2-thread step
        became 15-20x slower with another process on one of 2 cores)."""
        if not self.multirun or self.launcher_jobs is None:
            return None
        cores = os.cpu_count() or 1
        parallel = cores if self.launcher_jobs < 0 else self.launcher_jobs
        return max(1, cores // max(1, parallel))

    def tags(self) -> Dict[str, str]:
        """``hydra.overrides`` (under Hydra) and ``hydra.job.num`` (where Hydra numbers jobs)."""
        if not self.under_hydra:
            return {}
        tags = {"hydra.overrides": " ".join(self.overrides)}
        if self.job_num is not None:
            tags["hydra.job.num"] = str(self.job_num)
        return tags
