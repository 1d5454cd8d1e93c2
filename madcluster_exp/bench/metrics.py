"""Metric suite vs one ``vus.metrics.get_metrics(score, labels, 'all')`` call, same input,
same process, at 10k, 100k and 700k points (window 100)."""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from madcluster_exp.bench.common import best_time, table, write
from madcluster_exp.metrics import full_suite, vus_get_metrics


def make_input(n: int, seed: int = 0):
    """SMD-like: ~4 % anomalous in segments of 5..200 points, an informative noisy score."""
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=np.int64)
    for a in rng.integers(0, n, max(1, n // 2500)):
        y[a:a + rng.integers(5, 200)] = 1
    s = rng.random(n) + 0.4 * y
    return y, s


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 700_000])
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--vus-budget-s", type=float, default=240.0,
                    help="skip vus at a size whose extrapolated time exceeds this")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench"))
    args = ap.parse_args(argv)
    try:
        from vus.metrics import get_metrics
    except ImportError:
        get_metrics = None
        print("vus not installed: only this project's timings are measured (make install adds it)")
    rows, last_vus = [], None
    for n in args.sizes:
        y, s = make_input(n)
        pred = (s > np.quantile(s, 0.96)).astype(np.int8)
        ours_full = best_time(lambda: full_suite(y_true=y, y_score=s, y_pred=pred,
                                                 window=args.window))
        ours_vus = best_time(lambda: vus_get_metrics(s, y, args.window))
        row = {"points": n, "ours_full_suite_s": ours_full, "ours_vus_keys_s": ours_vus}
        if get_metrics is not None:
            estimate = None if last_vus is None else last_vus[1] * n / last_vus[0]
            if estimate is not None and estimate > args.vus_budget_s:
                row["note"] = f"vus skipped: ~{estimate:.0f}s extrapolated > budget"
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t0 = time.perf_counter()
                    ref = get_metrics(s, y, metric="all", slidingWindow=args.window)
                    t_vus = time.perf_counter() - t0
                ours = vus_get_metrics(s, y, args.window)
                row.update(vus_all_s=t_vus, speedup=t_vus / ours_vus,
                           max_abs_diff=max(abs(ours[k] - float(ref[k])) for k in ours))
                last_vus = (n, t_vus)
        rows.append(row)
        print(f"  {n:>8} points done", flush=True)
    print(f"\nMetric suite, window {args.window} (best of 3 for ours; vus once):")
    print(table(rows, ["points", "ours_full_suite_s", "ours_vus_keys_s", "vus_all_s", "speedup",
                       "max_abs_diff", "note"]))
    print(f"written to {write('metrics', rows, args.out)}")


if __name__ == "__main__":
    main()
