"""Throughput at scale: what tracking costs per epoch on the team server (PostgreSQL backend,
over HTTP) against the local SQLite store, and the wall time of a 16-job sweep on a local Ray
cluster against joblib with the same number of cores, both measured in this run.

PostgreSQL must run on 127.0.0.1:5432 (a fresh database is created and dropped); without it, or
without Ray, that row says why it was skipped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List

from madcluster_exp.bench.common import table, write

#: The per-epoch record of a training run (what training/loop.py logs each epoch).
EPOCH_KEYS = [
    "train/loss",
    "train/loss_backbone",
    "train/loss_mapping",
    "train/loss_cluster",
    "val/loss",
    "val/loss_backbone",
    "madcluster/threshold",
    "time/epoch_s",
]
SWEEP = [
    "dataset.n_entities=2",
    "dataset.train_length=800",
    "dataset.test_length=800",
    "dataset.n_channels=4",
    "backbone.window=32",
    "train.epochs=2",
    "train.patience=null",
    "train.progress=none",
    "tracking.plots=false",
]


def tracking_cost(uri: str, epochs: int, artifacts: Path) -> Dict[str, float]:
    """Seconds per epoch spent logging one epoch's metrics (one batched write) to ``uri``."""
    from madcluster_exp.tracking import MLflowTracker

    tracker = MLflowTracker(uri, "bench_tracking", artifact_root=artifacts)
    tracker.start(f"bench-{uuid.uuid4().hex[:6]}", {f"p{i}": i for i in range(150)}, {"b": "1"})
    start = tracker.seconds
    for epoch in range(1, epochs + 1):
        tracker.log_metrics({k: 1.0 / epoch for k in EPOCH_KEYS}, step=epoch)
    per_epoch = (tracker.seconds - start) / epochs
    tracker.end("FINISHED")
    return {"epoch_ms": 1000 * per_epoch}


def _postgres_ok() -> bool:
    try:
        import psycopg

        with psycopg.connect("postgresql://127.0.0.1:5432/postgres", connect_timeout=5):
            return True
    except Exception:  # noqa: BLE001 - any failure: not usable
        return False


def bench_tracking(epochs: int, tmp: Path) -> List[dict]:
    from madcluster_exp.launchers.local_cluster import free_port
    from madcluster_exp.tracking.server import drop_database, running_server

    sqlite = tracking_cost(f"sqlite:///{tmp / 'bench.db'}", epochs, tmp / "art")
    rows = [{"store": "SQLite file (default)", "epoch_ms": sqlite["epoch_ms"], "vs_sqlite": 1.0}]
    if not _postgres_ok():
        rows.append({"store": "PostgreSQL server", "note": "skipped: PostgreSQL not reachable"})
        return rows
    uri = f"postgresql://127.0.0.1:5432/madcluster_bench_{uuid.uuid4().hex[:8]}"
    try:
        with running_server(uri, free_port(), tmp / "server-art", tmp / "server.log") as url:
            server = tracking_cost(url, epochs, tmp / "art")
    finally:
        drop_database(uri)
    rows.append(
        {
            "store": "PostgreSQL via mlflow server (HTTP)",
            "epoch_ms": server["epoch_ms"],
            "vs_sqlite": server["epoch_ms"] / sqlite["epoch_ms"],
        }
    )
    return rows


def _sweep(launcher: List[str], jobs: int, cwd: Path, env: dict) -> float:
    cmd = [
        sys.executable,
        "-m",
        "madcluster_exp",
        "-m",
        *SWEEP,
        *launcher,
        f"seed=range(0,{jobs})",
        f"hydra.sweep.dir={cwd / 'sweep'}",
    ]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"sweep {' '.join(launcher)} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0


def bench_sweeps(jobs: int, cores: int, tmp: Path) -> List[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    joblib_s = _sweep(
        ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={cores}"],
        jobs,
        _fresh(tmp / "joblib"),
        env,
    )
    rows = [
        {"launcher": f"joblib, n_jobs={cores}", "jobs": jobs, "wall_s": joblib_s, "vs_joblib": 1.0}
    ]
    try:
        import ray  # noqa: F401
    except ImportError:
        rows.append({"launcher": "ray", "note": "skipped: install the extra (.[ray])"})
        return rows
    from madcluster_exp.launchers.local_cluster import local_cluster

    t0 = time.perf_counter()
    with local_cluster(tmp / "ray", cpus_per_node=1, workers=cores - 1) as address:
        start_s = time.perf_counter() - t0
        ray_s = _sweep(
            ["hydra/launcher=ray"], jobs, _fresh(tmp / "ray-sweep"), {**env, "RAY_ADDRESS": address}
        )
    rows.append(
        {
            "launcher": f"ray, {cores} nodes x 1 CPU (local)",
            "jobs": jobs,
            "wall_s": ray_s,
            "vs_joblib": ray_s / joblib_s,
            "note": f"cluster start {start_s:.0f} s, not counted",
        }
    )
    return rows


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=100, help="epochs logged per store")
    ap.add_argument("--jobs", type=int, default=16, help="jobs in each sweep")
    ap.add_argument(
        "--cores", type=int, default=os.cpu_count() or 2, help="joblib n_jobs = Ray nodes x 1 CPU"
    )
    ap.add_argument("--skip-sweeps", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tracking = bench_tracking(args.epochs, Path(tmp))
        print(
            f"Tracking cost per epoch ({len(EPOCH_KEYS)} metrics, one batched write, "
            f"{args.epochs} epochs):"
        )
        print(table(tracking, ["store", "epoch_ms", "vs_sqlite", "note"]))
        sweeps = [] if args.skip_sweeps else bench_sweeps(args.jobs, args.cores, Path(tmp))
        if sweeps:
            print(f"\n{args.jobs}-job sweep (debug-sized jobs, 2 epochs), wall time:")
            print(table(sweeps, ["launcher", "jobs", "wall_s", "vs_joblib", "note"]))
    print(f"written to {write('scale', tracking + sweeps, args.out)}")


if __name__ == "__main__":
    main()
