"""python -m madcluster_exp.bench [metrics|data|train|classical ...] [-- options for one]

Runs the named benchmarks (all by default). For one benchmark, options after its name go to it:
``python -m madcluster_exp.bench train --steps 8``.
"""
import sys

from madcluster_exp.bench import classical, data, metrics, train

BENCHMARKS = {"metrics": metrics.main, "data": data.main, "train": train.main,
              "classical": classical.main}

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and argv[0] in BENCHMARKS and any(a.startswith("-") for a in argv[1:]):
        names, options = [argv[0]], argv[1:]
    else:
        names, options = argv or list(BENCHMARKS), []
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; available: {sorted(BENCHMARKS)}")
    for name in names:
        print(f"=== {name}", flush=True)
        BENCHMARKS[name](options)
