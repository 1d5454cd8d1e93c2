"""Classical detectors (``backbone=knn|iforest|pca|matrix_profile|random|constant``, family
``classical``): fitted once on training windows instead of trained by the loop; scored, thresholded
and evaluated as every backbone is."""

from typing import Dict, Type

from madcluster_exp.classical.base import (
    COMPONENT,
    SPREADS,
    ClassicalDetector,
    score_split_classical,
    spread_to_points,
)
from madcluster_exp.classical.detectors import (
    KNN,
    ConstantScores,
    IForest,
    MatrixProfile,
    PCAReconstruction,
    RandomScores,
)

FAMILY = "classical"

DETECTORS: Dict[str, Type[ClassicalDetector]] = {
    "knn": KNN,
    "iforest": IForest,
    "pca": PCAReconstruction,
    "matrix_profile": MatrixProfile,
    "random": RandomScores,
    "constant": ConstantScores,
}


def is_classical(backbone_cfg) -> bool:
    return backbone_cfg.get("family") == FAMILY


def build_classical(cfg, seed: int) -> ClassicalDetector:
    try:
        cls = DETECTORS[cfg.name]
    except KeyError:
        raise ValueError(
            f"backbone.name={cfg.name!r} with family classical: unknown; known: {sorted(DETECTORS)}"
        ) from None
    return cls(cfg, seed)


__all__ = [
    "COMPONENT",
    "DETECTORS",
    "FAMILY",
    "SPREADS",
    "ClassicalDetector",
    "build_classical",
    "is_classical",
    "score_split_classical",
    "spread_to_points",
]
