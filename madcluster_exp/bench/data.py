"""Loading an SMD-sized dataset (28 machines, ~1.4M rows x 38, header-less text as published)
and the peak memory of a window-100 run on it, against what materialised windows would take."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from madcluster_exp.bench.common import PEAK_RSS_WRAPPER, child_peak_rss_mb, table, write


def make_smd_sized(root: Path, machines: int = 28, rows: int = 25_300, features: int = 38) -> None:
    """Synthetic stand-in with SMD's published shape (708k train + 708k test rows)."""
    if (root / "SMD" / "test_label" / f"machine-3-{machines}.txt").exists():
        return
    rng = np.random.default_rng(0)
    for m in range(1, machines + 1):
        name = f"machine-3-{m}"
        for split in ("train", "test"):
            (root / "SMD" / split).mkdir(parents=True, exist_ok=True)
            x = rng.random((rows, features)).astype(np.float32)
            pd.DataFrame(x).to_csv(
                root / "SMD" / split / f"{name}.txt", header=False, index=False, float_format="%.5f"
            )
        y = (rng.random(rows) < 0.04).astype(int)
        (root / "SMD" / "test_label").mkdir(parents=True, exist_ok=True)
        pd.Series(y).to_csv(root / "SMD" / "test_label" / f"{name}.txt", header=False, index=False)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, default=Path("outputs/bench/smd_sized"))
    ap.add_argument("--out", type=Path, default=Path("outputs/bench"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    make_smd_sized(args.root)
    print(f"  SMD-sized files ready in {time.perf_counter() - t0:.1f}s", flush=True)

    from madcluster_exp.config.schema import SMDConfig
    from madcluster_exp.data import load_dataset

    cfg = SMDConfig()
    t0 = time.perf_counter()
    raw = load_dataset(cfg, args.root)
    raw.test.unseal()
    test = raw.test.get()
    load_s = time.perf_counter() - t0
    rows = len(raw.train) + len(test)
    data_mb = (raw.train.values.nbytes + test.values.nbytes) / 2**20
    window = 100
    copies_mb = (len(raw.train) - window + 1) * window * raw.n_channels * 4 / 2**20

    cmd = [
        sys.executable,
        "-c",
        PEAK_RSS_WRAPPER,
        "dataset=SMD",
        f"paths.data_dir={args.root}",
        "backbone.window=100",
        "train.epochs=1",
        "train.max_batches_per_epoch=50",
        "scoring.stride=25",
        "tracking=none",
        "tracking.plots=false",
        "train.progress=none",
        f"hydra.run.dir={args.out / 'smd_sized_run'}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    run_s = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit("the SMD-sized run failed")
    peak_mb = child_peak_rss_mb(proc.stderr)  # the child's own (ru_maxrss includes ours)
    rows_out = [
        {
            "what": "load full SMD-sized dataset (28 machines, train + test)",
            "value": f"{load_s:.2f} s",
            "rows": rows,
            "note": f"{data_mb:.0f} MB float32",
        },
        {
            "what": "peak RSS, window-100 run (deepsvdd, 50 batches, score stride 25)",
            "value": f"{peak_mb:.0f} MB",
            "rows": rows,
            "note": f"materialised train windows alone would be {copies_mb:.0f} MB "
            f"({copies_mb / peak_mb:.1f}x this peak); run {run_s:.0f} s",
        },
    ]
    print(table(rows_out, ["what", "value", "rows", "note"]))
    print(f"written to {write('data', rows_out, args.out)}")


if __name__ == "__main__":
    main()
