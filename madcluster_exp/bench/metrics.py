"""Metric suites vs their reference packages, same input, same process: this project's
``vus_get_metrics`` against one ``vus.metrics.get_metrics(score, labels, 'all')`` call (vus
0.0.6) and ``tsbad_get_metrics`` against TSB-AD 1.5's ``get_metrics`` (its default: threshold
search), at 10k, 100k and 700k points (window 100). Each reference runs once per size and is
skipped where its time extrapolated from the previous size exceeds its budget."""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from madcluster_exp.bench.common import best_time, table, write
from madcluster_exp.metrics import full_suite, tsbad_get_metrics, vus_get_metrics


def make_input(n: int, seed: int = 0):
    """SMD-like: ~4 % anomalous in segments of 5..200 points, an informative noisy score."""
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=np.int64)
    for a in rng.integers(0, n, max(1, n // 2500)):
        y[a : a + rng.integers(5, 200)] = 1
    s = rng.random(n) + 0.4 * y
    return y, s


def _references() -> Dict[str, Optional[Callable]]:
    refs: Dict[str, Optional[Callable]] = {}
    try:
        from vus.metrics import get_metrics as vus_all

        refs["vus"] = lambda s, y, w: vus_all(s, y, metric="all", slidingWindow=w)
    except ImportError:
        refs["vus"] = None
        print("vus not installed: its timings are not measured (make install adds it)")
    try:
        from TSB_AD.evaluation.metrics import get_metrics as tsbad_all

        refs["tsbad"] = lambda s, y, w: tsbad_all(s, y, slidingWindow=w)
    except ImportError:
        refs["tsbad"] = None
        print("tsb-ad not installed: its timings are not measured (make install adds it)")
    return refs


def _max_abs_diff(ours: Dict[str, float], ref: Dict[str, float]) -> float:
    diffs = [
        abs(ours[k] - float(ref[k]))
        for k in ours
        if not (math.isnan(ours[k]) and math.isnan(float(ref[k])))
    ]
    return max(diffs) if diffs else 0.0


def _compare(name, reference, ours_fn, ours_s, s, y, window, last, budget, row):
    """Time the reference once (unless extrapolation says it exceeds ``budget``) and add
    ``<name>_s``, ``<name>_speedup`` and ``<name>_max_abs_diff`` to ``row``."""
    n = len(s)
    estimate = None if last.get(name) is None else last[name][1] * n / last[name][0]
    if estimate is not None and estimate > budget:
        row["note"] = (
            row.get("note", "") + f" {name} skipped: ~{estimate:.0f}s extrapolated > budget"
        ).strip()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        ref = reference(s, y, window)
        elapsed = time.perf_counter() - t0
    row.update(
        {
            f"{name}_s": elapsed,
            f"{name}_speedup": elapsed / ours_s,
            f"{name}_max_abs_diff": _max_abs_diff(ours_fn(), ref),
        }
    )
    last[name] = (n, elapsed)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 700_000])
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument(
        "--vus-budget-s",
        type=float,
        default=240.0,
        help="skip vus at a size whose extrapolated time exceeds this",
    )
    ap.add_argument(
        "--tsbad-budget-s",
        type=float,
        default=240.0,
        help="skip TSB-AD at a size whose extrapolated time exceeds this",
    )
    ap.add_argument("--out", type=Path, default=Path("outputs/bench"))
    args = ap.parse_args(argv)
    refs = _references()
    budgets = {"vus": args.vus_budget_s, "tsbad": args.tsbad_budget_s}
    rows, last = [], {}
    for n in args.sizes:
        y, s = make_input(n)
        pred = (s > np.quantile(s, 0.96)).astype(np.int8)
        w = args.window
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row = {
                "points": n,
                "ours_full_suite_s": best_time(
                    lambda: full_suite(y_true=y, y_score=s, y_pred=pred, window=w)
                ),
                "ours_vus_keys_s": best_time(lambda: vus_get_metrics(s, y, w)),
                "ours_tsbad_keys_s": best_time(lambda: tsbad_get_metrics(s, y, w)),
            }
        ours = {
            "vus": (lambda: vus_get_metrics(s, y, w), row["ours_vus_keys_s"]),
            "tsbad": (lambda: tsbad_get_metrics(s, y, w), row["ours_tsbad_keys_s"]),
        }
        for name, reference in refs.items():
            if reference is not None:
                _compare(name, reference, *ours[name], s, y, w, last, budgets[name], row)
        rows.append(row)
        print(f"  {n:>8} points done", flush=True)
    print(f"\nMetric suites, window {args.window} (best of 3 for ours; references once):")
    print(
        table(
            rows,
            [
                "points",
                "ours_full_suite_s",
                "ours_vus_keys_s",
                "vus_s",
                "vus_speedup",
                "vus_max_abs_diff",
                "ours_tsbad_keys_s",
                "tsbad_s",
                "tsbad_speedup",
                "tsbad_max_abs_diff",
                "note",
            ],
        )
    )
    print(f"written to {write('metrics', rows, args.out)}")


if __name__ == "__main__":
    main()
