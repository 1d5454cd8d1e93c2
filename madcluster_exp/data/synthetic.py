"""Embedded synthetic benchmark: multivariate seasonal + trend + noise with planted anomalies.

Deterministic for a given ``seed``. Each entity has its own latent sinusoids, mixed into the
channels, a small trend and Gaussian noise. The test part of every entity gets anomalies of four
kinds until the labelled fraction reaches ``anomaly_ratio``:

- ``spike``: one point, one channel, +-(4..7) standard deviations;
- ``level_shift``: a segment where 1-3 channels are offset by 2..4 standard deviations;
- ``frequency``: a segment where the seasonal pattern of 1-3 channels runs at another frequency
  (values stay inside the normal range, so only context reveals them);
- ``collective``: a segment where several channels lose their pattern together (flat + noise).

Training data is anomaly-free and unlabelled, as in the benchmarks this stands in for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

ANOMALY_KINDS = ("spike", "level_shift", "frequency", "collective")


@dataclass(frozen=True)
class PlantedAnomaly:
    kind: str
    start: int
    end: int  # exclusive
    channels: Tuple[int, ...]


@dataclass
class SyntheticEntity:
    name: str
    train: np.ndarray  # [N, C] float32
    test: np.ndarray  # [M, C] float32
    test_labels: np.ndarray  # [M] int8
    anomalies: List[PlantedAnomaly]


def _seasonal(t: np.ndarray, periods: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Latent sinusoids, one column per period: [len(t), n_latent]."""
    return np.sin(2.0 * np.pi * t[:, None] / periods[None, :] + phases[None, :])


def _plant(
    series: np.ndarray,
    latent_periods: np.ndarray,
    phases: np.ndarray,
    mixing: np.ndarray,
    t0: int,
    ratio: float,
    rng: np.random.Generator,
) -> Tuple[np.ndarray, List[PlantedAnomaly]]:
    """Plant anomalies in ``series`` (modified in place) until ``ratio`` of points is labelled."""
    n, n_ch = series.shape
    labels = np.zeros(n, dtype=np.int8)
    std = series.std(axis=0) + 1e-6
    events: List[PlantedAnomaly] = []
    target = int(round(ratio * n))
    margin = 20
    attempts = 0
    while labels.sum() < target and attempts < 1000:
        attempts += 1
        kind = ANOMALY_KINDS[len(events) % len(ANOMALY_KINDS)]
        length = 1 if kind == "spike" else int(rng.integers(15, 50))
        start = int(rng.integers(margin, n - margin - length))
        end = start + length
        # Keep events apart so each is a separate segment with normal context around it.
        if labels[max(0, start - margin) : min(n, end + margin)].any():
            continue
        if kind == "spike":
            ch = (int(rng.integers(n_ch)),)
            series[start, ch[0]] += rng.choice([-1.0, 1.0]) * rng.uniform(4.0, 7.0) * std[ch[0]]
        else:
            n_sel = int(rng.integers(1, 4)) if kind != "collective" else max(2, n_ch // 2)
            ch = tuple(sorted(rng.choice(n_ch, size=min(n_sel, n_ch), replace=False).tolist()))
            idx = list(ch)
            if kind == "level_shift":
                series[start:end, idx] += (rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 4.0)) * std[
                    idx
                ]
            elif kind == "frequency":
                t = np.arange(t0 + start, t0 + end, dtype=np.float64)
                factor = rng.choice([0.3, 2.5, 3.5])
                fast = _seasonal(t, latent_periods / factor, phases)
                normal = _seasonal(t, latent_periods, phases)
                series[start:end, idx] += ((fast - normal) @ mixing)[:, idx]
            else:  # collective: pattern replaced by its mean level plus a little noise
                level = series[start:end, idx].mean(axis=0)
                series[start:end, idx] = level + rng.normal(0.0, 0.1, (length, len(idx))) * std[idx]
        labels[start:end] = 1
        events.append(PlantedAnomaly(kind, start, end, ch))
    events.sort(key=lambda e: e.start)
    return labels, events


def make_entity(
    name: str,
    rng: np.random.Generator,
    n_channels: int,
    train_length: int,
    test_length: int,
    anomaly_ratio: float,
    noise: float,
) -> SyntheticEntity:
    """One entity: a continuous series cut into train (clean) and test (with anomalies)."""
    n_latent = 3
    periods = rng.uniform(20.0, 120.0, n_latent)
    phases = rng.uniform(0.0, 2.0 * np.pi, n_latent)
    mixing = rng.normal(0.0, 1.0, (n_latent, n_channels))
    offsets = rng.normal(0.0, 1.0, n_channels)
    slopes = rng.normal(0.0, 0.2, n_channels) / (train_length + test_length)
    total = train_length + test_length
    t = np.arange(total, dtype=np.float64)
    series = _seasonal(t, periods, phases) @ mixing + offsets + slopes * t[:, None]
    series += rng.normal(0.0, noise, series.shape)
    train = series[:train_length].copy()
    test = series[train_length:].copy()
    labels, events = _plant(test, periods, phases, mixing, train_length, anomaly_ratio, rng)
    return SyntheticEntity(name, train.astype(np.float32), test.astype(np.float32), labels, events)


def make_synthetic(
    n_entities: int = 3,
    n_channels: int = 8,
    train_length: int = 3000,
    test_length: int = 3000,
    anomaly_ratio: float = 0.05,
    noise: float = 0.1,
    seed: int = 0,
) -> List[SyntheticEntity]:
    """Generate the whole synthetic benchmark; identical output for identical arguments."""
    if n_entities < 1 or n_channels < 1:
        raise ValueError(
            f"synthetic dataset needs n_entities >= 1 and n_channels >= 1, "
            f"got n_entities={n_entities}, n_channels={n_channels}"
        )
    if train_length < 100 or test_length < 100:
        raise ValueError(
            f"synthetic dataset needs train_length and test_length >= 100, "
            f"got {train_length} and {test_length}"
        )
    if not 0.0 < anomaly_ratio < 0.5:
        raise ValueError(f"synthetic dataset needs 0 < anomaly_ratio < 0.5, got {anomaly_ratio}")
    root = np.random.default_rng(seed)
    children = root.spawn(n_entities)
    return [
        make_entity(f"entity-{i}", rng, n_channels, train_length, test_length, anomaly_ratio, noise)
        for i, rng in enumerate(children)
    ]
