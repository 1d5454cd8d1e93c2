"""The entry: the composed config becomes typed settings once, Hydra's runtime becomes a
:class:`~madcluster_exp.pipeline.context.JobContext` once, and a failure is given its meaning.

Single run: an expected error (bad config value, missing dataset, bad data file) prints its
message alone and exits with status 2 (``MADCLUSTER_FULL_ERROR=1`` shows the traceback); Ctrl-C
prints one line (the run marked KILLED, the command that resumes it) and exits with status 130;
any other failure propagates with its traceback. Multirun: the failing job is already marked
FAILED in MLflow with its traceback; it returns NaN so the sweep goes on.

Importing this module registers the config schemas and the project's Hydra plug-ins; the
pipeline (and torch) load only when a job runs, so ``--help`` and ``--cfg job`` stay fast.
"""

from __future__ import annotations

import logging
import math
import shlex
import sys
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from madcluster_exp.config import CONFIG_DIR, SEARCH_OBJECTIVES, load, register_configs
from madcluster_exp.errors import (
    EXIT_INTERRUPTED,
    ExpectedError,
    JobInterrupted,
    full_error_requested,
    report,
)
from madcluster_exp.launchers import register_plugins
from madcluster_exp.pipeline.context import SWEEPER_KEYS, JobContext

log = logging.getLogger("madcluster_exp")

register_configs()
register_plugins()  # hydra/launcher=ray


def user_groups() -> str:
    """The config groups a user picks from (``conf/<group>/*.yaml``), one line each, for
    ``--help``; the ``schema/*`` groups behind them are internals and stay out of it."""
    from hydra.core.config_store import ConfigStore

    conf = Path(CONFIG_DIR)
    groups = {
        p.name: {f.stem for f in p.glob("*.yaml")}
        for p in conf.iterdir()
        if p.is_dir() and p.name not in ("hydra", "local")
    }
    # Launchers: the installed Hydra plug-ins' and the project's own (conf/hydra/launcher/).
    plugins = {Path(name).stem for name in ConfigStore.instance().list("hydra/launcher")}
    groups["hydra/launcher"] = plugins | {f.stem for f in (conf / "hydra/launcher").glob("*.yaml")}
    return "\n".join(f"{g}: {', '.join(sorted(opts))}" for g, opts in sorted(groups.items()))


if not OmegaConf.has_resolver("madcluster_user_groups"):
    OmegaConf.register_new_resolver("madcluster_user_groups", user_groups)


def context_from_hydra() -> JobContext:
    """Hydra's runtime config as the job needs it (outside a Hydra run: outside_hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return JobContext.outside_hydra()
    hc = HydraConfig.get()
    cwd = Path(hc.runtime.cwd)
    multirun = hc.mode == RunMode.MULTIRUN
    sweep_dir = Path(hc.sweep.dir) if multirun else None
    n_jobs = hc.launcher.get("n_jobs") if multirun else None
    return JobContext(
        cwd=cwd,
        under_hydra=True,
        output_dir=Path(hc.runtime.output_dir),
        multirun=multirun,
        overrides=tuple(hc.overrides.task),
        job_num=hc.job.get("num"),
        sweep_dir=None if sweep_dir is None else cwd / sweep_dir,
        launcher_jobs=None if n_jobs is None else int(n_jobs),
        sweeper={k: hc.sweeper.get(k) for k in SWEEPER_KEYS if hc.sweeper.get(k) is not None},
    )


def run(
    cfg: DictConfig,
    context: Optional[JobContext] = None,
    output_dir: Optional[Path] = None,
    verbose: bool = True,
):
    """One job of a composed config (a :class:`~madcluster_exp.pipeline.job.RunResult`): the
    config is checked and made typed settings here, then the pipeline runs them. For Python
    callers (tests, notebooks); the command line goes through :func:`job`."""
    from madcluster_exp.pipeline.job import run as run_settings

    try:
        settings = load(cfg)
    except ExpectedError as exc:
        exc.before_run = True
        raise
    return run_settings(settings, context, output_dir, verbose)


def resume_command(overrides, job_dir: Path) -> str:
    """The command that continues the job in ``job_dir``: its overrides (any ``train.resume``
    dropped: resuming is the default) and ``hydra.run.dir`` naming the directory."""
    kept = [o for o in overrides if o.lstrip("+").split("=", 1)[0] != "train.resume"]
    argv = ["python", "-m", "madcluster_exp", *kept, f"hydra.run.dir={job_dir.resolve()}"]
    return shlex.join(argv)


def interrupted(exc: KeyboardInterrupt, overrides) -> str:
    """Ctrl-C as one line for a person: which run was marked KILLED and how to go on."""
    if not isinstance(exc, JobInterrupted):
        return "interrupted before the job's MLflow run started: nothing was recorded"
    run = f"MLflow run {exc.run_id} ({exc.run_name})" if exc.run_id else exc.run_name
    if exc.checkpoint_epoch is None:
        return (
            f"interrupted: {run} marked KILLED, no checkpoint to continue from in "
            f"{exc.job_dir}; the same command starts it again"
        )
    return (
        f"interrupted: {run} marked KILLED, checkpoint of epoch {exc.checkpoint_epoch} in "
        f"{exc.job_dir}; resume it with: {resume_command(overrides, exc.job_dir)}"
    )


def job(cfg: DictConfig, context: JobContext) -> float:
    """Run one job; return what a sweeper optimises (``search.objective``): the best validation
    loss (NaN for a classical detector, which has none), or VUS-PR on the validation
    split with injected anomalies. ``context``: the Hydra run the job is part of."""
    try:
        result = run(cfg, context)
    except KeyboardInterrupt as exc:
        if context.multirun or full_error_requested():
            raise
        print(interrupted(exc, context.overrides), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Exception as exc:  # noqa: BLE001 - a sweep must survive any single job's failure
        if not context.multirun:
            if isinstance(exc, ExpectedError) and not full_error_requested():
                raise SystemExit(report(exc)) from None
            raise
        if getattr(exc, "before_run", False):
            log.error("job failed before its MLflow run started (%s); sweep continues", exc)
        else:
            log.error(
                "job failed (%s: %s); marked FAILED, sweep continues", type(exc).__name__, exc
            )
        return math.nan
    fitted = result.fit is not None  # None: finished in an earlier start of the sweep
    if fitted and result.fit.val_loss_signal is False and cfg.search.objective == "val_loss":
        log.warning(
            "the validation loss of %s was constant over every epoch: a sweeper "
            "minimising it learns nothing from this job",
            result.run_name,
        )
    metric, _ = SEARCH_OBJECTIVES[cfg.search.objective]
    return float(result.metrics.get(metric, math.nan))
