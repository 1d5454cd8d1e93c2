"""Synthetic anomalies planted in a copy of the validation split: a detection objective for
hyper-parameter search that needs no test labels (``search.objective=val_injected_vus_pr``).

A validation loss can be driven down by settings that only reshape the loss (label smoothing,
the plug-in's nu): it says nothing about detection. Scoring a copy of the (scaled, anomaly-free)
validation series with known planted anomalies does: VUS-PR of the score against the planted
labels is a ranking metric of the score itself, blind to the loss's scale. The test split is
never read. The kinds follow the taxonomy of Lai et al., "Revisiting Time Series Outlier
Detection: Definitions and Benchmarks" (NeurIPS 2021 Datasets and Benchmarks: point-global,
contextual, collective), and the synthetic benchmark of this project (data/synthetic.py):

- ``spike``: one point of one channel moved by +-(4..7) standard deviations (point, global);
- ``level_shift``: a segment where 1-3 channels are offset by +-(2..4) standard deviations;
- ``contextual``: a segment where 1-3 channels replay their own series at half or double speed:
  every value is a normal value of that channel, only the context (the rhythm) is wrong;
- ``collective``: a segment where half the channels (at least 2) lose their pattern together:
  flat at the segment's mean plus a little noise (0.1 standard deviations).

Standard deviations are those of each channel of the clean entity's validation values. Events
are planted per entity (none straddles two), in turn of ``kinds`` (the turn going on from one
entity to the next), at random free positions
with ``MARGIN`` normal rows around each, until ``ratio`` of the entity's points are labelled
(exceeded by at most one event). Segments last ``SEGMENT`` rows, capped at a quarter of the
entity. The same seed gives the same anomalies: every trial of a search is scored on one series.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from madcluster_exp.config.schema import INJECTED_KINDS
from madcluster_exp.data.series import DataError, SeriesSplit

#: Normal rows kept on both sides of every event (and at the entity's ends).
MARGIN = 10
#: Length range of the segment kinds (rows).
SEGMENT = (10, 30)
#: Placement tries per entity before it stops short of the ratio (a full entity).
MAX_TRIES = 1000


@dataclass(frozen=True)
class InjectedAnomaly:
    kind: str
    entity: str
    start: int  # row in the split
    end: int  # exclusive
    channels: Tuple[int, ...]


@dataclass
class Injected:
    split: SeriesSplit  # a copy of the input with anomalies, labels 1 inside them
    anomalies: List[InjectedAnomaly]


def inject(split: SeriesSplit, ratio: float, kinds: Sequence[str], seed: int) -> Injected:
    """A copy of ``split`` with anomalies of ``kinds`` covering ``ratio`` of each entity's
    points, and their labels; ``split`` itself is left unchanged."""
    bad = [k for k in kinds if k not in INJECTED_KINDS]
    if bad or not kinds:
        raise ValueError(
            f"search.inject.kinds={list(kinds)}: expected a non-empty list of "
            f"{', '.join(INJECTED_KINDS)}"
        )
    if not 0.0 < ratio < 0.5:
        raise ValueError(f"search.inject.ratio={ratio}: expected a value in (0, 0.5)")
    values = split.values.copy()
    labels = np.zeros(len(split), np.int8)
    events: List[InjectedAnomaly] = []
    rngs = np.random.SeedSequence(seed).spawn(len(split.segments))
    for seg, ss in zip(split.segments, rngs):
        part = slice(seg.start, seg.end)
        # The turn of kinds goes on across entities, so short ones still get every kind.
        turn = list(kinds[len(events) % len(kinds) :]) + list(kinds[: len(events) % len(kinds)])
        planted = _plant_entity(values[part], labels[part], ratio, turn, np.random.default_rng(ss))
        events += [
            InjectedAnomaly(kind, seg.name, seg.start + s, seg.start + e, ch)
            for kind, s, e, ch in planted
        ]
    if not labels.any():
        lengths = ", ".join(f"{s.name}: {s.length}" for s in split.segments)
        raise DataError(
            f"{split.source}: no anomaly could be injected into the validation "
            f"split (rows per entity: {lengths}); expected entities of at least "
            f"{2 * MARGIN + 1} rows: raise dataset.val_fraction or the series length"
        )
    return Injected(
        SeriesSplit(values, list(split.segments), labels, f"{split.source}+injected(seed={seed})"),
        events,
    )


def _plant_entity(
    x: np.ndarray, labels: np.ndarray, ratio: float, kinds: Sequence[str], rng: np.random.Generator
) -> List[tuple]:
    """Plant events into one entity's rows ``x`` (changed in place, as ``labels``)."""
    clean = x.copy()
    n, n_ch = x.shape
    std = clean.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)  # a constant channel: unit steps (data is scaled)
    longest = min(SEGMENT[1], n // 4)
    target = int(round(ratio * n))
    events: List[tuple] = []
    for _ in range(MAX_TRIES):
        if labels.sum() >= target:
            break
        kind = kinds[len(events) % len(kinds)]
        if kind == "spike":
            length = 1
        elif longest >= 2:
            length = int(rng.integers(min(SEGMENT[0], longest), longest + 1))
        else:
            break  # the entity is too short for a segment
        factor = float(rng.choice([0.5, 2.0])) if kind == "contextual" else 1.0
        reach = int(np.ceil(factor * length))  # rows a contextual event reads from
        last = n - MARGIN - max(length, reach)
        if last <= MARGIN:
            break  # the entity is too short for this kind
        start = int(rng.integers(MARGIN, last + 1))
        end = start + length
        if labels[start - MARGIN : end + MARGIN].any():
            continue
        channels = _apply(kind, x, clean, std, start, end, factor, rng)
        labels[start:end] = 1
        events.append((kind, start, end, channels))
    return events


def _apply(
    kind: str,
    x: np.ndarray,
    clean: np.ndarray,
    std: np.ndarray,
    start: int,
    end: int,
    factor: float,
    rng: np.random.Generator,
) -> Tuple[int, ...]:
    n_ch = x.shape[1]
    if kind == "spike":
        ch = int(rng.integers(n_ch))
        x[start, ch] += rng.choice([-1.0, 1.0]) * rng.uniform(4.0, 7.0) * std[ch]
        return (ch,)
    n_sel = max(2, n_ch // 2) if kind == "collective" else int(rng.integers(1, 4))
    idx = np.sort(rng.choice(n_ch, size=min(n_sel, n_ch), replace=False))
    if kind == "level_shift":
        x[start:end, idx] += rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 4.0) * std[idx]
    elif kind == "contextual":
        # The channel's own clean values from `start` on, read at `factor` times the speed.
        at = start + factor * np.arange(end - start)
        rows = np.arange(len(clean))
        for c in idx:
            x[start:end, c] = np.interp(at, rows, clean[:, c])
    else:  # collective
        level = clean[start:end, idx].mean(axis=0)
        x[start:end, idx] = level + rng.normal(0.0, 0.1, (end - start, len(idx))) * std[idx]
    return tuple(int(c) for c in idx)
