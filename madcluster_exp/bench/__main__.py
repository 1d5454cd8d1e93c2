"""python -m madcluster_exp.bench [metrics|data|train|classical|scale|load|epoch ...] [<one> --opts]

Runs the named benchmarks (all by default). For one benchmark, options after its name go to it:
``python -m madcluster_exp.bench train --steps 8``; ``python -m madcluster_exp.bench train --help``
lists them.
"""

import argparse
import sys

from madcluster_exp.bench import classical, data, epoch, load, metrics, scale, train

BENCHMARKS = {
    "metrics": metrics.main,
    "data": data.main,
    "train": train.main,
    "classical": classical.main,
    "scale": scale.main,
    "load": load.main,
    "epoch": epoch.main,
}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in BENCHMARKS and any(a.startswith("-") for a in argv[1:]):
        names, options = [argv[0]], argv[1:]
    else:
        ap = argparse.ArgumentParser(
            prog="python -m madcluster_exp.bench", description=__doc__.split("\n\n")[1]
        )
        ap.add_argument(
            "names",
            nargs="*",
            choices=[[], *BENCHMARKS],
            metavar="benchmark",
            help=f"one or more of {', '.join(BENCHMARKS)} (default: all)",
        )
        names, options = ap.parse_args(argv).names or list(BENCHMARKS), []
    for name in names:
        print(f"=== {name}", flush=True)
        BENCHMARKS[name](options)


if __name__ == "__main__":
    main()
