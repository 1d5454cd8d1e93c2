"""Training: the loop, early stopping and progress display."""

from madcluster_exp.training.loop import (
    FitResult,
    TrainingDivergedError,
    TrainSettings,
    fit,
    validation_loss,
)

__all__ = ["FitResult", "TrainSettings", "TrainingDivergedError", "fit", "validation_loss"]
