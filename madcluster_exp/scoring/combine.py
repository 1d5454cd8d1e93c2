"""How the MADCluster score meets the backbone score (``scoring.combine``).

- ``sum``: sum of the two scores, each standardised with mean/std of its *validation* scores
  (honest: no test statistics), so neither dominates by scale alone;
- ``product``: the raw product, as the reference code multiplies them;
- ``madcluster_only`` / ``backbone_only``: one component.
With a single component (MADCluster off, or a backbone whose objective the plug-in replaces)
that component is the score. Unset (None), the rule follows the protocol
(:func:`madcluster_exp.config.combine_rule`).

``product`` refuses a component with negative validation scores (a negative log-likelihood such
as OmniAnomaly's): multiplying by a signed score reverses the ranking wherever it is negative.
``sum`` refuses a component whose validation spread is rounding noise relative to its mean:
standardising it would divide noise by noise and add it to the score at full weight. That is
what DCdetector's window-mean score is under ``protocol=reference`` (a softmax over the window's
steps averaged over those steps: exactly 1/T plus float32 rounding), and what a plug-in score
is when every validation embedding lands at the same distance (a collapsed score, e.g. on a
constant series). Both refusals are :class:`CombineError` (an expected error: the run ends with
the message alone, marked FAILED); the second is :class:`ScoreCollapse`, which a collection
counts as ``failure.kind=collapse``.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from madcluster_exp.config import Combine
from madcluster_exp.errors import ExpectedError

RULES = tuple(Combine)

# A spread below this fraction of |mean| is rounding, not signal: ~8 float32 rounding units
# (eps = 1.19e-7); real scores spread by far more, DCdetector's window means by ~3e-8.
NOISE_RTOL = 1e-6


class CombineError(ExpectedError, ValueError):
    """A score component the rule cannot use; the message names it and what to use instead."""


class ScoreCollapse(CombineError):
    """``sum`` refused a component whose validation scores are constant (up to rounding)."""


class ScoreCombiner:
    def __init__(self, rule: str):
        if rule not in RULES:
            raise ValueError(f"scoring.combine={rule!r}: expected one of {', '.join(RULES)}")
        self.rule = rule
        self.stats: Dict[str, tuple] = {}

    def effective_rule(self, components: Dict[str, np.ndarray]) -> str:
        if len(components) == 1:
            return f"{next(iter(components))}_only"
        return self.rule

    def fit(self, val_components: Dict[str, np.ndarray]) -> "ScoreCombiner":
        """Remember validation mean and std of each component; with ``sum``, refuse a
        component whose spread is rounding noise, with ``product`` a signed one (the message
        names it and the fix)."""
        rule = self.effective_rule(val_components)
        standardises = rule == "sum"
        for name, s in val_components.items():
            if rule == "product" and float(np.min(s)) < 0:
                raise CombineError(
                    f"scoring.combine=product cannot use the {name!r} score component: it "
                    f"takes negative values (validation minimum {float(np.min(s)):.4g}), and a "
                    "product with a signed score is not monotone in it. Use "
                    "scoring.combine=sum (standardised sum) or one component alone."
                )
            mean, std = float(np.mean(s)), float(np.std(s))
            if standardises and std <= NOISE_RTOL * abs(mean):
                raise ScoreCollapse(
                    f"scoring.combine=sum cannot standardise the {name!r} score component: "
                    f"its validation scores are constant up to rounding (mean {mean:.9g}, std "
                    f"{std:.3g}, {std / abs(mean) if mean else 0.0:.2g} of the mean, limit "
                    f"{NOISE_RTOL:g}), so standardising would turn rounding noise into half of "
                    "the score. (DCdetector's window-mean score is exactly 1/T under "
                    "protocol=reference.) Use scoring.combine=product (the reference code's "
                    "rule and protocol=reference's default) or scoring.combine="
                    f"{'madcluster_only' if name == 'backbone' else 'backbone_only'}."
                )
            self.stats[name] = (mean, std)
        return self

    def state(self) -> dict:
        """Rule and fitted statistics as JSON-ready values (saved with a trained model)."""
        return {"rule": self.rule, "stats": {k: [m, s] for k, (m, s) in self.stats.items()}}

    @classmethod
    def from_state(cls, state: dict) -> "ScoreCombiner":
        combiner = cls(state["rule"])
        combiner.stats = {k: (float(m), float(s)) for k, (m, s) in state["stats"].items()}
        return combiner

    def combine(self, components: Dict[str, np.ndarray]) -> np.ndarray:
        rule = self.effective_rule(components)
        if rule.endswith("_only"):
            name = rule[: -len("_only")]
            if name not in components:
                raise ValueError(
                    f"scoring.combine={self.rule!r} but there is no {name!r} "
                    f"score component (have {sorted(components)})"
                )
            return components[name]
        if rule == "product":
            return components["backbone"] * components["madcluster"]
        if not self.stats:
            raise RuntimeError("ScoreCombiner.fit(validation components) must come first")
        return sum((s - self.stats[n][0]) / self.stats[n][1] for n, s in components.items())
