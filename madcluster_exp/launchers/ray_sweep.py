"""Sweeps on a Ray cluster (``hydra/launcher=ray``), on Ray's public API only.

Each job is one Ray task reserving ``cpus_per_job`` CPUs (and ``gpus_per_job`` GPUs) of a node;
the task sets torch's and OpenMP's thread count to the same number, so the jobs placed on a node
never ask for more cores than it has. A job whose worker process dies (killed, out of memory,
node lost) is recorded as KILLED in MLflow (its run id is read from the job directory) and
counts as a failed job returning NaN, as a job that raised does: the sweep finishes the others.
The task function runs exactly as under Hydra's own launchers (``hydra.core.utils.run_job``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


def _job_config(launcher, overrides: Sequence[str], idx: int) -> DictConfig:
    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"
        cfg.hydra.job.num = idx
        # Absolute, so a worker whose current folder differs writes where the sweep lives.
        cfg.hydra.sweep.dir = str(Path(str(cfg.hydra.sweep.dir)).resolve())
    return cfg


#: Environment the jobs need from the launching shell (tracking server, parent run); Ray
#: workers inherit their node's environment, not the driver's.
FORWARDED_ENV = ("MLFLOW_", "MADCLUSTER_", "HYDRA_FULL_ERROR")


def forwarded_env() -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}


def _run_job(
    cfg: DictConfig,
    hydra_context,
    task_function,
    singleton_state: Dict[Any, Any],
    threads: int,
    env: Dict[str, str],
) -> JobReturn:
    """The Ray task: one Hydra job with ``threads`` torch/OpenMP threads."""
    import torch

    os.environ.update(env)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    launch_dir = Path(str(cfg.hydra.runtime.cwd))
    if launch_dir.is_dir():  # the same folder on a shared file system, as under joblib
        os.chdir(launch_dir)
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(cfg)
    ret = run_job(
        hydra_context=hydra_context,
        config=cfg,
        task_function=task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    ret.hydra_cfg = None  # Hydra's runtime config does not need to travel back
    return ret


def job_dir(cfg: DictConfig) -> Path:
    return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


def mark_lost(
    cfg: DictConfig, overrides: Sequence[str], reason: str, status: str = "KILLED"
) -> JobReturn:
    """The job did not return (its process died, or Ray could not run it): end its MLflow run
    with ``status`` and return a failed job (NaN), as a job that raised does."""
    info = job_dir(cfg) / "run_info.json"
    if info.exists():
        data = json.loads(info.read_text())
        if data.get("run_id") and data.get("tracking_uri"):
            from mlflow.tracking import MlflowClient

            client = MlflowClient(data["tracking_uri"])
            client.set_tag(data["run_id"], "error", reason[:5000])
            client.set_terminated(data["run_id"], status)
    log.error(
        "job #%s (%s) lost: %s; marked %s, sweep continues",
        cfg.hydra.job.num,
        " ".join(filter_overrides(overrides)),
        reason.splitlines()[0],
        status,
    )
    ret = JobReturn(overrides=list(overrides), cfg=cfg, status=JobStatus.COMPLETED)
    ret.return_value = math.nan
    return ret


def _connect(address):
    import ray

    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS")
        ray.init(address=target, log_to_driver=True, configure_logging=False)
    return ray


def launch(
    launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> List[JobReturn]:
    setup_globals()
    opts = launcher.options
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    ray = _connect(opts.get("address"))
    threads = int(opts.get("cpus_per_job", 1))
    remote = ray.remote(
        num_cpus=threads,
        num_gpus=float(opts.get("gpus_per_job", 0.0)),
        max_retries=int(opts.get("max_retries", 0)),
    )(_run_job)
    log.info(
        "Ray cluster %s: %d jobs, %d CPU(s) each",
        ray.get_runtime_context().gcs_address,
        len(job_overrides),
        threads,
    )
    state = Singleton.get_state()
    configs = [_job_config(launcher, ov, initial_job_idx + i) for i, ov in enumerate(job_overrides)]
    for cfg, ov in zip(configs, job_overrides):
        log.info("\t#%s : %s", cfg.hydra.job.num, " ".join(filter_overrides(ov)))
    env = forwarded_env()
    refs = [
        remote.remote(cfg, launcher.hydra_context, launcher.task_function, state, threads, env)
        for cfg in configs
    ]
    results: List[JobReturn] = []
    for ref, cfg, ov in zip(refs, configs, job_overrides):
        try:
            results.append(ray.get(ref))
        except ray.exceptions.RayTaskError as exc:  # raised outside the task function
            results.append(mark_lost(cfg, ov, f"{type(exc).__name__}: {exc}", "FAILED"))
        except ray.exceptions.RayError as exc:  # worker or node died, task cancelled, OOM
            results.append(mark_lost(cfg, ov, f"{type(exc).__name__}: {exc}"))
    return results
