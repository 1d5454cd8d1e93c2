"""The Hydra task wrapper: runs one job and decides what a failure means for a sweep.

Single run: a failure propagates (non-zero exit, traceback shown). Multirun: the failing job is
already marked FAILED in MLflow with its traceback; it returns NaN so the sweep goes on.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from omegaconf import DictConfig

from madcluster_exp.config import register_configs

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("madcluster_exp")

register_configs()


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job(cfg: DictConfig) -> float:
    """Run one job; return the best validation loss (what a sweeper may minimise; NaN for a
    classical detector, which has no loss)."""
    from madcluster_exp.run import run

    try:
        result = run(cfg)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - a sweep must survive any single job's failure
        if not _is_multirun():
            raise
        log.error("job failed (%s: %s); marked FAILED, sweep continues", type(exc).__name__, exc)
        return math.nan
    return float(result.metrics.get("val/best_loss", math.nan))
