"""Deterministic test cases for the vus 0.0.6 and TSB-AD 1.5 comparisons, and the golden-value
generator.

``python -m tests.vus_cases`` (with vus 0.0.6 and tsb-ad 1.5 installed lean, see `make install`)
rewrites ``tests/data/vus_golden.json`` and ``tests/data/tsbad_golden.json``; the tests compare
against them where a package is absent and against the package itself where it is installed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

# every key of vus 0.0.6's get_metrics(..., 'all') and of TSB-AD 1.5's get_metrics
KEYS = (
    "AUC_ROC",
    "AUC_PR",
    "Precision",
    "Recall",
    "F",
    "Precision_at_k",
    "Rprecision",
    "Rrecall",
    "RF",
    "R_AUC_ROC",
    "R_AUC_PR",
    "VUS_ROC",
    "VUS_PR",
    "Affiliation_Precision",
    "Affiliation_Recall",
)
TSBAD_KEYS = (
    "AUC-PR",
    "AUC-ROC",
    "VUS-PR",
    "VUS-ROC",
    "Standard-F1",
    "PA-F1",
    "Event-based-F1",
    "R-based-F1",
    "Affiliation-F",
)
GOLDEN = Path(__file__).parent / "data" / "vus_golden.json"
TSBAD_GOLDEN = Path(__file__).parent / "data" / "tsbad_golden.json"


def make_case(i: int):
    """Case i: (labels, score, window). Covers lengths 50..20,000, windows 0, 1, odd and even,
    ties, binary scores, segments at both ends, touching and overlapping extensions, and
    scores that never exceed 0.5 (no predicted event for affiliation). Cases from 36 on have
    heavy-tailed or negative scores, so that the 3-sigma prediction of vus's P/R/F and range
    P/R/F is not empty and each branch of its Precision_at_k is reached."""
    rng = np.random.default_rng(1000 + i)
    n = int([50, 120, 333, 1000, 2500, 20000][i % 6] if i < 12 else rng.integers(50, 4000))
    window = int([0, 1, 2, 7, 10, 37, 100, 51][i % 8])
    y = np.zeros(n, dtype=np.int64)
    for _ in range(int(rng.integers(1, 12))):
        a, length = int(rng.integers(0, n)), int(rng.integers(1, 60))
        y[a : a + length] = 1
    if i % 4 == 0:
        y[: int(rng.integers(1, 5))] = 1  # segment at the start
    if i % 5 == 0:
        y[-int(rng.integers(1, 5)) :] = 1  # segment at the end
    if i % 6 == 3 and n > 200:
        # two segments whose extensions touch or overlap for the window
        a = n // 2
        y[a : a + 5] = 1
        y[a + 5 + max(1, window // 2 * 2 - i % 2) : a + 12 + window] = 1
    if y.sum() == 0:
        y[n // 3] = 1
    kind = i % 4
    if i >= 36:
        return y, _heavy_tailed(rng, y, kind), window
    if kind == 0:
        s = rng.random(n) * 0.6 + 0.3 * y  # continuous, some above 0.5
    elif kind == 1:
        s = np.round(rng.random(n) * 4) / 4.0  # heavy ties
    elif kind == 2:
        s = (rng.random(n) < 0.1).astype(np.float64)  # binary scores
    else:
        s = rng.random(n) * 0.45  # never above 0.5: affiliation sees no predicted event
    return y, s, window


def _heavy_tailed(rng, y, kind):
    n = len(y)
    if kind == 0:  # spikes on anomalies, negative values: percentile may be below 0
        return rng.standard_t(2, n) + 4.0 * y * (rng.random(n) < 0.6)
    if kind == 1:  # positive, exponential tail, percentile in [0, 1)
        return rng.exponential(0.1, n) + 2.0 * y * (rng.random(n) < 0.5)
    if kind == 2:  # binary score flagging most anomalies and a few normal points
        return (((y == 1) & (rng.random(n) < 0.7)) | (rng.random(n) < 0.01)).astype(np.float64)
    return (rng.standard_normal(n) - 3.0 + 6.0 * y * (rng.random(n) < 0.3)).astype(np.float32)


N_CASES = 48
# TSB-AD's own implementation takes seconds per case: its golden cases skip the 20k-point ones
TSBAD_CASES = tuple(i for i in range(N_CASES) if i % 6 != 5 and (i < 24 or i >= 36))


def vus_reference(y, s, window):
    from vus.metrics import get_metrics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = get_metrics(s, y, metric="all", slidingWindow=window)
    return {k: float(out[k]) for k in KEYS}


def case_pred(y, s):
    """A 0/1 prediction for the ``pred=`` form of TSB-AD's get_metrics: the top 10 % of the
    score (ties included)."""
    return (s >= np.quantile(s, 0.9)).astype(np.int64)


def tsbad_reference(y, s, window, pred=None):
    from TSB_AD.evaluation.metrics import get_metrics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = get_metrics(s, y, slidingWindow=window, pred=pred)
    return {k: float(out[k]) for k in TSBAD_KEYS}


def _tsbad_golden(i):
    y, s, window = make_case(i)
    return {
        "oracle": tsbad_reference(y, s, window),
        "pred": tsbad_reference(y, s, window, case_pred(y, s)),
    }


if __name__ == "__main__":
    golden = {str(i): vus_reference(*make_case(i)) for i in range(N_CASES)}
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True))
    print(f"wrote {len(golden)} cases to {GOLDEN}")
    golden = {str(i): _tsbad_golden(i) for i in TSBAD_CASES}
    TSBAD_GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True))
    print(f"wrote {len(golden)} cases to {TSBAD_GOLDEN}")
