"""The Hydra task wrapper: runs one job and decides what a failure means for a sweep.

Single run: an expected error (bad config value, missing dataset, bad data file) prints its
message alone and exits with status 2 (``MADCLUSTER_FULL_ERROR=1`` shows the traceback); any
other failure propagates with its traceback. Multirun: the failing job is already marked FAILED
in MLflow with its traceback; it returns NaN so the sweep goes on.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import List

from omegaconf import DictConfig, OmegaConf

from madcluster_exp.config import register_configs
from madcluster_exp.errors import ExpectedError, full_error_requested, report
from madcluster_exp.launchers import register_plugins
from madcluster_exp.pipeline.context import JobContext

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("madcluster_exp")

register_configs()
register_plugins()  # hydra/launcher=ray

# `madcluster=true|false` (and yes/no) mean on/off: Hydra would reject a boolean group option.
_ONOFF = re.compile(r"^(\+{0,2}madcluster)=(true|false|yes|no)$", re.IGNORECASE)


def normalise_argv(args: List[str]) -> List[str]:
    """Command-line overrides with boolean spellings of the madcluster group mapped to on/off."""
    out = []
    for arg in args:
        m = _ONOFF.match(arg)
        out.append(
            f"{m.group(1)}={'on' if m.group(2).lower() in ('true', 'yes') else 'off'}" if m else arg
        )
    return out


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


def job(cfg: DictConfig, context: JobContext) -> float:
    """Run one job; return what a sweeper optimises (``search.objective``): the best validation
    loss (NaN for a classical detector, which has none), or VUS-PR on the validation
    split with injected anomalies. ``context``: the Hydra run the job is part of."""
    from madcluster_exp.config import SEARCH_OBJECTIVES
    from madcluster_exp.pipeline.job import run

    try:
        result = run(cfg, context)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - a sweep must survive any single job's failure
        if not context.multirun:
            if isinstance(exc, ExpectedError) and not full_error_requested():
                raise SystemExit(report(exc)) from None
            raise
        log.error("job failed (%s: %s); marked FAILED, sweep continues", type(exc).__name__, exc)
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
