"""Hyper-parameter search on Optuna's public API (``hydra/sweeper=madcluster_optuna``).

The sweeper asks the study for ``n_jobs`` trials at a time (``study.ask``), launches one Hydra
job per trial through the configured launcher (basic, joblib, Ray, SLURM), and tells the study
each job's objective (``study.tell``). It runs with any current Optuna (>= 4); the search space
is written as in Hydra's Optuna sweeper, one Hydra override per parameter in
``hydra.sweeper.params`` or on the command line:

- ``interval(a, b)``: a float in [a, b] (Hydra's interval is a float one, even between ints);
  ``tag(log, interval(a, b))`` on a log scale;
- ``choice(a, b, c)`` or ``a,b,c``: one of the values;
- ``range(start, stop[, step])``: ``start``, ``start + step``, ... below ``stop`` (Hydra's
  meaning of range everywhere), ints when all three are; ``shuffle(range(...))``: the same
  values as a choice;
- a plain ``key=value``: fixed for every trial (recorded as the trial's user attribute).

Every job also gets ``search.trial=<trial number>``, so its MLflow run carries the tag
``optuna.trial`` and a report joins the study's trials to their runs. A job that fails returns
NaN (``madcluster_exp.app.job``; the Ray launcher does the same for a lost job): its trial is
told FAIL and the search goes on. A job whose error escapes the task function counts against
``max_failure_rate`` (0: the search stops, as Hydra's sweepers do). Trials this process asked
for and could not finish (interrupted, a launcher error) are told FAIL before it exits, so a
study never keeps trials RUNNING that nobody runs; a study name that exists is continued.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobStatus
from omegaconf import DictConfig, OmegaConf

from madcluster_exp.config import ConfigError

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"


# ------------------------------------------------------------------------------ search space
def _choices(override: Override) -> List[Any]:
    values = []
    for v in override.sweep_iterator():
        if v is not None and not isinstance(v, (str, int, float, bool)):
            raise ConfigError(
                f"{override.input_line}: a choice of Optuna's takes numbers, strings, booleans "
                f"or null, not {type(v).__name__} ({v!r})"
            )
        values.append(v)
    return values


def distribution(override: Override):
    """The Optuna distribution a sweep override describes, None for a plain (fixed) value."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if not override.is_sweep_override():
        return None
    if override.is_choice_sweep() or (override.is_range_sweep() and override.value().shuffle):
        return CategoricalDistribution(_choices(override))
    if override.is_range_sweep():
        values = _choices(override)
        if not values:
            raise ConfigError(f"{override.input_line}: the range has no value")
        step = override.value().step
        if all(isinstance(v, int) for v in values):
            return IntDistribution(values[0], values[-1], step=int(step))
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(step))
    if override.is_interval_sweep():
        sweep = override.value()
        return FloatDistribution(float(sweep.start), float(sweep.end), log="log" in sweep.tags)
    raise ConfigError(f"{override.input_line}: not a search space Optuna's sweeper understands")


def search_space(arguments: Sequence[str]) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """(searched parameter -> Optuna distribution, fixed parameter -> its value as written) of
    ``key=value`` overrides; a later override of the same key replaces an earlier one."""
    distributions: Dict[str, Any] = {}
    fixed: Dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        key = override.get_key_element()
        dist = distribution(override)
        distributions.pop(key, None)
        fixed.pop(key, None)
        if dist is None:
            fixed[key] = override.get_value_element_as_str()
        else:
            distributions[key] = dist
    return distributions, fixed


def override_value(value: Any) -> str:
    """A suggested value as Hydra override text that parses back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    try:
        (parsed,) = OverridesParser.create().parse_overrides([f"k={text}"])
        if not parsed.is_sweep_override() and parsed.value() == text:
            return text
    except Exception:  # noqa: BLE001 - anything Hydra cannot read plain is quoted
        pass
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def trial_overrides(trial, fixed: Dict[str, str]) -> Tuple[str, ...]:
    """A trial's job overrides: its suggested values, the fixed ones, its number."""
    params = [f"{k}={override_value(v)}" for k, v in trial.params.items()]
    return (
        *params,
        *(f"{k}={v}" for k, v in fixed.items()),
        f"search.trial={trial.number}",
    )


# ---------------------------------------------------------------------------------- sampler
def make_sampler(sampler: Any, distributions: Dict[str, Any]) -> Tuple[Any, Optional[int]]:
    """(the configured sampler, built from ``_target_`` and its arguments; the size of the grid
    for a GridSampler, None for another sampler). A GridSampler without a ``search_space`` of
    its own gets the grid of the search space, whose distributions must then be discrete."""
    import optuna
    from hydra.utils import get_class, instantiate

    if sampler is None:
        return None, None
    if OmegaConf.is_config(sampler):
        sampler = OmegaConf.to_container(sampler, resolve=True)
    conf = dict(sampler)
    if "_target_" not in conf:
        raise ConfigError(
            "hydra.sweeper.sampler has no _target_: expected a sampler class, e.g. "
            "hydra.sweeper.sampler._target_=optuna.samplers.TPESampler"
        )
    if get_class(conf["_target_"]) is not optuna.samplers.GridSampler:
        return instantiate(conf), None
    space = conf.get("search_space") or {k: grid_values(k, d) for k, d in distributions.items()}
    conf["search_space"] = space
    return instantiate(conf), math.prod(len(v) for v in space.values())


def grid_values(name: str, dist) -> List[Any]:
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if getattr(dist, "step", None) is not None and not getattr(dist, "log", False):
        n = int(round((dist.high - dist.low) / dist.step)) + 1
        values = [dist.low + i * dist.step for i in range(n)]
        # 12 significant digits: 0.1 + 2 * 0.1 is the grid's 0.3, not 0.30000000000000004
        return values if isinstance(dist.low, int) else [float(f"{v:.12g}") for v in values]
    raise ConfigError(
        f"{name}: optuna.samplers.GridSampler needs discrete values "
        "(choice(...) or range(...)), not an interval"
    )


# ------------------------------------------------------------------------------------ sweep
def objective_of(ret) -> Tuple[Optional[float], Optional[str]]:
    """(a job's objective, None) or (None, why its trial failed)."""
    try:
        result = ret.return_value  # a job whose error escaped the task function: raises it
    except Exception as exc:  # noqa: BLE001 - any error of the job's
        return None, f"{type(exc).__name__}: {exc}"
    try:
        value = float(result)
    except (TypeError, ValueError):
        return None, f"the job returned {result!r}, not a number"
    if math.isnan(value) or math.isinf(value):
        return None, f"the job returned {value} (it failed: see its MLflow run)"
    return value, None


def tell(study, trial, values=None, **kwargs) -> None:
    """``study.tell``; the trial that completes a GridSampler's grid is stored as told, then
    the sampler asks the study to stop, which only an ``optimize`` loop can: nothing to do,
    the sweep ends when its trials are done."""
    try:
        study.tell(trial, values, **kwargs)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


class OptunaSweep:
    """One sweep process's part of a study: ``n_trials`` trials, ``n_jobs`` at a time."""

    def __init__(self, options: Dict[str, Any]) -> None:
        self.options = options
        self.config: Optional[DictConfig] = None
        self.launcher = None
        self.hydra_context = None
        self.job_idx = 0

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, sweeper, arguments: List[str]):
        import optuna

        from madcluster_exp.launchers.optuna_study import (
            check_search,
            direction_names,
            prepare_study,
            redact,
            sqlalchemy_url,
        )

        opts = self.options
        storage = sqlalchemy_url(opts.get("storage"))
        study_name = opts.get("study_name")
        check_search(self.config.search.objective, opts["direction"], storage, study_name)
        directions = direction_names(opts["direction"])
        max_failure_rate = float(opts.get("max_failure_rate", 0.0))
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ConfigError(
                f"hydra.sweeper.max_failure_rate={max_failure_rate}: expected a value in [0, 1]"
            )
        params = [f"{k}={v}" for k, v in (opts.get("params") or {}).items()]
        distributions, fixed = search_space(params + list(arguments))
        custom = self._custom_search_space()
        sampler, grid = make_sampler(opts.get("sampler"), distributions)
        n_trials = int(opts["n_trials"])
        if grid is not None and grid < n_trials:
            log.info("GridSampler: %d trials, the size of the grid", grid)
            n_trials = grid

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        if storage is not None:
            prepare_study(storage, study_name, directions)
        study = optuna.create_study(
            storage=open_storage(storage),
            study_name=study_name,
            sampler=sampler,
            directions=directions,
            load_if_exists=True,
        )
        log.info(
            "Study %s (%s), sampler %s, %s; %d trial(s) of this process, %d at a time",
            study.study_name,
            redact(storage) if storage else "in memory",
            type(study.sampler).__name__,
            directions[0],
            n_trials,
            int(opts.get("n_jobs", 1)),
        )
        self._run(study, sweeper, distributions, fixed, custom, n_trials, max_failure_rate)
        return self._summarise(study, sweep_dir)

    def _custom_search_space(self):
        target = self.options.get("custom_search_space")
        if not target:
            return None
        from hydra.utils import get_method

        return get_method(target)

    def _run(self, study, sweeper, distributions, fixed, custom, n_trials, max_failure_rate):
        from optuna.trial import TrialState

        batch = max(1, int(self.options.get("n_jobs", 1)))
        left = n_trials
        open_trials: List[Any] = []
        try:
            while left > 0:
                open_trials = [study.ask(distributions) for _ in range(min(batch, left))]
                overrides = []
                for trial in open_trials:
                    for key, value in fixed.items():
                        trial.set_user_attr(key, value)
                    if custom is not None:
                        custom(self.config, trial)
                    overrides.append(trial_overrides(trial, fixed))
                sweeper.validate_batch_is_legal(overrides)
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                self.job_idx += len(returns)
                escaped = []
                for trial, ret in zip(open_trials, returns):
                    value, why = objective_of(ret)
                    if why is None:
                        tell(study, trial, value)
                        continue
                    tell(study, trial, state=TrialState.FAIL)
                    log.warning("trial %d failed, marked FAIL: %s", trial.number, why)
                    if ret.status != JobStatus.COMPLETED:
                        escaped.append(ret)
                open_trials = []
                if escaped and len(escaped) / len(returns) > max_failure_rate:
                    log.error(
                        "%d of %d job(s) raised with hydra.sweeper.max_failure_rate=%s",
                        len(escaped),
                        len(returns),
                        max_failure_rate,
                    )
                    _ = escaped[0].return_value  # raises the job's own error, with its traceback
                left -= len(returns)
        finally:
            for trial in open_trials:  # asked, never told: interrupted, or the launch failed
                try:
                    tell(study, trial, state=TrialState.FAIL, skip_if_finished=True)
                    log.warning("trial %d did not finish: marked FAIL", trial.number)
                except Exception as exc:  # noqa: BLE001 - the original error matters more
                    log.warning("could not mark trial %d FAIL: %s", trial.number, exc)

    def _summarise(self, study, sweep_dir: Path) -> Dict[str, Any]:
        from optuna.trial import TrialState

        states = [t.state for t in study.get_trials(deepcopy=False)]
        counts = {s.name: states.count(s) for s in TrialState if states.count(s)}
        results: Dict[str, Any] = {"name": "optuna", "study": study.study_name, "trials": counts}
        if TrialState.COMPLETE in states:
            best = study.best_trial
            results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
            log.info("Best trial: %d (of the whole study: %s)", best.number, counts)
            log.info("Best parameters: %s", best.params)
            log.info("Best value: %s", best.value)
        else:
            log.warning("No trial of study %s is complete (%s)", study.study_name, counts)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)
        return results


def open_storage(storage: Optional[str]):
    """Optuna's RDB storage for a URL (None: in memory); connections are checked before use,
    so a long trial does not leave the sweep a connection the database has since closed."""
    if storage is None:
        return None
    import optuna

    return optuna.storages.RDBStorage(storage, engine_kwargs={"pool_pre_ping": True})
