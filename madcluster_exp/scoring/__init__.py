"""Scoring: point scores from window scores, score combination, thresholds. No model code."""

from madcluster_exp.scoring.combine import CombineError, ScoreCollapse, ScoreCombiner
from madcluster_exp.scoring.score import score_split
from madcluster_exp.scoring.thresholds import PercentileThreshold, Threshold, build_threshold

__all__ = [
    "CombineError",
    "PercentileThreshold",
    "ScoreCollapse",
    "ScoreCombiner",
    "Threshold",
    "build_threshold",
    "score_split",
]
