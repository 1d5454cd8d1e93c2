"""The run a person names with ``run=<run id | run directory>`` (evaluate, predict): a job's
output directory, or a run id in an MLflow tracking store."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Type

from madcluster_exp.errors import ExpectedError
from madcluster_exp.tracking.mlflow_tracker import logged_model, resolve_tracking_uri


class RunNotFound(ExpectedError, LookupError):
    """``run=`` names neither a directory nor a run of the tracking store."""


@dataclass(frozen=True)
class RunRef:
    """A run found: its job directory (None when named by run id), its MLflow run id and
    tracking uri (None when unknown: a directory of a run made without tracking)."""

    directory: Optional[Path]
    run_id: Optional[str]
    uri: Optional[str]

    def download(self, artifact: str, dest: str) -> Optional[Path]:
        """Local copy, under ``dest``, of the MLflow run's ``artifact``; None when the run has
        no such artifact. ``model/...`` is read from the run's logged model ``model`` (MLflow 3
        keeps a logged model's files with the model, not among the run's artifacts), or from
        the run's artifacts where an older version logged the model there."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        name, _, inside = artifact.partition("/")
        model = logged_model(client, self.run_id, name)
        try:
            if model is None:
                return Path(client.download_artifacts(self.run_id, artifact, dest))
            import mlflow.artifacts

            # Read from the model's own location with this store's client: MLflow resolves
            # runs:/ and models:/ URIs of a logged model with the global tracking URI instead.
            source = f"{model.artifact_location.rstrip('/')}/{inside}".rstrip("/")
            return Path(
                mlflow.artifacts.download_artifacts(source, dst_path=dest, tracking_uri=self.uri)
            )
        except (MlflowException, OSError):
            return None


def find_run(run: str, uri: Optional[str], error: Type[Exception] = RunNotFound) -> RunRef:
    """``run`` as a job directory when one is there (its run_info.json, if any, gives the run
    id and tracking uri; ``uri`` overrides the latter), else as a run id in ``uri`` (else
    $MLFLOW_TRACKING_URI, else outputs/mlflow.db under the working directory). Raises
    ``error`` (each command's own class) when it is neither."""
    path = Path(run)
    if path.is_dir():
        info_path = path / "run_info.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        return RunRef(path, info.get("run_id"), uri or info.get("tracking_uri"))
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    tracking_uri = resolve_tracking_uri(uri, Path.cwd() / "outputs")
    try:
        MlflowClient(tracking_uri).get_run(run)
    except MlflowException as exc:
        raise error(
            f"run={run!r} is neither a run directory nor a run id in {tracking_uri}: {exc.message}"
        ) from None
    return RunRef(None, run, tracking_uri)
