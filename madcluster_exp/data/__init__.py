"""Data: loaders, splits, scaling and zero-copy windows. Never imports model code."""

from madcluster_exp.data.prepare import PreparedData, Scaler, prepare
from madcluster_exp.data.registry import LOADERS, load_dataset
from madcluster_exp.data.series import (
    DataError,
    RawDataset,
    SealedTest,
    SeriesSplit,
    TestAccessError,
)
from madcluster_exp.data.windows import PointScoreAccumulator, WindowSet

__all__ = [
    "DataError",
    "LOADERS",
    "PointScoreAccumulator",
    "PreparedData",
    "RawDataset",
    "Scaler",
    "SealedTest",
    "SeriesSplit",
    "TestAccessError",
    "WindowSet",
    "load_dataset",
    "prepare",
]
