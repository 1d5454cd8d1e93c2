"""How the MADCluster score meets the backbone score (``madcluster.combine``).

- ``sum``: sum of the two scores, each standardised with mean/std of its *validation* scores
  (honest: no test statistics), so neither dominates by scale alone;
- ``product``: the raw product, as the reference code multiplies them;
- ``madcluster_only`` / ``backbone_only``: one component.
With a single component (MADCluster off, or a backbone whose objective the plug-in replaces)
that component is the score.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

RULES = ("sum", "product", "madcluster_only", "backbone_only")


class ScoreCombiner:
    def __init__(self, rule: str):
        if rule not in RULES:
            raise ValueError(f"madcluster.combine={rule!r}: expected one of {', '.join(RULES)}")
        self.rule = rule
        self.stats: Dict[str, tuple] = {}

    def effective_rule(self, components: Dict[str, np.ndarray]) -> str:
        if len(components) == 1:
            return f"{next(iter(components))}_only"
        return self.rule

    def fit(self, val_components: Dict[str, np.ndarray]) -> "ScoreCombiner":
        """Remember validation mean and std of each component."""
        for name, s in val_components.items():
            std = float(np.std(s))
            self.stats[name] = (float(np.mean(s)), std if std > 1e-12 else 1.0)
        return self

    def combine(self, components: Dict[str, np.ndarray]) -> np.ndarray:
        rule = self.effective_rule(components)
        if rule.endswith("_only"):
            name = rule[: -len("_only")]
            if name not in components:
                raise ValueError(f"madcluster.combine={self.rule!r} but there is no {name!r} "
                                 f"score component (have {sorted(components)})")
            return components[name]
        if rule == "product":
            return components["backbone"] * components["madcluster"]
        if not self.stats:
            raise RuntimeError("ScoreCombiner.fit(validation components) must come first")
        return sum((s - self.stats[n][0]) / self.stats[n][1] for n, s in components.items())
