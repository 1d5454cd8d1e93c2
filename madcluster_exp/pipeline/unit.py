"""One trained model per unit (the whole dataset, an entity or a collection's series): prepare
its data, fit the detector on training and validation data, then score validation and the
unsealed test split and ask the protocol for the evaluation.

The test split is sealed until the detector is fitted, except in the reference pipeline
(``dataset.validation=test``), which validates on it: the plan says so, and the unit unseals it
before the fit, explicitly. Deep and classical detectors part only
in their kind (:mod:`madcluster_exp.pipeline.kinds`); a unit's fit reads the job's plan, the
environment it runs in and its part of the data: :func:`fit_unit`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional

import numpy as np

from madcluster_exp.data import prepare
from madcluster_exp.data.inject import inject
from madcluster_exp.evaluation.protocols import Evaluation, injected_metrics, injected_score
from madcluster_exp.evaluation.sanity import score_spread
from madcluster_exp.metrics.period import resolve_range_window
from madcluster_exp.pipeline.plan import JobEnv, JobPlan
from madcluster_exp.training import FitResult


@dataclass(frozen=True)
class Part:
    """The data one model is fitted on, and how its records are laid out."""

    #: The entity (or series) name; None: the whole dataset.
    entity: Optional[str]
    raw: object  # RawDataset
    #: Log the detector's size as params (once per tracked run).
    log_params: bool
    #: Prefix of its training curves: "<entity>/" in a shared run, "" in a run of its own.
    metric_prefix: str = ""


@dataclass
class Unit:
    """One trained model: the whole dataset (concat), one entity (per_entity) or one series."""

    entity: Optional[str]
    fit: FitResult
    evaluation: Evaluation
    test: object  # SeriesSplit
    score_s: float
    #: What the saved model needs of this unit (madcluster_exp.serving.bundle.model_entry);
    #: None under protocol=reference, whose test-label threshold does not score new data.
    model: Optional[dict] = None
    metrics_s: float = 0.0  # computing the metrics (the protocol's evaluate)


def fit_unit(plan: JobPlan, env: JobEnv, part: Part) -> Unit:
    """One model: prepare the data, fit, score validation then test, evaluate as the
    protocol says."""
    cfg, protocol, raw, entity = plan.cfg, plan.protocol, part.raw, part.entity
    tag = f"[{env.name}{'/' + entity if entity else ''}]"
    # ---- data: training part only; the test split stays sealed -------------------------
    data = prepare(
        raw,
        plan.window,
        float(cfg.dataset.val_fraction),
        cfg.dataset.normalize,
        validation=cfg.dataset.validation,
    )
    if plan.validates_on_test:
        # The reference pipeline (dataset.validation=test), as the official code: validation
        # and early stopping read the test split, so it is unsealed before the fit, here and
        # only when the plan says so. Everywhere else it stays sealed until the fit ends.
        data.test.unseal()
        data = replace(data, val=data.test.get())
        env.say(
            f"{tag} data: {raw.name}, {len(data.entities)} entities, {data.n_channels} "
            f"channels, {len(data.train)} train rows (all of each training series); "
            f"VALIDATES ON TEST: {len(data.val)} test rows validate and early-stop "
            "(the reference pipeline)"
        )
    else:
        env.say(
            f"{tag} data: {raw.name}, {len(data.entities)} entities, {data.n_channels} "
            f"channels, {len(data.train)} train / {len(data.val)} validation rows "
            "(test sealed until fit ends)"
        )
    _announce_test_labels(data, env, tag)
    fitted = plan.kind.fit(plan, env, data, part, tag)

    # ---- score: validation first (fits the combiner and threshold), then test ----------
    t_score = time.perf_counter()
    val_out = fitted.score(data.val)
    injected = _score_injected(plan, data.val, protocol.point_scores(val_out), fitted.score)
    data.test.unseal()
    test = data.test.get()
    # Validating on test, the validation scores are the test scores: scored once.
    test_out = val_out if test is data.val else fitted.score(test)
    score_s = time.perf_counter() - t_score
    t_metrics = time.perf_counter()
    range_window = _range_window(plan, raw, env, tag)
    ev = protocol.evaluate(val_out, test_out, test.labels, plan.window, range_window)
    if not isinstance(cfg.metrics.range_window, int):  # a rule: log the window it gave
        ev.metrics["range_window"] = float(range_window)
    metrics_s = time.perf_counter() - t_metrics
    ev.metrics.update(score_spread(ev.arrays[protocol.score_array_key]))
    if injected is not None:
        ev.arrays.update(injected)
        ev.metrics.update(
            injected_metrics(
                injected["val_injected_label"],
                injected["val_injected_score"],
                resolve_range_window(cfg.metrics.range_window, data.val.values),
            )
        )
    model = None
    if cfg.tracking.log_model and ev.scorer is not None and plan.kind.saves_model:
        from madcluster_exp.serving.bundle import model_entry

        model = model_entry(entity, data.entities, fitted.detector, data.scaler, ev.scorer)
    return Unit(entity, fitted.fit, ev, test, score_s, model=model, metrics_s=metrics_s)


def _range_window(plan: JobPlan, raw, env: JobEnv, tag: str) -> int:
    """The VUS / range window of this unit's scored series: ``metrics.range_window``, or with
    ``auto`` TSB-AD's period rule on the series as read (unscaled; after the test split is
    unsealed), said and logged (metric ``range_window``) with the evaluation."""
    setting = plan.cfg.metrics.range_window
    if isinstance(setting, int):
        return setting
    window = resolve_range_window(setting, raw.test.get().values)
    env.say(f"{tag} range window {window} (metrics.range_window={setting}: the period rule)")
    return window


def _announce_test_labels(data, env: JobEnv, tag: str) -> None:
    """Say before training when the test split has no labelled anomaly: then precision,
    recall and F1 are missing (NaN) and the false-alarm rate is the figure to read. Only the
    count of labels is read; the test split stays sealed."""
    count = data.test.anomaly_count()
    if count == 0:
        env.say(
            f"{tag} the test split has no labelled anomaly: precision, recall, F1 and the "
            "threshold-free metrics will be missing (NaN); read test/false_alarm_rate, the "
            "share of normal points the thresholded prediction flags"
        )
        env.tracker.set_tags({"test.anomalies": "none"})


def _score_injected(plan: JobPlan, val, val_points: Dict[str, np.ndarray], score):
    """With ``search.objective=val_injected_vus_pr``: score a copy of the validation split with
    injected anomalies (before the test split is unsealed); {array name: array} or None."""
    cfg = plan.cfg
    if cfg.search.objective != "val_injected_vus_pr":
        return None
    inj = cfg.search.inject
    injected = inject(val, float(inj.ratio), list(inj.kinds), int(inj.seed))
    comps = plan.protocol.point_scores(score(injected.split))
    return {
        "val_injected_score": injected_score(cfg, val_points, comps),
        "val_injected_label": injected.split.labels,
    }


def summary_metrics(plan: JobPlan, units: List[Unit]) -> Dict[str, float]:
    """What every run logs beside its evaluation, for a job and a collection's series alike:
    the kind's training summary (none for a classical detector) and the seconds spent
    fitting, scoring and computing metrics."""
    return {
        **plan.kind.summary([u.fit for u in units]),
        "time/fit_s": sum(u.fit.fit_seconds for u in units),
        "time/score_s": sum(u.score_s for u in units),
        "time/metrics_s": sum(u.metrics_s for u in units),
    }
