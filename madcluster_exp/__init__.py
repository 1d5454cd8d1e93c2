"""madcluster_exp: a Hydra + MLflow experiment framework for the MADCluster plug-in."""

import os

# OpenMP threads that finish their share of a parallel region sleep instead of spinning at the
# barrier. Spinning wins a little on an idle machine and loses badly when the cores are shared
# (other jobs of a sweep, a test run beside a build): the spinning threads burn the CPU share
# the working ones need. libgomp reads this once, when torch loads it, so it is set here,
# before anything of this package imports torch; an explicit setting in the environment wins.
# Measured in docs/benchmarks.md ("Thread policy under load").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
