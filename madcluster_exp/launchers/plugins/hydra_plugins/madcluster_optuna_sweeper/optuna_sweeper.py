"""Hydra sweeper plug-in ``hydra/sweeper=madcluster_optuna``: a hyper-parameter search on
Optuna's public API (any current Optuna), one study shared by every process given the same
storage and study name; the work is done by :mod:`madcluster_exp.launchers.optuna_sweep`.

Its own name, not ``optuna``: Hydra's Optuna sweeper (hydra-optuna-sweeper, which pins
optuna<3) registers ``hydra/sweeper=optuna`` where it is still installed, and the two must not
replace each other's configuration. Nothing here imports Optuna: Hydra imports this module when
it scans its plug-ins, for every command.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class MadclusterOptunaSweeperConf:
    _target_: str = "hydra_plugins.madcluster_optuna_sweeper.optuna_sweeper.OptunaStudySweeper"
    # The sampler is built by the sweeper (a GridSampler needs the search space first).
    _recursive_: bool = False
    # The sampler: its class and arguments, e.g. {_target_: optuna.samplers.RandomSampler}.
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None}
    )
    # minimize or maximize: must be what search.objective asks for (checked before any trial).
    direction: Any = "minimize"
    # Database URL of a study shared by several processes (postgresql://host:5432/optuna,
    # sqlite:///path.db); None: the study is in memory, for this process only.
    storage: Optional[str] = None
    # The study: a name that exists in the storage is continued.
    study_name: Optional[str] = None
    # Trials this process runs, and how many of them are launched at a time.
    n_trials: int = 20
    n_jobs: int = 1
    # Share of a batch's jobs that may raise out of the task function before the search stops
    # (a job that fails inside the project returns NaN: its trial is FAIL and never counts).
    max_failure_rate: float = 0.0
    # The search space: parameter -> Hydra sweep override (interval(...), choice(...), ...).
    params: Optional[Dict[str, str]] = None
    # Optional: a function (cfg, trial) -> None that suggests further parameters in Python.
    custom_search_space: Optional[str] = None


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="madcluster_optuna",
    node=MadclusterOptunaSweeperConf,
    provider="madcluster_exp",
)


class OptunaStudySweeper(Sweeper):
    def __init__(self, **options: Any) -> None:
        from madcluster_exp.launchers.optuna_sweep import OptunaSweep

        self.impl = OptunaSweep(options)
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = self.impl.launcher

    def sweep(self, arguments: List[str]) -> Any:
        from madcluster_exp.errors import ExpectedError, full_error_requested, report

        try:
            return self.impl.sweep(self, arguments)
        except ExpectedError as exc:  # a setting to change: its message, no traceback
            if full_error_requested():
                raise
            raise SystemExit(report(exc)) from None
