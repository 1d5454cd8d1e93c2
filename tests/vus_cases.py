"""Deterministic test cases for the vus comparison, and the golden-value generator.

``python -m tests.vus_cases`` (with vus 0.0.6 installed lean, see `make install`) rewrites
``tests/data/vus_golden.json``; the tests compare against it where vus is absent and against
vus itself where it is installed.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).parent / "data" / "vus_golden.json"
KEYS = ("AUC_ROC", "AUC_PR", "R_AUC_ROC", "R_AUC_PR", "VUS_ROC", "VUS_PR",
        "Affiliation_Precision", "Affiliation_Recall")


def make_case(i: int):
    """Case i: (labels, score, window). Covers lengths 50..20,000, windows 0, 1, odd and even,
    ties, binary scores, segments at both ends, touching and overlapping extensions, and
    scores that never exceed 0.5 (no predicted event for affiliation)."""
    rng = np.random.default_rng(1000 + i)
    n = int([50, 120, 333, 1000, 2500, 20000][i % 6] if i < 12 else rng.integers(50, 4000))
    window = int([0, 1, 2, 7, 10, 37, 100, 51][i % 8])
    y = np.zeros(n, dtype=np.int64)
    for _ in range(int(rng.integers(1, 12))):
        a, length = int(rng.integers(0, n)), int(rng.integers(1, 60))
        y[a:a + length] = 1
    if i % 4 == 0:
        y[:int(rng.integers(1, 5))] = 1  # segment at the start
    if i % 5 == 0:
        y[-int(rng.integers(1, 5)):] = 1  # segment at the end
    if i % 6 == 3 and n > 200:
        # two segments whose extensions touch or overlap for the window
        a = n // 2
        y[a:a + 5] = 1
        y[a + 5 + max(1, window // 2 * 2 - i % 2):a + 12 + window] = 1
    if y.sum() == 0:
        y[n // 3] = 1
    kind = i % 4
    if kind == 0:
        s = rng.random(n) * 0.6 + 0.3 * y  # continuous, some above 0.5
    elif kind == 1:
        s = np.round(rng.random(n) * 4) / 4.0  # heavy ties
    elif kind == 2:
        s = (rng.random(n) < 0.1).astype(np.float64)  # binary scores
    else:
        s = rng.random(n) * 0.45  # never above 0.5: affiliation sees no predicted event
    return y, s, window


N_CASES = 36


def vus_reference(y, s, window):
    from vus.metrics import get_metrics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = get_metrics(s, y, metric="all", slidingWindow=window)
    return {k: float(out[k]) for k in KEYS}


if __name__ == "__main__":
    golden = {str(i): vus_reference(*make_case(i)) for i in range(N_CASES)}
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True))
    print(f"wrote {len(golden)} cases to {GOLDEN}")
