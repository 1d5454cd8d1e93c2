"""The README's quickstart block runs as written: every command, in order, in a fresh folder,
leaving the checkout as it was; the guide's MLflow snippet then loads that folder's model.

The default suite runs each training command with ``debug=fast`` appended (seconds instead of
minutes; everything else as written); ``make test-all`` runs them verbatim. Placeholders
(``<date>/<time>``) are filled with the folder the preceding command created, as a reader would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from madcluster_exp.tracking.server import wait_until_ready
from tests.conftest import ROOT, free_port


def quickstart_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    block = next(b for b in blocks if "python -m madcluster_exp" in b)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def _latest(root: Path, pattern: str) -> str:
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    assert found, f"nothing matches {pattern} under {root}"
    return str(found[-1].relative_to(root))


def _prepare(command: str, cwd: Path, fast: bool):
    if "outputs/multiruns/<date>/<time>" in command:
        command = command.replace(
            "outputs/multiruns/<date>/<time>", _latest(cwd, "outputs/multiruns/*/*")
        )
    if "outputs/runs/<date>/<time>" in command:
        command = command.replace("outputs/runs/<date>/<time>", _latest(cwd, "outputs/runs/*/*"))
    argv = shlex.split(command)
    trains = argv[:3] == ["python", "-m", "madcluster_exp"] and not any(
        a in ("--help", "--cfg") for a in argv
    )
    if fast and trains:
        argv.append("debug=fast")
    if argv[0] == "python":
        argv[0] = sys.executable
    return argv


def _ui_serves_the_runs(argv, cwd, env):
    """`make ui` as written, pointed at the folder's own store (OUTPUTS=): it prints the URL of
    the experiment's runs list, and the UI it serves holds the runs the commands made."""
    port = free_port()
    log_path = cwd / "ui.log"
    outputs = cwd / "outputs"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                *argv,
                f"PORT={port}",
                f"PYTHON={sys.executable}",
                f"OUTPUTS={outputs}",
                "-C",
                str(ROOT),
            ],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_ready(proc, f"http://127.0.0.1:{port}", log_path)
        said = re.search(r"MLflow UI: (\S+)", log_path.read_text())
        assert said, log_path.read_text()[-2000:]
        exp_id = re.fullmatch(
            rf"http://127\.0\.0\.1:{port}/#/experiments/(\w+)/runs", said.group(1)
        ).group(1)
        exp = _get(port, f"experiments/get?experiment_id={exp_id}")["experiment"]
        assert exp["name"] == "madcluster_exp"
        assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in exp["tags"]
        served = _post(port, "runs/search", {"experiment_ids": [exp_id], "max_results": 1000})
        client = MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
        assert len(served["runs"]) == len(client.search_runs([exp_id], max_results=1000)) > 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def _get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/{path}", timeout=30) as r:
        return json.loads(r.read())


def _post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/2.0/mlflow/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _checkout_state():
    """What ``git status`` (ignored files included) shows of the checkout, bytecode caches
    aside; None outside a git checkout."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return None
    caches = ("__pycache__/", ".pytest_cache/", ".egg-info/")
    return sorted(ln for ln in out.stdout.splitlines() if not any(c in ln for c in caches))


def guide_snippet() -> str:
    """The guide's Python block that loads a run's model through MLflow."""
    text = (ROOT / "docs" / "guide.md").read_text()
    section = text.split("## Using a trained model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _guide_snippet_runs(cwd: Path):
    """The guide's MLflow snippet, as written, in a Python process of its own started from the
    folder the quickstart ran in (as a user would: one process, one project folder; MLflow
    caches stores by URI within a process): ``run_id`` and ``df`` are the latest run's id and
    rows of data; what it loads scores them as the run's own model does, and it leaves no
    ./mlflow.db or ./mlruns behind."""
    import numpy as np
    import pandas as pd

    from madcluster_exp.predict import load_detector

    run_dir = cwd / _latest(cwd, "outputs/runs/*/*")
    run_id = json.loads((run_dir / "run_info.json").read_text())["run_id"]
    det = load_detector(run_dir)
    df = pd.DataFrame(np.random.default_rng(0).normal(size=(3 * det.window, det.n_channels)))
    before = set(cwd.iterdir())
    script = (
        "import numpy as np, pandas as pd\n"
        f"run_id = {run_id!r}\n"
        f"df = pd.DataFrame(np.array({df.to_numpy().tolist()!r}))\n"
        + guide_snippet()
        + "print(scores['score'].to_json(orient='values', double_precision=15))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = np.array(json.loads(out.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(got, det.score(df.to_numpy()), rtol=1e-9)
    assert set(cwd.iterdir()) == before


def _run_all(tmp_path: Path, fast: bool):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    commands = quickstart_commands()
    assert len(commands) >= 8
    checkout = _checkout_state()
    for command in commands:
        argv = _prepare(command, tmp_path, fast)
        if argv[:2] == ["make", "ui"]:
            _ui_serves_the_runs(argv, tmp_path, env)
            continue
        out = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600
        )
        assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"
    assert (tmp_path / "outputs" / "scores.csv").exists()
    _guide_snippet_runs(tmp_path)
    # Every command ran from its own folder: the checkout is as it was (no store, no
    # artifacts, no output of a command or of the UI in it).
    assert _checkout_state() == checkout


@pytest.mark.slow
def test_readme_quickstart_runs_as_written_with_debug_fast(tmp_path):
    """Every quickstart command, in order (make test-all; by default each is composed and
    validated by test_every_documented_command_..., and each tool has its own tests)."""
    _run_all(tmp_path, fast=True)


@pytest.mark.slow
def test_readme_quickstart_runs_verbatim(tmp_path):
    _run_all(tmp_path, fast=False)


def test_make_help_shows_the_values_in_force():
    out = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "help", "PORT=5123", "OUTPUTS=elsewhere"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout).splitlines()
    ui = next(line for line in lines if line.split()[0] == "ui")
    assert "elsewhere/mlflow.db" in ui and "127.0.0.1:5123" in ui
    assert "$(" not in out.stdout and "$$" not in out.stdout


DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def _commands(document: str):
    """Every shell line of a document's ```bash blocks, comments and env prefixes dropped."""
    text = (ROOT / document).read_text()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\s*\n\s*", " ", block).splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                yield line


def _first_of_sweep(value: str) -> str:
    """``off,on`` -> ``off`` (a sweep's first job); commas inside brackets stay."""
    depth = 0
    for i, ch in enumerate(value):
        depth += (ch in "[(") - (ch in "])")
        if ch == "," and depth == 0:
            return value[:i]
    return value


def _job_overrides(argv):
    overrides = []
    for arg in argv:
        if arg.startswith("-") or arg.startswith("hydra") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        overrides.append(f"{key}={_first_of_sweep(value)}".replace("<", "x").replace(">", "x"))
    return overrides


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_documented_command_names_options_modules_and_targets_that_exist(document):
    """A run command composes and validates (its sweep's first job), a tool is a module of the
    package, a make target is in the Makefile: the README and docs/ follow the code."""
    from madcluster_exp.config import validate
    from tests.conftest import compose_config

    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    for line in _commands(document):
        argv = [a for a in shlex.split(line) if not re.match(r"^[A-Z_]+=", a)]
        if argv[0] == "make":
            assert argv[1] in targets, f"{document}: {line}"
        elif argv[:3] == ["python", "-m", "madcluster_exp"]:
            if not {"--help", "--cfg"} & set(argv):
                validate(compose_config(_job_overrides(argv[3:])))
        elif argv[:2] == ["python", "-m"] and argv[2].startswith("madcluster_exp."):
            assert importlib.util.find_spec(argv[2]) is not None, f"{document}: {line}"
