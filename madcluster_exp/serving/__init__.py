"""Trained detectors outside training: saved bundles, the MLflow pyfunc model."""
