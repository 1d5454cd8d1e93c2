"""Classical detectors on one SMD-sized series (SMD machine-1-1: 28,479 training and 28,479
test rows x 38 channels), each at its default configuration, fit + scoring of validation and
test as the job does it; against the deep backbones measured in the same run (one epoch +
scoring, the least a deep run costs), with the ratio to the fastest of them.

A first call of each detector on a short series (imports; stumpy's numba compilation for
matrix_profile) is measured apart as ``warmup_s``; the deep backbones' first epoch includes its
own first-call costs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from madcluster_exp.bench.common import table, typed_config, write

CLASSICAL = ["knn", "iforest", "pca", "matrix_profile", "random", "constant"]


def make_series(rows: int, channels: int, seed: int = 0):
    """A RawDataset with one entity: sinusoids of different periods plus noise (train and
    test drawn alike, a few level shifts labelled in test), at the given size."""
    from madcluster_exp.data.series import RawDataset, SealedTest, SeriesSplit

    rng = np.random.default_rng(seed)

    def part(offset: int) -> np.ndarray:
        t = np.arange(offset, offset + rows)[:, None]
        periods = rng.uniform(20, 400, channels)[None, :]
        return (
            np.sin(2 * np.pi * t / periods) + 0.1 * rng.standard_normal((rows, channels))
        ).astype(np.float32)

    train, test = part(0), part(rows)
    labels = np.zeros(rows, np.int8)
    for start in rng.integers(0, rows - 100, 10):
        test[start : start + 50] += 2.0
        labels[start : start + 50] = 1
    tr = SeriesSplit.concat([("machine", train, None)], "smd_sized(train)")
    te = SeriesSplit.concat([("machine", test, labels)], "smd_sized(test)")
    return RawDataset("smd_sized", tr, SealedTest(lambda: te, "smd_sized"))


def time_classical(name: str, raw) -> Dict[str, object]:
    from madcluster_exp.classical import build_classical, score_split_classical
    from madcluster_exp.data import SeriesSplit, prepare

    cfg = typed_config([f"backbone={name}", "madcluster=off"])
    window = int(cfg.backbone.window)
    data = prepare(raw, window, float(cfg.dataset.val_fraction), cfg.dataset.normalize)
    # First call on a short series: imports, and stumpy's numba compilation (measured apart).
    fit_part, score_part = (
        SeriesSplit.concat([("warm-up", data.train.values[a : a + 2 * window], None)])
        for a in (0, 2 * window)
    )
    t0 = time.perf_counter()
    build_classical(cfg.backbone, 0).fit(fit_part).decision_function(score_part, np.arange(2))
    warmup_s = time.perf_counter() - t0
    det = build_classical(cfg.backbone, 0)
    t0 = time.perf_counter()
    det.fit(data.train, stride=int(cfg.dataset.train_stride))
    fit_s = time.perf_counter() - t0
    data.test.unseal()
    t0 = time.perf_counter()
    for split in (data.val, data.test.get()):
        score_split_classical(
            det,
            split,
            int(cfg.scoring.stride),
            int(cfg.scoring.batch_size),
            cfg.backbone.spread,
            cfg.scoring.aggregate,
        )
    score_s = time.perf_counter() - t0
    return {
        "detector": name,
        "kind": "classical",
        "window": window,
        "train_windows": det.n_train_windows,
        "fit_s": fit_s,
        "score_s": score_s,
        "total_s": fit_s + score_s,
        "warmup_s": warmup_s,
    }


def time_deep(name: str, raw) -> Dict[str, object]:
    import torch

    from madcluster_exp.backbones import backbone_class, build_backbone
    from madcluster_exp.data import prepare
    from madcluster_exp.detector import Detector
    from madcluster_exp.scoring import score_split
    from madcluster_exp.training import TrainSettings, fit

    cfg = typed_config(
        [
            f"backbone={name}",
            "madcluster=off",
            "train.epochs=1",
            "train.progress=none",
            "train.checkpoint=false",
        ]
    )
    window = backbone_class(name).data_window(int(cfg.backbone.window))
    data = prepare(raw, window, float(cfg.dataset.val_fraction), cfg.dataset.normalize)
    torch.manual_seed(0)
    det = Detector(build_backbone(data.n_channels, cfg.backbone), None)
    cpu = torch.device("cpu")
    t0 = time.perf_counter()
    result = fit(det, data, TrainSettings.from_config(cfg), cpu)
    fit_s = time.perf_counter() - t0
    data.test.unseal()
    t0 = time.perf_counter()
    for split in (data.val, data.test.get()):
        score_split(
            det,
            split,
            int(cfg.scoring.stride),
            int(cfg.scoring.batch_size),
            cfg.scoring.aggregate,
            cpu,
        )
    score_s = time.perf_counter() - t0
    return {
        "detector": name,
        "kind": f"deep, {result.epochs_run} epoch",
        "window": window,
        "fit_s": fit_s,
        "score_s": score_s,
        "total_s": fit_s + score_s,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=28_479, help="rows of train and of test")
    ap.add_argument("--channels", type=int, default=38)
    ap.add_argument("--detectors", nargs="+", default=CLASSICAL)
    ap.add_argument(
        "--deep",
        nargs="+",
        default=["usad", "deepsvdd"],
        help="deep backbones to time (one epoch + scoring each)",
    )
    ap.add_argument("--out", type=Path, default=Path("outputs/bench"))
    args = ap.parse_args(argv)
    raw = make_series(args.rows, args.channels)
    rows: List[Dict[str, object]] = []
    for name in args.deep:
        rows.append(time_deep(name, raw))
        print(f"  {name}: {rows[-1]['total_s']:.1f}s", flush=True)
    fastest = min(rows, key=lambda r: r["total_s"]) if rows else None
    for name in args.detectors:
        row = time_classical(name, raw)
        if fastest is not None:
            row["vs_fastest_deep"] = row["total_s"] / fastest["total_s"]
        rows.append(row)
        print(f"  {name}: {row['total_s']:.1f}s", flush=True)
    note = (
        f"ratio = total_s / {fastest['detector']}'s ({fastest['total_s']:.1f}s: one epoch + "
        "scoring, the fastest deep backbone measured)"
        if fastest
        else ""
    )
    print(
        table(
            rows,
            [
                "detector",
                "kind",
                "window",
                "fit_s",
                "score_s",
                "total_s",
                "warmup_s",
                "vs_fastest_deep",
            ],
        )
    )
    if note:
        print(note)
    print(f"written to {write('classical', rows, args.out)}")


if __name__ == "__main__":
    main()
