"""Train/validation split and scaling, fitted on training data only.

Validation is the tail of each entity's training series, separated from the part used for
fitting by a gap of one window, so no training window overlaps a validation window. The scaler
sees only the fitting part; validation and (later) test are transformed with its statistics.

``validation="test"`` (the MADCluster reference pipeline, ``dataset.validation=test``): the
model fits 100 % of each training series, the scaler is fitted on all of it, and there is no
validation split here: the reference validates on the test split, which stays sealed; the
pipeline unseals it and makes it the validation split itself, only when its plan says so
(:func:`madcluster_exp.pipeline.unit.fit_unit`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from madcluster_exp.data.series import (
    DataError,
    LinkedSealedTest,
    RawDataset,
    SealedTest,
    SeriesSplit,
    check_finite,
)


@dataclass
class Scaler:
    """Per-channel affine scaling ``(x - shift) / scale`` fitted on training values."""

    kind: str
    shift: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, kind: str) -> "Scaler":
        n_ch = values.shape[1]
        if kind == "none":
            return cls(kind, np.zeros(n_ch, np.float32), np.ones(n_ch, np.float32))
        if kind == "standard":
            shift, scale = (
                values.mean(axis=0, dtype=np.float64),
                values.std(axis=0, dtype=np.float64),
            )
        elif kind == "minmax":
            shift = values.min(axis=0).astype(np.float64)
            scale = values.max(axis=0).astype(np.float64) - shift
        else:
            raise ValueError(f"dataset.normalize={kind!r}: expected standard, minmax or none")
        # Constant channels carry no information; leave them centred rather than dividing by 0.
        scale = np.where(scale > 1e-12, scale, 1.0)
        return cls(kind, shift.astype(np.float32), scale.astype(np.float32))

    def transform(self, split: SeriesSplit) -> SeriesSplit:
        values = (split.values - self.shift) / self.scale
        return SeriesSplit(
            values.astype(np.float32, copy=False), split.segments, split.labels, split.source
        )


@dataclass
class PreparedData:
    name: str
    train: SeriesSplit  # the part the model is fitted on (scaled)
    # tail of train after a one-window gap (scaled); None with validation="test" until the
    # pipeline sets the unsealed test split here
    val: Optional[SeriesSplit]
    test: SealedTest  # scaled on first read, after unsealing
    scaler: Scaler
    window: int

    @property
    def n_channels(self) -> int:
        return self.train.n_channels

    @property
    def entities(self) -> List[str]:
        return [s.name for s in self.train.segments]


def split_train_val(train: SeriesSplit, window: int, val_fraction: float):
    """Cut every entity into fit part, a one-window gap, and a validation tail."""
    fit_parts, val_parts = [], []
    for seg in train.segments:
        values = train.values[seg.start : seg.end]
        n = len(values)
        n_val = max(window, int(round(val_fraction * n)))
        n_fit = n - n_val - window
        if n_fit < window:
            raise DataError(
                f"{train.source}[{seg.name}]: training series of {n} rows is too short for "
                f"window={window} with val_fraction={val_fraction}: it needs at least "
                f"{3 * window} rows (fit >= window, gap = window, validation >= window)"
            )
        fit_parts.append((seg.name, values[:n_fit], None))
        val_parts.append((seg.name, values[n - n_val :], None))
    return (
        SeriesSplit.concat(fit_parts, f"{train.source}(fit)"),
        SeriesSplit.concat(val_parts, f"{train.source}(val)"),
    )


def prepare(
    raw: RawDataset,
    window: int,
    val_fraction: float,
    normalize: str,
    validation: str = "train_tail",
) -> PreparedData:
    """Split, check and scale a raw dataset; the test split stays sealed and unread.

    ``validation``: ``train_tail`` (validation = the tail of each training series) or ``test``
    (fit on all of each training series; ``val`` is None, the test split stays sealed)."""
    check_finite(raw.train.values, raw.train.source)
    if validation == "train_tail":
        fit, val = split_train_val(raw.train, window, val_fraction)
    elif validation == "test":
        fit, val = raw.train, None
        for seg in fit.segments:
            if seg.length < window:
                raise DataError(
                    f"{fit.source}[{seg.name}]: training series of {seg.length} rows is "
                    f"shorter than one window ({window})"
                )
    else:
        raise ValueError(f"dataset.validation={validation!r}: expected train_tail or test")
    scaler = Scaler.fit(fit.values, normalize)
    sealed = raw.test

    def load_scaled_test() -> SeriesSplit:
        test = sealed.get()
        check_finite(test.values, test.source)
        if test.n_channels != fit.n_channels:
            raise DataError(
                f"{test.source}: {test.n_channels} features in test but "
                f"{fit.n_channels} in train; expected the same feature count"
            )
        for seg in test.segments:
            if seg.length < window:
                raise DataError(
                    f"{test.source}[{seg.name}]: test series of {seg.length} rows "
                    f"is shorter than one window ({window})"
                )
        return scaler.transform(test)

    scaled_test = LinkedSealedTest(load_scaled_test, sealed)
    return PreparedData(
        raw.name,
        scaler.transform(fit),
        None if val is None else scaler.transform(val),
        scaled_test,
        scaler,
        window,
    )
