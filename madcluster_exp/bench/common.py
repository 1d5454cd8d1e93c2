"""Shared benchmark plumbing: timing, environment facts, JSON output, table printing."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence


def environment() -> Dict[str, object]:
    import torch  # here, so that a child that only reports its peak RSS stays small

    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def peak_rss_mb() -> float:
    """This process's own peak resident set (MB).

    Linux's VmHWM, not ``getrusage().ru_maxrss``: the latter is carried over from the parent
    through fork and exec, so a child started by a large benchmark process reports at least
    the parent's size (a 14 MB child of an 800 MB parent reported 790 MB here). ru_maxrss is
    the fallback where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource
    import sys

    scale = 2**20 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


# Runs ``python -m madcluster_exp`` with the arguments after it and prints its own peak RSS
# to stderr on the way out (the parent cannot read a child's VmHWM once it has exited).
PEAK_RSS_WRAPPER = """
import runpy, sys
from madcluster_exp.bench.common import peak_rss_mb
sys.argv = ["madcluster_exp", *sys.argv[1:]]
try:
    runpy.run_module("madcluster_exp", run_name="__main__", alter_sys=True)
finally:
    print(f"PEAK_RSS_MB {peak_rss_mb():.1f}", file=sys.stderr, flush=True)
"""


def child_peak_rss_mb(stderr: str) -> float:
    """The figure PEAK_RSS_WRAPPER printed, from the child's stderr."""
    for line in reversed(stderr.splitlines()):
        if line.startswith("PEAK_RSS_MB "):
            return float(line.split()[1])
    raise ValueError(
        "the child printed no PEAK_RSS_MB line (did it start through PEAK_RSS_WRAPPER?)"
    )


def best_time(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def write(name: str, rows: List[Dict[str, object]], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(
        json.dumps({"benchmark": name, "environment": environment(), "rows": rows}, indent=2)
    )
    return path


def table(rows: List[Dict[str, object]], columns: Sequence[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join(
        [line, sep] + ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    )


def typed_config(overrides):
    """The typed config of ``overrides`` (composed and checked as a run's)."""
    from madcluster_exp.config import compose, load

    return load(compose(overrides), warn=False).cfg
