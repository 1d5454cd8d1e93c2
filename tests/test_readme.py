"""The README's quickstart block runs as written: every command, in order, in a fresh folder.

The default suite runs each training command with ``debug=fast`` appended (seconds instead of
minutes; everything else as written); ``make test-all`` runs them verbatim. Placeholders
(``<date>/<time>``) are filled with the folder the preceding command created, as a reader would.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

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


def _ui_answers(argv, cwd, env):
    port = free_port()
    proc = subprocess.Popen(
        [*argv, f"PORT={port}", f"PYTHON={sys.executable}", "-C", str(ROOT)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, "make ui exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    return r.status == 200
            except OSError:
                time.sleep(0.5)
        return False
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def _run_all(tmp_path: Path, fast: bool):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    commands = quickstart_commands()
    assert len(commands) >= 8
    for command in commands:
        argv = _prepare(command, tmp_path, fast)
        if argv[:2] == ["make", "ui"]:
            assert _ui_answers(argv, tmp_path, env), command
            continue
        out = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600
        )
        assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"
    assert (tmp_path / "scores.csv").exists()


@pytest.mark.slow
def test_readme_quickstart_runs_as_written_with_debug_fast(tmp_path):
    """Every quickstart command, in order (make test-all; by default each is composed and
    validated by test_every_documented_command_..., and each tool has its own tests)."""
    _run_all(tmp_path, fast=True)


@pytest.mark.slow
def test_readme_quickstart_runs_verbatim(tmp_path):
    _run_all(tmp_path, fast=False)


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
