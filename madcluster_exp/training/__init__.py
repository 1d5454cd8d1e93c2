"""Training: the loop, early stopping and progress display."""

from madcluster_exp.training.loop import FitResult, TrainingDivergedError, fit, validation_loss

__all__ = ["FitResult", "TrainingDivergedError", "fit", "validation_loss"]
