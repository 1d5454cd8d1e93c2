"""The MLflow UI over the project's SQLite store, opened where the runs are (what `make ui` runs).

    python -m madcluster_exp.tracking.ui [outputs=outputs] [port=5000] [host=127.0.0.1]
        [experiment=madcluster_exp]

MLflow 3's UI opens on its GenAI home page, and an experiment page it cannot classify opens on
its traces ("Traces 0 / No data" here: this project logs runs, not traces). So the URL of the
experiment's runs list is printed first, and the experiment is marked a model-training one
(``mlflow.experimentKind``, as every job marks it). The experiment is created when it is not
there yet, with its artifacts beside the database as a job would create it, so the URL works
on a fresh checkout too. Then ``mlflow ui`` takes over the process (Ctrl-C stops it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

from madcluster_exp.errors import cli_errors
from madcluster_exp.tracking.mlflow_tracker import MLflowTracker, default_tracking_uri
from madcluster_exp.utils.cli_args import Option, parse

OPTIONS = {
    "outputs": Option("folder holding mlflow.db (a job's paths.output_dir)", default="outputs"),
    "port": Option("port to listen on", kind=int, default=5000),
    "host": Option("interface to bind", default="127.0.0.1"),
    "experiment": Option("experiment whose runs the URL opens", default="madcluster_exp"),
}


def runs_url(host: str, port: int, experiment_id: str) -> str:
    """The UI's page of an experiment's runs list (MLflow 3's route)."""
    return f"http://{host}:{port}/#/experiments/{experiment_id}/runs"


def ui_command(uri: str, host: str, port: int, artifacts: Path) -> List[str]:
    """``mlflow ui`` over ``uri``; artifacts it is sent land in ``artifacts`` (not ./mlartifacts
    of wherever it was started)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--host",
        host,
        "--port",
        str(port),
        "--backend-store-uri",
        uri,
        "--artifacts-destination",
        str(artifacts),
    ]


@cli_errors
def main(argv: Optional[List[str]] = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv, OPTIONS, __doc__.split("\n\n")[1])
    outputs = Path(args["outputs"]).expanduser().resolve()
    outputs.mkdir(parents=True, exist_ok=True)
    uri = default_tracking_uri(outputs)
    tracker = MLflowTracker(uri, args["experiment"], artifact_root=outputs / "mlartifacts")
    url = runs_url(args["host"], args["port"], tracker.experiment_id)
    print(f"MLflow UI: {url}  (experiment {args['experiment']!r} in {uri})", flush=True)
    cmd = ui_command(uri, args["host"], args["port"], outputs / "mlartifacts")
    os.execv(cmd[0], cmd)  # the UI is this process from here: signals reach it directly
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
