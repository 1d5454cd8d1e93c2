"""The benchmark's statistics (the timings themselves live in ``make bench``, not in tests)."""
import numpy as np

from madcluster_exp.bench.train import _bootstrap_interval


def test_bootstrap_interval_of_identical_ratios_is_that_ratio():
    low, high = _bootstrap_interval(np.full(15, 1.03), np.full(15, 1.03))
    assert low == high == 1.03


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_pairs():
    rng = np.random.default_rng(1)
    first, second = (1.04 + 0.03 * rng.standard_normal(200) for _ in range(2))
    estimate = np.sqrt(np.median(first) * np.median(second))
    low, high = _bootstrap_interval(first, second)
    assert low < estimate < high
    assert 1.03 < low and high < 1.05
    few_low, few_high = _bootstrap_interval(first[:10], second[:10])
    assert few_high - few_low > 2 * (high - low)
    assert _bootstrap_interval(first, second) == (low, high)  # seeded: reproducible
