"""Hydra sweeper plug-in: hydra-optuna-sweeper's sweeper with what a shared study needs.

Selected in ``conf/hparams_search/*.yaml`` by ``hydra.sweeper._target_``; everything else of
``hydra/sweeper=optuna`` (sampler, params, n_trials, ...) is unchanged. It adds, before the
first trial, the checks and study creation of :mod:`madcluster_exp.launchers.optuna_study`,
and gives every job its trial number as ``search.trial`` (tagged ``optuna.trial`` on its MLflow
run), so a report joins the study's trials to their runs.
"""

from typing import Any, List, Optional

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper


def _numbered_trials_impl():
    """The plug-in's implementation, each job's overrides ending in ``search.trial=<number>``.
    Imported when a search starts, not when Hydra scans its plug-ins (it imports Optuna)."""
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

    class NumberedTrials(OptunaSweeperImpl):
        def _configure_trials(self, trials, search_space_distributions, fixed_params):
            overrides = super()._configure_trials(trials, search_space_distributions, fixed_params)
            return [tuple(o) + (f"search.trial={t.number}",) for o, t in zip(overrides, trials)]

    return NumberedTrials


class SharedStudyOptunaSweeper(OptunaSweeper):
    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Optional[Any],
        study_name: Optional[str],
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        search_space: Any,
        custom_search_space: Optional[str],
        params: Any,
    ) -> None:
        from madcluster_exp.tracking.sweep import sqlalchemy_url

        impl = _numbered_trials_impl()
        self.sweeper = impl(
            sampler,
            direction,
            sqlalchemy_url(storage),
            study_name,
            n_trials,
            n_jobs,
            max_failure_rate,
            search_space,
            custom_search_space,
            params,
        )

    def sweep(self, arguments: List[str]) -> None:
        from madcluster_exp.launchers.optuna_study import (
            check_search,
            direction_names,
            prepare_study,
        )

        impl = self.sweeper
        check_search(impl.config.search.objective, impl.direction, impl.storage, impl.study_name)
        if impl.storage is not None:
            prepare_study(impl.storage, impl.study_name, direction_names(impl.direction))
        return super().sweep(arguments)
