"""TSB-AD's period rule: the sliding window its benchmark gives every series.

TSB-AD (``TSB_AD/utils/slidingWindows.py``, ``find_length_rank``) takes a series' dominant
period from its autocorrelation and uses it twice: as the VUS buffer window of the metrics
(``get_metrics(..., slidingWindow=find_length_rank(data[:, 0], rank=1))``, one window per file)
and, with ``rank = periodicity`` from its hyper-parameter table, as the sub-sequence length of
its windowed detectors. :func:`find_length_rank` reproduces the rule exactly, quirks included:

- only the first 20,000 points are looked at;
- the ACF is statsmodels' ``acf(x, nlags=400, fft=True)`` (fewer lags on a series shorter than
  401 points); lags 0-2 are dropped, so candidate lags start at 3;
- candidates are the strict local maxima of that ACF (``scipy.signal.argrelextrema`` with
  ``np.greater``: never the first or last lag kept), ranked by ACF value, highest first
  (``np.argsort(...)[::-1]``: among equal values the later lag comes first);
- ``rank=1``: the highest peak; ``rank=2``: the highest of the peaks at a longer lag than it
  (the highest peak again if there is none); ``rank=3``: TSB-AD's loop indexes its ranking by
  the rank-2 peak's *position in the list of peaks* (a position used as a rank): reproduced
  as is, with 125 where TSB-AD's loop fails (no rank-2 peak). Any other rank > 0 behaves as
  rank 1;
- a chosen peak at lag < 6 or > 303 (local-maximum index < 3 or > 300 after the 3 dropped lags),
  or no peak at all (a constant series, a trend, NaN in the first 20,000 points, fewer than 8
  points), gives the default 125;
- ``rank=0`` gives 1; a multi-channel input (more than one column after squeezing) gives 0
  before ``rank`` is looked at (TSB-AD's value; its detectors then see no window).

The result is an ``int`` (TSB-AD returns numpy integers). A 0-d or empty input raises
ValueError (TSB-AD fails there with TypeError / statsmodels' error).
"""

from __future__ import annotations

import numpy as np

from madcluster_exp.config.schema import RANGE_WINDOW_RULE

DEFAULT_PERIOD = 125  # TSB-AD's answer when no usable ACF peak is found
MAX_POINTS = 20_000  # only the first 20k points are looked at
ACF_LAGS = 400
FIRST_LAG = 3  # lags 0, 1, 2 are dropped before looking for peaks
MIN_PEAK, MAX_PEAK = 3, 300  # bounds on the peak's index after the dropped lags


def _peak_rank(order: np.ndarray, rank: int) -> int:
    """Index into the list of peaks for ``rank``; ``order`` = peak indices by ACF, highest
    first. Raises IndexError / LookupError where TSB-AD's loop fails (-> default period)."""
    best = int(order[0])  # IndexError without any peak
    if rank == 2:
        return next((int(i) for i in order[1:] if i > best), best)
    if rank == 3:
        later = next((int(i) for i in order[1:] if i > best), None)
        if later is None:
            raise LookupError("no rank-2 peak")  # TSB-AD: unbound id_tmp
        # TSB-AD slices its ranking from position `later` (a peak index used as a rank).
        return next((int(i) for i in order[later:] if i > order[later]), best)
    return best


def find_length_rank(series, rank: int = 1) -> int:
    """TSB-AD's ``find_length_rank(series, rank)``: the ``rank``-th dominant period of a
    univariate series by its autocorrelation (see the module docstring for every rule)."""
    from scipy.signal import argrelextrema

    try:
        from statsmodels.tsa.stattools import acf
    except ImportError as e:  # a runtime dependency: an install without it is broken
        raise ImportError(
            "find_length_rank needs statsmodels (TSB-AD's ACF): pip install statsmodels"
        ) from e

    x = np.asarray(series, dtype=np.float64).squeeze()
    if x.ndim > 1:
        return 0
    if rank == 0:
        return 1
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"find_length_rank needs a series of points, got shape {x.shape}")
    x = x[:MAX_POINTS]
    ac = acf(x, nlags=ACF_LAGS, fft=True)[FIRST_LAG:]
    peaks = argrelextrema(ac, np.greater)[0]
    order = np.argsort(ac[peaks])[::-1]
    try:
        peak = int(peaks[_peak_rank(order, rank)])
    except LookupError:  # IndexError included: no peak
        return DEFAULT_PERIOD
    if peak < MIN_PEAK or peak > MAX_PEAK:
        return DEFAULT_PERIOD
    return peak + FIRST_LAG


def tsbad_vus_window(data) -> int:
    """The VUS sliding window TSB-AD's benchmark scripts (``Run_Detector_U.py`` and
    ``Run_Detector_M.py``) evaluate a file with: the period rule on its first channel."""
    values = np.asarray(data, dtype=np.float64)
    first = values if values.ndim == 1 else values.reshape(len(values), -1)[:, 0]
    return find_length_rank(first, rank=1)


def resolve_range_window(setting, data) -> int:
    """``metrics.range_window`` for one scored series: an integer as it is; ``auto``: TSB-AD's
    period rule on the series' first channel (:func:`tsbad_vus_window`); ``data`` is read only
    for ``auto``."""
    if setting == RANGE_WINDOW_RULE:
        return tsbad_vus_window(data)
    return int(setting)
