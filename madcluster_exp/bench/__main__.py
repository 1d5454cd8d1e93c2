"""python -m madcluster_exp.bench [metrics ...]: run the named benchmarks (all by default)."""
import sys

from madcluster_exp.bench import data, metrics, train

BENCHMARKS = {"metrics": metrics.main, "data": data.main, "train": train.main}

if __name__ == "__main__":
    names = [a for a in sys.argv[1:] if not a.startswith("-")] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; available: {sorted(BENCHMARKS)}")
    for name in names:
        print(f"=== {name}")
        BENCHMARKS[name]([])
