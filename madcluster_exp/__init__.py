"""madcluster_exp: a Hydra + MLflow experiment framework for the MADCluster plug-in."""

__version__ = "0.1.0"
