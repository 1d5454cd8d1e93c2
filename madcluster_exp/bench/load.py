"""The default run on a quiet machine and beside busy processes, per OpenMP wait policy.

A run that shares its cores (other jobs of a sweep, a test run beside a build) should slow
roughly in proportion to the CPU share it gets. With OpenMP threads spinning at barriers
(``OMP_WAIT_POLICY=ACTIVE``, libgomp's behaviour for a while after each parallel region) the
spinning threads burn the share the working ones need; ``PASSIVE`` (the package's default, set
in ``madcluster_exp/__init__.py``) lets them sleep. This benchmark runs ``python -m
madcluster_exp`` (the default configuration, tracking off) under each policy, and with one
torch thread (the remedy a user can pick), first alone, then beside ``--busy`` processes that
spin a core each. It prints each time with its ratio to the quiet time of the same variant
and, loaded, to the ACTIVE time.
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

#: label -> (OMP_WAIT_POLICY, extra overrides); one torch thread is the user's own remedy.
VARIANTS = {
    "ACTIVE": ("ACTIVE", ()),
    "PASSIVE": ("PASSIVE", ()),
    "PASSIVE, 1 thread": ("PASSIVE", ("train.num_threads=1",)),
}
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


def timed_run(policy: str, args: Sequence[str], out_dir: Path) -> float:
    """Wall seconds of one ``python -m madcluster_exp`` with the given OpenMP wait policy."""
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "madcluster_exp", *args, f"hydra.run.dir={out_dir}"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0


def bench_load(busy: int, repeat: int, args: Sequence[str], tmp: Path) -> List[Dict[str, object]]:
    """Best of ``repeat`` runs per (policy, load); ratios against the same run's baselines."""

    def best(label: str, load: str) -> float:
        policy, extra = VARIANTS[label]
        dirs = (tmp / f"{policy}-{len(extra)}-{load}-{i}" for i in range(repeat))
        return min(timed_run(policy, [*args, *extra], d) for d in dirs)

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
                "vs_active": loaded[p] / loaded["ACTIVE"],
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
    print(table(rows, ["policy", "load", "wall_s", "vs_quiet", "vs_active"]))
    print(f"written to {write('load', rows, args.out)}")


if __name__ == "__main__":
    main()
