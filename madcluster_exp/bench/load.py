"""The default run on a quiet machine and beside busy processes, per OpenMP thread policy.

A run that shares its cores (other jobs of a sweep, a test run beside a build) should slow
roughly in proportion to the CPU share it gets. OpenMP threads that spin at barriers burn the
share the working ones need; threads that never spin (``OMP_WAIT_POLICY=PASSIVE``) make every
small parallel region pay a wake-up. This benchmark runs ``python -m madcluster_exp`` (the
default configuration, tracking off) with libgomp's default spin, the package's shorter one
(set in ``madcluster_exp/__init__.py``), the passive policy and one torch thread (the remedy a
user can pick), first alone, then beside ``--busy`` processes that spin a core each. It prints
each time with its ratio to the quiet time of the same variant and, loaded, to libgomp's default.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

from madcluster_exp.bench.common import table, write

#: label -> (environment, extra overrides). The package sets GOMP_SPINCOUNT only where
#: neither it nor OMP_WAIT_POLICY is in the environment, so each variant names its own.
VARIANTS = {
    "libgomp default (spin 300k)": ({"GOMP_SPINCOUNT": "300000"}, ()),
    "package default (spin 10k)": ({}, ()),
    "PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, ()),
    "1 thread": ({}, ("train.num_threads=1",)),
}
BASELINE = "libgomp default (spin 300k)"
RUN_ARGS = ("tracking.backend=none", "train.progress=none", "tracking.log_model=false")


@contextmanager
def busy_processes(n: int) -> Iterator[List[subprocess.Popen]]:
    """``n`` processes that each keep one core busy until the block ends."""
    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdout=subprocess.DEVNULL)
        for _ in range(n)
    ]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def timed_run(variables: Dict[str, str], args: Sequence[str], out_dir: Path) -> float:
    """Wall seconds of one ``python -m madcluster_exp`` with these OpenMP variables."""
    drop = ("MLFLOW_TRACKING_URI", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(variables)
    cmd = [sys.executable, "-m", "madcluster_exp", *args, f"hydra.run.dir={out_dir}"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0


def bench_load(busy: int, repeat: int, args: Sequence[str], tmp: Path) -> List[Dict[str, object]]:
    """Best of ``repeat`` runs per (policy, load); ratios against the same run's baselines."""

    def best(label: str, load: str) -> float:
        variables, extra = VARIANTS[label]
        index = list(VARIANTS).index(label)
        dirs = (tmp / f"{index}-{load}-{i}" for i in range(repeat))
        return min(timed_run(variables, [*args, *extra], d) for d in dirs)

    quiet = {v: best(v, "quiet") for v in VARIANTS}
    with busy_processes(busy):
        loaded = {v: best(v, "loaded") for v in VARIANTS}
    rows = []
    for p in VARIANTS:
        rows.append({"policy": p, "load": "quiet", "wall_s": quiet[p], "vs_quiet": 1.0})
        rows.append(
            {
                "policy": p,
                "load": f"{busy} busy processes",
                "wall_s": loaded[p],
                "vs_quiet": loaded[p] / quiet[p],
                "vs_libgomp": loaded[p] / loaded[BASELINE],
            }
        )
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--busy", type=int, default=os.cpu_count() or 2, help="competing busy processes"
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell (best is kept)")
    ap.add_argument(
        "run_args", nargs="*", default=list(RUN_ARGS), help="overrides for the timed run"
    )
    ap.add_argument("--out", type=Path, default=Path("outputs/bench"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_load(args.busy, args.repeat, args.run_args, Path(tmp))
    cores = os.cpu_count()
    print(f"python -m madcluster_exp {' '.join(args.run_args)} on {cores} cores, wall time:")
    print(table(rows, ["policy", "load", "wall_s", "vs_quiet", "vs_libgomp"]))
    print(f"written to {write('load', rows, args.out)}")


if __name__ == "__main__":
    main()
