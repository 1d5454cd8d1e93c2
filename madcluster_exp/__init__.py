"""madcluster_exp: a Hydra + MLflow experiment framework for the MADCluster plug-in."""

import os

# OpenMP threads that finish their share of a parallel region spin briefly, then sleep.
# libgomp's default spins 300,000 times first: on shared cores (other jobs of a sweep, a test
# run beside a build) the spinning threads burn the share the working ones need, while never
# spinning (OMP_WAIT_POLICY=PASSIVE) makes the thousands of small parallel regions of a small
# model pay a wake-up each. 10,000 keeps the quiet speed and most of the loaded speed. libgomp
# reads this once, when torch loads it, so it is set here, before anything of this package
# imports torch; a wait policy or spin count in the environment wins. Measured in
# docs/benchmarks.md ("Thread policy under load").
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"
