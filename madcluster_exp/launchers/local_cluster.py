"""A Ray cluster of separate processes on this machine (a head and worker nodes on 127.0.0.1),
for tests and benchmarks of ``hydra/launcher=ray``; a real cluster is started the same way with
``ray start`` on each machine (README, "Scaling out")."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextmanager
def local_cluster(temp_dir: Path, cpus_per_node: int = 1, workers: int = 1) -> Iterator[str]:
    """Start a head and ``workers`` worker nodes; yield the address for ``RAY_ADDRESS``; stop
    every node on exit. ``ray stop`` ends all Ray processes of this machine."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    common = [f"--num-cpus={cpus_per_node}", "--node-ip-address=127.0.0.1"]
    try:
        head = _ray(
            "start",
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            *common,
            env=env,
        )
        if head.returncode != 0:
            raise RuntimeError(
                f"ray start --head failed:\n{head.stdout[-2000:]}{head.stderr[-2000:]}"
            )
        for _ in range(workers):
            node = _ray("start", f"--address={address}", *common, env=env)
            if node.returncode != 0:
                raise RuntimeError(f"ray start (worker) failed:\n{node.stderr[-2000:]}")
        yield address
    finally:
        _ray("stop", "--force", env=env)
