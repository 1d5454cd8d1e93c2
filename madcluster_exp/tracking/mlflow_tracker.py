"""Trackers: MLflow (SQLite by default, any tracking URI works) and a null tracker.

Uses ``MlflowClient`` with explicit run ids rather than the fluent API's global "active run",
so several runs (a parent and its children, or a run being resumed) never get mixed up.
Metrics go in batches: one SQLite round-trip per epoch, not one per value.

A job's saved detector is an MLflow 3 logged model of its run (``LoggedModel``: its own
``model_id``, listed on the run's page under "Logged models", loadable by ``models:/<model id>``
and by ``runs:/<run id>/model``); its files live with the model, not among the run's artifacts.
"""

from __future__ import annotations

import math
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
#: The experiment tag MLflow 3's UI reads to choose an experiment's pages: a model-training
#: experiment opens on its runs (unmarked, it may open on traces, which this project has none of).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch
METRICS_PER_BATCH = 1000


def default_tracking_uri(output_dir: Path) -> str:
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def resolve_tracking_uri(configured: Optional[str], output_dir: Path) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else the project's SQLite store."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(output_dir)


def logged_model(client, run_id: str, name: str):
    """The run's logged model ``name`` (an MLflow ``LoggedModel``), None if it has none."""
    from mlflow.exceptions import MlflowException

    try:
        experiment_id = client.get_run(run_id).info.experiment_id
        found = client.search_logged_models(
            [experiment_id], filter_string=f"name = '{name}'", max_results=1000
        )
    except MlflowException:
        return None
    return next((m for m in found if m.source_run_id == run_id), None)


def _chunks(items: List[Any], size: int) -> Iterable[List[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _timed(method):
    """Accumulate the wall time spent in tracking calls (``tracker.seconds``), so a run can
    report what tracking cost it."""

    def wrapper(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class Tracker(ABC):
    """What a job records: one run's params, tags, metrics (batched) and artifacts, with its
    status at the end. ``seconds`` accumulates the wall time spent tracking."""

    run_id: Optional[str] = None
    uri: Optional[str] = None
    seconds: float = 0.0
    #: Whether the run is an existing one continued (:meth:`resume`), not one started here.
    resumed: bool = False

    @abstractmethod
    def start(
        self,
        run_name: str,
        params: Dict[str, Any],
        tags: Dict[str, str],
        parent_run_id: Optional[str] = None,
    ) -> None: ...

    @abstractmethod
    def resume(self, run_id: str) -> None: ...

    @abstractmethod
    def log_params(self, params: Dict[str, Any]) -> None: ...

    @abstractmethod
    def set_tags(self, tags: Dict[str, str]) -> None: ...

    @abstractmethod
    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None: ...

    @abstractmethod
    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None: ...

    @abstractmethod
    def log_artifacts(self, directory: Path, artifact_path: Optional[str] = None) -> None: ...

    @abstractmethod
    def delete_tag(self, key: str) -> None:
        """Remove a tag from the run (a resumed run that finished drops its old ``error``)."""

    @abstractmethod
    def delete_artifact(self, path: str) -> bool:
        """Remove the run's artifact file ``path``; False where the store cannot delete."""

    @abstractmethod
    def model_id(self, name: str) -> Optional[str]:
        """The id of this run's logged model ``name``: the one it already has (a resumed run
        saves its model again), else a new one, pending until :meth:`log_model`. None when
        nothing is tracked."""

    @abstractmethod
    def log_model(self, model_id: str, directory: Path) -> None:
        """Upload the saved model ``directory`` as logged model ``model_id``'s files, list it
        as the run's output and mark it ready."""

    @abstractmethod
    def end(self, status: str = "FINISHED") -> None: ...

    @abstractmethod
    def new_run(self) -> "Tracker":
        """A tracker for another run in the same store and experiment (a child run)."""


class NullTracker(Tracker):
    """Records nothing (``tracking=none``)."""

    def start(self, run_name, params, tags, parent_run_id=None) -> None:
        pass

    def resume(self, run_id) -> None:
        pass

    def log_params(self, params) -> None:
        pass

    def set_tags(self, tags) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_artifact(self, path, artifact_path=None) -> None:
        pass

    def log_artifacts(self, directory, artifact_path=None) -> None:
        pass

    def delete_tag(self, key) -> None:
        pass

    def delete_artifact(self, path) -> bool:
        return True

    def model_id(self, name) -> None:
        return None

    def log_model(self, model_id, directory) -> None:
        pass

    def end(self, status="FINISHED") -> None:
        pass

    def new_run(self) -> "NullTracker":
        return NullTracker()


class MLflowTracker(Tracker):
    """Records into an MLflow tracking store (SQLite file, server URL, database URI)."""

    def __init__(self, uri: str, experiment: str, artifact_root: Optional[Path] = None):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._experiment_id(experiment, artifact_root)
        self.run_id: Optional[str] = None

    @classmethod
    def for_run(cls, uri: str, run_id: str) -> "MLflowTracker":
        """A tracker attached to an existing run (to add metrics to it later)."""
        from mlflow.tracking import MlflowClient

        self = cls.__new__(cls)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        run = self.client.get_run(run_id)
        self.experiment_id = run.info.experiment_id
        self.run_id = run_id
        return self

    def new_run(self) -> "MLflowTracker":
        """A tracker for another run in the same store and experiment (a child run)."""
        other = self.__class__.__new__(self.__class__)
        other.uri, other.client, other.experiment_id = self.uri, self.client, self.experiment_id
        other.run_id, other.seconds = None, 0.0
        return other

    def _experiment_id(self, name: str, artifact_root: Optional[Path]) -> str:
        key, kind = EXPERIMENT_KIND
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if key not in exp.tags:  # made before experiments were marked
                self.client.set_experiment_tag(exp.experiment_id, key, kind)
            return exp.experiment_id
        location = None
        if artifact_root is not None and self.uri.startswith("sqlite:"):
            # Keep artifacts beside the database instead of wherever the command was started.
            location = artifact_root.resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location, tags={key: kind})
        except Exception:
            # Another process created it between our lookup and create.
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    @_timed
    def start(
        self,
        run_name: str,
        params: Dict[str, Any],
        tags: Dict[str, str],
        parent_run_id: Optional[str] = None,
    ) -> None:
        all_tags = {"mlflow.runName": run_name, **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        self.log_params(params)

    @_timed
    def resume(self, run_id: str) -> None:
        """Continue an existing run (after a crash or kill) instead of creating a new one."""
        run = self.client.get_run(run_id)
        self.run_id, self.resumed = run_id, True
        self.client.update_run(run_id, status="RUNNING")
        resumed = int(run.data.tags.get("resumed", "0")) + 1
        self.set_tags({"resumed": str(resumed)})

    @_timed
    def log_params(self, params: Dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
        for chunk in _chunks(items, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)

    @_timed
    def set_tags(self, tags: Dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for chunk in _chunks(items, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=chunk)

    @_timed
    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        ]
        for chunk in _chunks(items, METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)

    @_timed
    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    @_timed
    def log_artifacts(self, directory: Path, artifact_path: Optional[str] = None) -> None:
        """Every file under ``directory`` as the artifact directory ``artifact_path``."""
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    @_timed
    def delete_tag(self, key: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_tag(self.run_id, key)
        except MlflowException:
            pass  # not set

    @_timed
    def delete_artifact(self, path: str) -> bool:
        from mlflow.exceptions import MlflowException
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        root = self.client.get_run(self.run_id).info.artifact_uri
        try:
            get_artifact_repository(root, tracking_uri=self.uri).delete_artifacts(path)
        except (MlflowException, NotImplementedError, OSError):
            return False
        return True

    @_timed
    def model_id(self, name: str) -> str:
        # Only a continued run can have one already (its first start got as far as saving).
        existing = logged_model(self.client, self.run_id, name) if self.resumed else None
        if existing is not None:
            return existing.model_id
        return self.client.create_logged_model(
            self.experiment_id, name=name, source_run_id=self.run_id
        ).model_id

    @_timed
    def log_model(self, model_id: str, directory: Path) -> None:
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus

        try:
            self.client.log_model_artifacts(model_id, str(directory))
        except BaseException:
            self.client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
            raise
        listed = set()
        if self.resumed:  # a resumed run saving its model again lists it once
            outputs = self.client.get_run(self.run_id).outputs
            listed = {o.model_id for o in (outputs.model_outputs if outputs else [])}
        if model_id not in listed:
            self.client.log_outputs(self.run_id, [LoggedModelOutput(model_id, step=0)])
        self.client.finalize_logged_model(model_id, LoggedModelStatus.READY)

    @_timed
    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
