"""The MADCluster plug-in (method.md section 1). Knows nothing of backbones."""

from madcluster_exp.madcluster.plugin import MADCluster, MultiMADCluster, build_plugin

__all__ = ["MADCluster", "MultiMADCluster", "build_plugin"]
