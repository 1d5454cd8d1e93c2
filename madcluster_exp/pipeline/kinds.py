"""The kinds of detector a job fits: deep (a backbone, optionally with MADCluster, trained by
the loop), classical (fitted once on training windows) and, under ``protocol=tsbad``, TSB-AD's
(a classical detector as TSB-AD's benchmark ran it). They part only here: how the
detector is built, fitted and scored, what its training summary is, and whether a model is
saved; everything else (data, scoring order, evaluation, tracking) is one path for both.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, List

import numpy as np
import torch

from madcluster_exp.backbones import backbone_class
from madcluster_exp.classical import COMPONENT, build_classical, score_split_classical
from madcluster_exp.classical import FAMILY as CLASSICAL
from madcluster_exp.classical.tsbad import hyper_parameters, score_split_tsbad, tsbad_detector
from madcluster_exp.detector import build_detector
from madcluster_exp.detector.complexity import complexity
from madcluster_exp.scoring import score_split
from madcluster_exp.training import FitResult, fit
from madcluster_exp.training.checkpoint import Checkpointer
from madcluster_exp.utils.nn import seed_everything


@dataclass
class Fitted:
    """A fitted detector: its fit record, a split -> score output function (the protocol's
    form: with window means under the reference protocol) and the detector itself."""

    fit: FitResult
    score: Callable
    detector: object


class DetectorKind(ABC):
    name: ClassVar[str]
    #: Trained by the loop: a training schedule, a validation loss, epochs.
    trains: ClassVar[bool]
    #: Whether a fitted model is saved (serving/bundle.py) where the protocol scores new data.
    saves_model: ClassVar[bool]
    #: What the job says when it saved no model.
    no_model_reason: ClassVar[str]

    @abstractmethod
    def data_window(self, backbone) -> int:
        """The window the data is cut into for this backbone group."""

    @abstractmethod
    def fit(self, plan, env, data, part, tag: str) -> Fitted:
        """Build and fit the detector on ``data``'s training (and validation) part."""

    def summary(self, fits: List[FitResult]) -> Dict[str, float]:
        """The training summary of a job's (or a series') fits: nothing without training."""
        return {}


class DeepKind(DetectorKind):
    name = "deep"
    trains = True
    saves_model = True
    no_model_reason = (
        "no model saved: protocol=reference thresholds window scores on test labels, "
        "which does not score new data (predict serves protocol=point runs)"
    )

    def data_window(self, backbone) -> int:
        return backbone_class(backbone.name).data_window(int(backbone.window))

    def fit(self, plan, env, data, part, tag: str) -> Fitted:
        """Train backbone (+ plug-in) with the loop; the backbone's init depends on the seed
        alone, on and off alike."""
        cfg = plan.cfg
        seed_everything(int(cfg.seed))
        detector = build_detector(cfg, data.n_channels)
        if part.log_params:
            self._log_size(plan, env, detector, data.n_channels, tag)
        checkpointer = (
            Checkpointer(env.job_dir / "checkpoints", part.entity or "last")
            if cfg.train.checkpoint
            else None
        )
        prefix = part.metric_prefix
        fit_result = fit(
            detector,
            data,
            plan.train,
            env.device,
            log_metrics=lambda m, step: env.tracker.log_metrics(
                {prefix + k: v for k, v in m.items()}, step
            ),
            checkpointer=checkpointer,
        )
        sc = cfg.scoring
        window_means = plan.protocol.window_means

        def score(split):
            return score_split(
                detector,
                split,
                int(sc.stride),
                int(sc.batch_size),
                sc.aggregate,
                env.device,
                window_means=window_means,
            )

        return Fitted(fit_result, score, detector)

    @staticmethod
    def _log_size(plan, env, detector, n_channels: int, tag: str) -> None:
        sizes = complexity(detector, n_channels)
        env.tracker.log_params(
            {
                **sizes,
                "data_window": plan.window,
                "torch_threads": torch.get_num_threads(),
                **detector.backbone.extra_log_params(),
            }
        )
        plug = (
            f"MADCluster on: +{sizes['params/madcluster']:,} parameters, "
            f"+{sizes['macs/madcluster']:,} MACs"
            if detector.plugin is not None
            else "MADCluster off"
        )
        env.say(
            f"{tag} {plan.cfg.backbone.name}: {sizes['params/backbone']:,} parameters, "
            f"{sizes['macs/backbone']:,} MACs per window; {plug}"
        )

    def summary(self, fits: List[FitResult]) -> Dict[str, float]:
        """The mean best validation loss over the fits; the first fit's epochs."""
        return {
            "val/best_loss": float(np.mean([f.best_val_loss for f in fits])),
            "train/best_epoch": fits[0].best_epoch,
            "train/epochs_run": fits[0].epochs_run,
        }


class ClassicalKind(DetectorKind):
    name = CLASSICAL
    trains = False
    saves_model = False
    no_model_reason = "no model saved: classical detectors are refitted, not saved"

    def data_window(self, backbone) -> int:
        return int(backbone.window)

    def fit(self, plan, env, data, part, tag: str) -> Fitted:
        """Fit once on the training windows (no epochs, no validation loss)."""
        cfg = plan.cfg
        detector = build_classical(cfg.backbone, int(cfg.seed))
        t0 = time.perf_counter()
        detector.fit(data.train, stride=int(cfg.dataset.train_stride))
        fit_s = time.perf_counter() - t0
        if part.log_params:
            env.tracker.log_params({"data_window": cfg.backbone.window, **detector.params()})
        env.say(
            f"{tag} {cfg.backbone.name} ({detector.library}): fitted on "
            f"{detector.n_train_windows:,} training windows in {fit_s:.2f}s"
        )
        sc = cfg.scoring
        window_means = plan.protocol.window_means

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

        return Fitted(
            FitResult(epochs_run=0, best_epoch=0, best_val_loss=float("nan"), fit_seconds=fit_s),
            score,
            detector,
        )


class TSBADKind(DetectorKind):
    """``protocol=tsbad`` with a classical backbone TSB-AD's benchmark has
    (config.schema.TSBAD_DETECTORS): TSB-AD's detector as its benchmark ran it
    (classical/tsbad.py): unsupervised, fitted on the series it scores, with TSB-AD's published
    hyper-parameters and period-rule window; nothing is fitted on a training split.

    The test split (the whole series under the preset) is scored by a fit on itself, as TSB-AD
    scores a file: the published numbers. The validation rows are scored by a fit on the
    training part they end (TSB-AD's semi-supervised pool, there before the test split is
    unsealed), so the threshold fitted on them sees no test value. Scores are the detector's
    own, unscaled: TSB-AD's MinMax scaling changes no metric, and would scale validation and
    test by different ranges."""

    name = "tsbad"
    trains = False
    saves_model = False
    no_model_reason = "no model saved: TSB-AD's detectors are fitted on each series they score"

    def data_window(self, backbone) -> int:
        return int(backbone.window)  # the validation split's size; TSB-AD's window is per series

    def fit(self, plan, env, data, part, tag: str) -> Fitted:
        cfg = plan.cfg
        seed = int(cfg.seed)
        name = tsbad_detector(cfg.backbone.name, data.n_channels, data.train.source)
        t0 = time.perf_counter()
        prefix = data.scaler.transform(part.raw.train)  # fit part, gap and validation rows
        scores = score_split_tsbad(name, prefix, seed)
        val = {
            COMPONENT: np.concatenate(
                [
                    scores[p.end - v.length : p.end]
                    for p, v in zip(prefix.segments, data.val.segments)
                ]
            )
        }
        fit_s = time.perf_counter() - t0
        if part.log_params:
            hp = hyper_parameters(name, data.n_channels)
            env.tracker.log_params(
                {
                    "data_window": cfg.backbone.window,
                    "tsbad.detector": name,
                    **{f"tsbad.{k}": v for k, v in hp.items()},
                }
            )
        env.say(
            f"{tag} {cfg.backbone.name} as TSB-AD's {name} (protocol=tsbad): fitted on each "
            f"series it scores; validation scored on the training part in {fit_s:.2f}s"
        )

        def score(split):
            if split is data.val:
                return val
            return {COMPONENT: score_split_tsbad(name, split, seed)}

        return Fitted(
            FitResult(epochs_run=0, best_epoch=0, best_val_loss=float("nan"), fit_seconds=fit_s),
            score,
            None,
        )


#: The kinds by name: a backbone group's ``family`` is classical, or the kind is deep; under a
#: protocol that runs TSB-AD's detectors, a backbone TSB-AD has is ``tsbad`` (plan.make_plan).
KINDS: Dict[str, DetectorKind] = {k.name: k for k in (DeepKind(), ClassicalKind(), TSBADKind())}
