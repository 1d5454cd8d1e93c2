"""What one epoch of each paper backbone costs at the paper's sizes, and what the paper's tables
cost from it: ``python -m madcluster_exp.bench epoch [--steps 2] [--threads 1]``.

Each backbone of ``experiment=paper_table`` is built as ``setup=paper dataset=SMD`` builds it
(appendix Table 2's sizes, MADCluster on, the reference variant) over SMD's 38 channels, in a
process of its own, on ``--threads`` torch threads (1: the figures are core-seconds). It times
``--steps`` training steps (after one warm-up step), as many validation batches (the loss and
the reference criterion, no gradient) and scoring batches, on random [B, 100, 38] windows of
the backbone's batch size, and extrapolates: a few batches stand for an epoch, so the figures
are estimates (the machine's other load moves them; best of the timed batches is used).

Windows per dataset are Table 6's rows minus (window - 1) per entity (the reference's entity
lists: MSL 27 channels, SMAP 54, SMD 28 machines, PSM 1). The per-window cost measured on SMD's
38 channels is applied to every dataset: MSL's 55 channels cost more where a backbone's work
grows with the channel count (DCdetector's channel-independent patches, USAD's and BeatGAN's
first layers), SMAP's and PSM's 25 less. A run costs, at the epoch cap (early stopping may
stop sooner):
- reference pipeline: epochs x (all training windows trained + all test windows validated)
  + the test windows scored once;
- honest pipeline: epochs x (80 % of the training windows trained + 20 % validated) + the
  validation and test windows scored once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

CHANNELS = 38
WINDOW = 100
EPOCHS = 30
SEEDS = 3
#: dataset -> (training rows, test rows, entities) (appendix Table 6; the reference's entities)
DATASETS = {
    "MSL": (58_317, 73_729, 27),
    "SMAP": (135_183, 427_617, 54),
    "SMD": (708_405, 708_420, 28),
    "PSM": (132_481, 87_841, 1),
}


def _backbones() -> List[str]:
    from madcluster_exp.config.card import paper_backbones

    return paper_backbones()


def windows(rows: int, entities: int) -> int:
    return rows - entities * (WINDOW - 1)


def measure_one(name: str, steps: int, threads: int) -> Dict[str, object]:
    """Seconds per window of a training step, a validation batch and a scoring batch."""
    import torch

    from madcluster_exp.bench.common import peak_rss_mb, typed_config
    from madcluster_exp.detector import build_detector, optimizer_options

    torch.set_num_threads(threads)
    cfg = typed_config(["setup=paper", f"backbone={name}", "dataset=SMD"])
    torch.manual_seed(0)
    det = build_detector(cfg, CHANNELS)
    det.configure_optimizers(**optimizer_options(cfg))
    bs = int(cfg.backbone.batch_size)
    gen = torch.Generator().manual_seed(0)

    def batch():
        return torch.rand(bs, det.backbone.input_length, CHANNELS, generator=gen)

    def best(fn) -> float:
        """Seconds per window of ``fn(batch)``: the best of ``steps`` timed calls after one
        warm-up call (the least disturbed by other load)."""
        fn(batch())
        times = []
        for _ in range(steps):
            x = batch()
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
        return min(times) / bs

    det.train()
    train_s = best(lambda x: det.training_step(x, 0))
    det.eval()
    with torch.no_grad():
        val_s = best(lambda x: det.evaluate_loss(x, reference_criterion=True))
        score_s = best(det.score_components)
    params = sum(p.numel() for p in det.backbone.parameters())
    return {
        "backbone": name,
        "batch": bs,
        "params": params,
        "train_s_per_window": train_s,
        "val_s_per_window": val_s,
        "score_s_per_window": score_s,
        "threads": threads,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_cost(row: Dict[str, float], dataset: str, pipeline: str, epochs: int = EPOCHS) -> float:
    """Core-seconds of one run of ``row``'s backbone on ``dataset`` (see the module's text)."""
    train_rows, test_rows, entities = DATASETS[dataset]
    w_train, w_test = windows(train_rows, entities), windows(test_rows, entities)
    t, v, s = row["train_s_per_window"], row["val_s_per_window"], row["score_s_per_window"]
    if pipeline == "reference":
        return epochs * (w_train * t + w_test * v) + w_test * s
    fit, val = 0.8 * w_train, 0.2 * w_train
    return epochs * (fit * t + val * v) + (val + w_test) * s


def table_costs(rows: Dict[str, Dict[str, float]], pipeline: str) -> Dict[str, float]:
    """Core-hours of each paper table at the epoch cap: Table 2 (every backbone x 4 datasets x
    off / on / on_backbone_only, Deep SVDD without the control arm, x 3 seeds), Table 3 (Deep
    SVDD x 4 datasets x 3 arms x 3 seeds), Table 1 (Deep SVDD x 4 datasets x k = 1..10 x 3
    seeds, k > 1 costed as k = 1)."""
    deep = "deepsvdd"
    t2 = sum(
        (2 if name == deep else 3) * SEEDS * run_cost(row, d, pipeline)
        for name, row in rows.items()
        for d in DATASETS
    )
    per_deepsvdd = sum(run_cost(rows[deep], d, pipeline) for d in DATASETS)
    return {
        "Table 2 (paper_table)": t2 / 3600,
        "Table 3 (paper_ablation)": 3 * SEEDS * per_deepsvdd / 3600,
        "Table 1 (paper_k)": 10 * SEEDS * per_deepsvdd / 3600,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m madcluster_exp.bench epoch", description=__doc__)
    ap.add_argument("--steps", type=int, default=2, help="timed batches of each kind")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: core-seconds)")
    ap.add_argument("--backbones", default=None, help="comma-separated (default: paper_table's)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="outputs/bench", help="folder of epoch.json")
    ns = ap.parse_args(argv)
    if ns.one:
        print("ROW " + json.dumps(measure_one(ns.one, ns.steps, ns.threads)), flush=True)
        return
    from madcluster_exp.bench.common import environment, table, write

    names = ns.backbones.split(",") if ns.backbones else _backbones()
    rows = []
    for name in names:
        cmd = [sys.executable, "-m", "madcluster_exp.bench.epoch", "--one", name]
        cmd += ["--steps", str(ns.steps), "--threads", str(ns.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{name}: {out.stderr[-2000:]}")
        row = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("ROW "))[4:])
        smd = run_cost(row, "SMD", "reference", epochs=1) / 3600
        row["smd_epoch_h_reference"] = smd
        rows.append(row)
        print(f"{name}: one SMD epoch (reference pipeline) ~{smd:.2f} core-hours", flush=True)
    print(environment())
    print(
        table(
            rows,
            [
                "backbone",
                "params",
                "batch",
                "train_s_per_window",
                "val_s_per_window",
                "score_s_per_window",
                "smd_epoch_h_reference",
                "peak_rss_mb",
            ],
        )
    )
    by_name = {r["backbone"]: r for r in rows}
    if "deepsvdd" in by_name and len(by_name) == len(_backbones()):
        for pipeline in ("reference", "honest"):
            costs = table_costs(by_name, pipeline)
            print(
                f"{pipeline} pipeline, {EPOCHS} epochs: "
                + ", ".join(f"{k}: {v:,.0f} core-hours" for k, v in costs.items())
            )
    print(write("epoch", rows, Path(ns.out)))


if __name__ == "__main__":
    main()
