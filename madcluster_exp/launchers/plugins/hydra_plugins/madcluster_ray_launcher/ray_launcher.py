"""Hydra launcher plug-in ``hydra/launcher=ray``: every job of a sweep is a Ray task on the
cluster at ``$RAY_ADDRESS``; the work is done by :mod:`madcluster_exp.launchers.ray_sweep`."""

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class RayLauncherConf:
    _target_: str = "hydra_plugins.madcluster_ray_launcher.ray_launcher.RayLauncher"
    # Cluster address (None: $RAY_ADDRESS, else a local cluster of this machine's CPUs).
    address: Optional[str] = None
    # CPUs reserved per job on its node; also the job's torch/OpenMP thread count, so jobs
    # never oversubscribe a node.
    cpus_per_job: int = 1
    gpus_per_job: float = 0.0
    # Jobs re-run after a node or worker dies (0: a killed job is recorded KILLED, not re-run).
    max_retries: int = 0


ConfigStore.instance().store(
    group="hydra/launcher", name="ray", node=RayLauncherConf, provider="madcluster_exp"
)


class RayLauncher(Launcher):
    def __init__(self, **options: Any) -> None:
        self.options = options
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from madcluster_exp.launchers.ray_sweep import launch

        return launch(self, job_overrides, initial_job_idx)
