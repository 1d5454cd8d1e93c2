"""One trained model per unit (the whole dataset, an entity or a collection's series): prepare
its data, fit the detector on training and validation data, then score validation and the
unsealed test split and ask the protocol for the evaluation.

The test split is sealed until ``fit`` has returned. Deep backbones and classical detectors
part only in how they are built, fitted and scored (:func:`_fit_deep`, :func:`_fit_classical`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from madcluster_exp.classical import build_classical, is_classical, score_split_classical
from madcluster_exp.data import prepare
from madcluster_exp.data.inject import inject
from madcluster_exp.detector import build_detector
from madcluster_exp.detector.complexity import complexity
from madcluster_exp.evaluation.protocols import (
    Evaluation,
    EvaluationProtocol,
    injected_metrics,
    injected_score,
    protocol_for,
)
from madcluster_exp.evaluation.sanity import score_spread
from madcluster_exp.scoring import score_split
from madcluster_exp.tracking import Tracker
from madcluster_exp.training import FitResult, TrainSettings, fit
from madcluster_exp.training.checkpoint import Checkpointer


@dataclass
class Unit:
    """One trained model: the whole dataset (concat) or one entity (per_entity)."""

    entity: Optional[str]
    fit: FitResult
    evaluation: Evaluation
    test: object  # SeriesSplit
    score_s: float
    #: What the saved model needs of this unit (madcluster_exp.serving.bundle.model_entry);
    #: None under protocol=reference, whose test-label threshold does not score new data.
    model: Optional[dict] = None
    metrics_s: float = 0.0  # computing the metrics (the protocol's evaluate)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit_and_score(
    cfg: DictConfig,
    tracker: Tracker,
    name: str,
    raw,
    entity: Optional[str],
    window: int,
    device: torch.device,
    say,
    log_params: bool,
    job_dir: Path,
    metric_prefix: Optional[str] = None,
) -> Unit:
    """One model: prepare the data, fit, score validation then test, evaluate as the protocol
    says. Also a collection's series (series_runs.py), each with its own child run."""
    tag = f"[{name}{'/' + entity if entity else ''}]"
    protocol = protocol_for(cfg)
    # ---- data: training part only; the test split stays sealed -------------------------
    data = prepare(raw, window, float(cfg.dataset.val_fraction), cfg.dataset.normalize)
    say(
        f"{tag} data: {raw.name}, {len(data.entities)} entities, {data.n_channels} channels, "
        f"{len(data.train)} train / {len(data.val)} validation rows (test sealed until fit ends)"
    )
    _announce_test_labels(data, tracker, tag, say)

    # ---- fit on train (and validation): the one place where the two kinds part ----------
    classical = is_classical(cfg.backbone)
    if classical:
        fit_result, score, detector = _fit_classical(
            cfg, tracker, data, tag, say, log_params, protocol.window_means
        )
    else:
        # Training curves of one entity in a shared run go under "<entity>/"; a child run of
        # its own (a collection's series) passes metric_prefix="".
        prefix = metric_prefix if metric_prefix is not None else (f"{entity}/" if entity else "")
        fit_result, score, detector = _fit_deep(
            cfg,
            tracker,
            data,
            entity,
            window,
            device,
            say,
            log_params,
            job_dir,
            tag,
            prefix,
            protocol.window_means,
        )

    # ---- score: validation first (fits the combiner and threshold), then test ----------
    t_score = time.perf_counter()
    val_out = score(data.val)
    injected = _score_injected(cfg, data.val, protocol.point_scores(val_out), score, protocol)
    data.test.unseal()
    test = data.test.get()
    test_out = score(test)
    score_s = time.perf_counter() - t_score
    t_metrics = time.perf_counter()
    ev = protocol.evaluate(val_out, test_out, test.labels, window)
    metrics_s = time.perf_counter() - t_metrics
    ev.metrics.update(score_spread(ev.arrays[protocol.score_array_key]))
    if injected is not None:
        ev.arrays.update(injected)
        ev.metrics.update(
            injected_metrics(
                injected["val_injected_label"],
                injected["val_injected_score"],
                int(cfg.metrics.range_window),
            )
        )
    model = None
    if cfg.tracking.log_model and ev.scorer is not None and not classical:
        from madcluster_exp.serving.bundle import model_entry

        model = model_entry(entity, data.entities, detector, data.scaler, ev.scorer)
    return Unit(entity, fit_result, ev, test, score_s, model=model, metrics_s=metrics_s)


def _announce_test_labels(data, tracker: Tracker, tag: str, say) -> None:
    """Say before training when the test split has no labelled anomaly: then precision,
    recall and F1 are missing (NaN) and the false-alarm rate is the figure to read. Only the
    count of labels is read; the test split stays sealed."""
    count = data.test.anomaly_count()
    if count == 0:
        say(
            f"{tag} the test split has no labelled anomaly: precision, recall, F1 and the "
            "threshold-free metrics will be missing (NaN); read test/false_alarm_rate, the "
            "share of normal points the thresholded prediction flags"
        )
        tracker.set_tags({"test.anomalies": "none"})


def _fit_deep(
    cfg: DictConfig,
    tracker: Tracker,
    data,
    entity: Optional[str],
    window: int,
    device: torch.device,
    say,
    log_params: bool,
    job_dir: Path,
    tag: str,
    prefix: str,
    window_means: bool,
):
    """Train backbone (+ plug-in) with the loop (the config's training settings); return the
    fit, a split -> scores function (with window means: the protocol's) and the detector."""
    # The backbone's init depends on the seed alone, on and off alike.
    seed_everything(int(cfg.seed))
    detector = build_detector(cfg, data.n_channels)
    backbone, plugin = detector.backbone, detector.plugin
    if log_params:
        sizes = complexity(detector, data.n_channels)
        tracker.log_params(
            {
                **sizes,
                "data_window": window,
                "torch_threads": torch.get_num_threads(),
                **backbone.extra_log_params(),
            }
        )
        plug = (
            f"MADCluster on: +{sizes['params/madcluster']:,} parameters, "
            f"+{sizes['macs/madcluster']:,} MACs"
            if plugin is not None
            else "MADCluster off"
        )
        say(
            f"{tag} {cfg.backbone.name}: {sizes['params/backbone']:,} parameters, "
            f"{sizes['macs/backbone']:,} MACs per window; {plug}"
        )

    # Fit on train, early-stop on validation.
    checkpointer = (
        Checkpointer(job_dir / "checkpoints", entity or "last") if cfg.train.checkpoint else None
    )
    fit_result = fit(
        detector,
        data,
        TrainSettings.from_config(cfg),
        device,
        log_metrics=lambda m, step: tracker.log_metrics(
            {prefix + k: v for k, v in m.items()}, step
        ),
        checkpointer=checkpointer,
    )
    sc = cfg.scoring

    def score(split):
        return score_split(
            detector,
            split,
            int(sc.stride),
            int(sc.batch_size),
            sc.aggregate,
            device,
            window_means=window_means,
        )

    return fit_result, score, detector


def _fit_classical(
    cfg: DictConfig, tracker: Tracker, data, tag: str, say, log_params: bool, window_means: bool
):
    """Fit a classical detector once on the training windows (no epochs, no validation loss);
    return the fit, a split -> scores function (with window means: the protocol's) and the
    detector."""
    detector = build_classical(cfg.backbone, int(cfg.seed))
    t0 = time.perf_counter()
    detector.fit(data.train, stride=int(cfg.dataset.train_stride))
    fit_s = time.perf_counter() - t0
    if log_params:
        tracker.log_params({"data_window": cfg.backbone.window, **detector.params()})
    say(
        f"{tag} {cfg.backbone.name} ({detector.library}): fitted on "
        f"{detector.n_train_windows:,} training windows in {fit_s:.2f}s"
    )
    sc = cfg.scoring

    def score(split):
        return score_split_classical(
            detector,
            split,
            int(sc.stride),
            int(sc.batch_size),
            cfg.backbone.spread,
            sc.aggregate,
            window_means=window_means,
        )

    return (
        FitResult(epochs_run=0, best_epoch=0, best_val_loss=float("nan"), fit_seconds=fit_s),
        score,
        detector,
    )


def _score_injected(
    cfg: DictConfig,
    val,
    val_points: Dict[str, np.ndarray],
    score,
    protocol: EvaluationProtocol,
):
    """With ``search.objective=val_injected_vus_pr``: score a copy of the validation split with
    injected anomalies (before the test split is unsealed); {array name: array} or None."""
    if cfg.search.objective != "val_injected_vus_pr":
        return None
    inj = cfg.search.inject
    injected = inject(val, float(inj.ratio), list(inj.kinds), int(inj.seed))
    comps = protocol.point_scores(score(injected.split))
    return {
        "val_injected_score": injected_score(cfg, val_points, comps),
        "val_injected_label": injected.split.labels,
    }
