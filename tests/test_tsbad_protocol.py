"""The TSB-AD protocol: TSB-AD's period rule (metrics/period.py).

Live comparisons with TSB-AD's own code run where tsb-ad is installed (``make install`` adds
1.5); stored values always."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from madcluster_exp.metrics.period import find_length_rank, tsbad_vus_window

DATA = Path(__file__).parent / "data" / "tsbad"
FILE = DATA / "001_NAB_id_1_Facility_tr_1007_1st_2014.csv"
PUBLISHED = DATA / "uni_mergedTable_VUS-PR.001_NAB.csv"


def _have_tsbad() -> bool:
    try:
        from TSB_AD.utils.slidingWindows import find_length_rank  # noqa: F401

        return True
    except ImportError:
        return False


live = pytest.mark.skipif(not _have_tsbad(), reason="tsb-ad not installed (make install adds it)")


# ------------------------------------------------------------------------- the period rule
def _period_series(name: str) -> np.ndarray:
    t = np.arange(60_000)
    return {
        "file": pd.read_csv(FILE)["Data"].to_numpy(),
        "sine50": np.sin(2 * np.pi * t[:3000] / 50),
        "sine_noise": np.sin(2 * np.pi * t[:2000] / 24)
        + 0.3 * np.random.default_rng(1).normal(size=2000),
        "two_sines": np.sin(2 * np.pi * t[:4000] / 30) + 0.8 * np.sin(2 * np.pi * t[:4000] / 70),
        "noise": np.random.default_rng(7).normal(size=2000),
        # the peak at lag 4 is under the bound (index 1 < 3): 125; its multiples are not
        "sine4": np.sin(2 * np.pi * t[:1000] / 4),
        # the peak at lag 350 is over the bound (index 347 > 300)
        "sine350": np.sin(2 * np.pi * t[:5000] / 350),
        "trend": t[:3000].astype(float),
        "constant": np.ones(500),
        "nan_first": np.r_[np.nan, np.sin(2 * np.pi * t[:999] / 50)],
        "short20": np.sin(t[:20] * 1.3),
        "short12": np.sin(t[:12] * 1.3),
        "short7": np.sin(t[:7] * 1.3),
        "two_points": np.arange(2.0),
        # period 37 in the first 20,000 points, a stronger period 100 after them: the rule
        # reads only the first 20k (on all 60k it would answer 299)
        "truncated": np.where(
            t < 20_000, np.sin(2 * np.pi * t / 37), 3 * np.sin(2 * np.pi * t / 100)
        ),
        "column": np.sin(2 * np.pi * t[:3000] / 50)[:, None],  # [N, 1] is squeezed
        "two_channels": np.random.default_rng(0).normal(size=(100, 2)),
    }[name]


# TSB-AD 1.5's find_length_rank on each series for rank = 0, 1, 2, 3, 4 (4: as rank 1).
PERIODS = {
    "file": (1, 6, 12, 18, 6),
    "sine50": (1, 50, 100, 150, 50),
    "sine_noise": (1, 24, 48, 72, 24),
    "two_sines": (1, 210, 271, 125, 210),
    "noise": (1, 235, 125, 235, 235),
    "sine4": (1, 125, 8, 12, 125),
    "sine350": (1, 125, 125, 125, 125),
    "trend": (1, 125, 125, 125, 125),
    "constant": (1, 125, 125, 125, 125),
    "nan_first": (1, 125, 125, 125, 125),
    "short20": (1, 125, 10, 14, 125),
    "short12": (1, 125, 10, 125, 125),
    "short7": (1, 125, 125, 125, 125),
    "two_points": (1, 125, 125, 125, 125),
    "truncated": (1, 37, 74, 111, 37),
    "column": (1, 50, 100, 150, 50),
    "two_channels": (0, 0, 0, 0, 0),  # multi-channel: 0 before rank is looked at
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the ACF of a constant series is NaN
@pytest.mark.parametrize("name", sorted(PERIODS))
def test_period_rule_stored_values(name):
    series = _period_series(name)
    got = tuple(find_length_rank(series, rank=r) for r in range(5))
    assert got == PERIODS[name]
    assert all(type(p) is int for p in got)
    assert find_length_rank(series, rank=-1) == PERIODS[name][1]


@live
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_period_rule_equals_tsbads():
    from TSB_AD.utils.slidingWindows import find_length_rank as reference

    rng = np.random.default_rng(3)
    series = [_period_series(name) for name in PERIODS]
    for _ in range(40):  # random walks and noisy mixtures of periods: many peaks, all ranks
        n = int(rng.integers(8, 3000))
        walk = np.cumsum(rng.normal(size=n))
        t = np.arange(n)
        mix = sum(rng.normal() * np.sin(2 * np.pi * t / rng.uniform(5, 200)) for _ in range(3))
        series += [walk, mix + rng.normal(scale=0.5, size=n)]
    for x in series:
        for rank in (0, 1, 2, 3, 4):
            assert find_length_rank(x, rank=rank) == reference(x, rank=rank)


def test_period_rule_rejects_empty_input():
    with pytest.raises(ValueError, match="series of points"):
        find_length_rank(np.array([1.0]))  # squeezes to 0-d (TSB-AD: TypeError)
    with pytest.raises(ValueError, match="series of points"):
        find_length_rank(np.array([]))
    assert find_length_rank(np.array([1.0]), rank=0) == 1


def test_vus_window_reads_the_first_channel():
    data = pd.read_csv(FILE)[["Data"]].to_numpy()
    assert tsbad_vus_window(data) == 6
    assert tsbad_vus_window(data[:, 0]) == 6
    noise = np.random.default_rng(0).normal(size=(len(data), 1))
    assert tsbad_vus_window(np.hstack([data, noise])) == 6
