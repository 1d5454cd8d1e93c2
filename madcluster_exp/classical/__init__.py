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
from madcluster_exp.utils.registry import named_subclasses

FAMILY = "classical"

#: Every classical detector of this package, by the ``name`` its class declares.
DETECTORS: Dict[str, Type[ClassicalDetector]] = named_subclasses(__name__, ClassicalDetector)


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
    "score_split_classical",
    "spread_to_points",
]
