"""The one training loop: epochs over shuffled training windows, validation loss, early stopping.

It sees training and validation windows only (the test split is sealed until ``fit`` returns;
the reference pipeline's validation windows are test windows, which its unit unsealed on purpose,
``dataset.validation=test``).
The data order comes from a generator seeded with the run's seed and nothing else, so MADCluster
on and off see the same batches in the same order.

Early stopping follows the backbone's reference rule for ties (``Backbone.keep_latest_on_tie``).
A validation loss that has not moved since the first epoch carries no signal (DCdetector's loss
is 0 in value by construction): the loop says so, never counts those epochs against the
patience and keeps the latest weights, so such a backbone trains its full schedule instead of
being restored to its first epoch. ``train.stop_criterion=reference`` reads the MADCluster
reference solver's criterion instead, with its EarlyStopping's rule (no tie or flat-loss rule).

Epochs are numbered from 1 wherever they leave the loop: the per-epoch metrics are logged at
step = epoch number, and ``FitResult.best_epoch`` is the same number.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional

import torch

from madcluster_exp.config.schema import Config
from madcluster_exp.data import PreparedData, WindowSet
from madcluster_exp.detector import Detector, optimizer_options
from madcluster_exp.training.checkpoint import Checkpointer, rng_state, set_rng_state
from madcluster_exp.training.progress import Progress

MetricsSink = Callable[[Dict[str, float], int], None]

# Validation losses within this relative spread of each other (plus an absolute floor for a loss
# that is 0 up to rounding) are "constant": float32 rounding, not learning, moves them.
NO_SIGNAL_RTOL, NO_SIGNAL_ATOL = 1e-6, 1e-12


class TrainingDivergedError(FloatingPointError):
    """A loss became NaN or inf; the message names the epoch, batch and component."""


@dataclass
class FitResult:
    epochs_run: int
    #: Epoch number (from 1, as the logged metric steps) whose weights were kept.
    best_epoch: int
    best_val_loss: float
    history: List[Dict[str, float]] = field(default_factory=list)
    fit_seconds: float = 0.0
    stopped_early: bool = False
    #: False when the validation loss was constant over all epochs run (>= 2): early stopping
    #: had nothing to go on; None after a single epoch (nothing to compare).
    val_loss_signal: Optional[bool] = None


@dataclass(frozen=True)
class TrainSettings:
    """What the loop reads of a run's config (:meth:`from_config`): the ``train`` group's
    schedule and early stopping, the backbone's batch size and learning-rate decay, the stride
    of the training windows, the seed that orders the batches and the optimizer's arguments.
    No defaults here: they live in the config schema."""

    epochs: int
    patience: Optional[int]
    min_delta: float
    restore_best: bool
    #: objective | reference (``train.stop_criterion``): what early stopping reads.
    stop_criterion: str
    max_batches_per_epoch: Optional[int]
    progress: str
    amp: bool
    batch_size: int
    lr_decay: Optional[float]
    lr_decay_delay: int
    train_stride: int
    seed: int
    #: :meth:`Detector.configure_optimizers`' arguments (``detector.optimizer_options``).
    optimizer: Mapping[str, object]

    @classmethod
    def from_config(cls, cfg: Config) -> "TrainSettings":
        t, b = cfg.train, cfg.backbone
        return cls(
            epochs=int(t.epochs),
            patience=None if t.patience is None else int(t.patience),
            min_delta=float(t.min_delta),
            restore_best=bool(t.restore_best),
            stop_criterion=str(t.stop_criterion),
            max_batches_per_epoch=t.max_batches_per_epoch,
            progress=t.progress,
            amp=bool(t.amp),
            batch_size=int(b.batch_size),
            lr_decay=None if b.lr_decay is None else float(b.lr_decay),
            lr_decay_delay=int(b.lr_decay_delay),
            train_stride=int(cfg.dataset.train_stride),
            seed=int(cfg.seed),
            optimizer=optimizer_options(cfg),
        )


def no_signal(val_losses: List[float]) -> bool:
    """True when two or more validation losses are all equal up to rounding."""
    if len(val_losses) < 2:
        return False
    spread = max(val_losses) - min(val_losses)
    return spread <= NO_SIGNAL_RTOL * max(abs(v) for v in val_losses) + NO_SIGNAL_ATOL


def improves(loss: float, best: float, min_delta: float, ties_improve: bool) -> bool:
    """Early stopping's test: lower than the best by more than ``min_delta``, or by at least
    ``min_delta`` where the backbone's reference counts ties (``keep_latest_on_tie``)."""
    return loss <= best - min_delta if ties_improve else loss < best - min_delta


def _mean(sums: Dict[str, float], n: int) -> Dict[str, float]:
    return {k: v / max(n, 1) for k, v in sums.items()}


def _check_finite(logs: Dict[str, float], epoch: int, batch: int) -> None:
    for key, value in logs.items():
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"training diverged at epoch {epoch + 1}, batch {batch + 1}: {key} = {value}. "
                "Lower backbone.lr, set train.grad_clip, or check the input scaling."
            )


#: The reference solver's validation criterion: a mean over batches, not over windows.
REFERENCE_CRITERION = "criterion_reference"


def validation_loss(
    detector: Detector,
    windows: WindowSet,
    batch_size: int,
    device: torch.device,
    reference_criterion: bool = False,
) -> Dict[str, float]:
    """Each loss component's mean over the validation windows; with ``reference_criterion``,
    also ``criterion_reference``: the MADCluster reference solver's ``valid_total_loss``, its
    per-batch terms (:meth:`Detector.evaluate_loss`) averaged over the batches, a smaller last
    batch counting as one, as its ``loss_dict[...] /= len(data_loader)``."""
    detector.eval()
    sums, n, batch_sum, n_batches = defaultdict(float), 0, 0.0, 0
    for _, x in windows.batches(batch_size):
        logs = detector.evaluate_loss(x.to(device), reference_criterion=reference_criterion)
        if reference_criterion:
            batch_sum += logs.pop(REFERENCE_CRITERION)
            n_batches += 1
        for k, v in logs.items():
            sums[k] += v * len(x)
        n += len(x)
    out = _mean(sums, n)
    if reference_criterion:
        out[REFERENCE_CRITERION] = batch_sum / max(n_batches, 1)
    return out


def fit(
    detector: Detector,
    data: PreparedData,
    settings: TrainSettings,
    device: torch.device,
    log_metrics: Optional[MetricsSink] = None,
    checkpointer: Optional[Checkpointer] = None,
) -> FitResult:
    """Train ``detector`` on ``data.train``, early-stop on ``data.val``, as ``settings`` say
    (:meth:`TrainSettings.from_config`); never reads test.

    With a ``checkpointer``, state is saved atomically after every epoch, and an existing
    checkpoint is continued from (same data order, RNG states, optimizers, early stopping), so a
    resumed run ends exactly where an uninterrupted one would. A NaN/inf loss stops training
    with the epoch, batch and component named; the last good checkpoint stays on disk.
    """
    window, batch_size = detector.backbone.input_length, settings.batch_size
    if data.val is None:
        raise ValueError(
            "fit needs a validation split: data.val is None (dataset.validation=test leaves it "
            "to the pipeline, which sets the unsealed test split there when its plan says so)"
        )
    reference = settings.stop_criterion == "reference"
    train_ws = WindowSet(data.train, window, stride=settings.train_stride)
    val_ws = WindowSet(data.val, window, stride=settings.train_stride)
    order = torch.Generator().manual_seed(settings.seed)
    detector.configure_optimizers(**settings.optimizer)
    detector.to(device)

    def initial_batches():
        return (x.to(device) for _, x in train_ws.batches(batch_size))

    use_amp = settings.amp and device.type == "cuda"
    if settings.amp and not use_amp:
        warnings.warn(
            "train.amp=true needs a CUDA device; training in float32", RuntimeWarning, stacklevel=2
        )
    progress = Progress(settings.progress, settings.epochs)
    n_batches = train_ws.n_batches(batch_size, settings.max_batches_per_epoch)
    best_loss, best_epoch, best_state, bad_epochs = math.inf, -1, None, 0
    history: List[Dict[str, float]] = []
    stopped_early = False
    t_start = time.perf_counter()
    epoch, first_epoch = -1, 0
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is not None:
        detector.load_state_dict(saved["model"])
        for name, opt in detector.optimizers.items():
            opt.load_state_dict(saved["optimizers"][name])
        best_loss, best_epoch, bad_epochs = (
            saved["best_loss"],
            saved["best_epoch"],
            saved["bad_epochs"],
        )
        best_state, history = saved["best_state"], list(saved["history"])
        stopped_early, epoch = saved["stopped_early"], saved["epoch"]
        first_epoch = epoch + 1
        set_rng_state(saved["rng"], order)
        print(f"resuming from {checkpointer.path} after epoch {epoch + 1}", flush=True)
    else:
        detector.backbone.on_fit_start(initial_batches, detector.uses_own_objective)

    # A checkpoint written after early stopping (or the last epoch) has nothing left to run.
    remaining = range(first_epoch, settings.epochs) if not stopped_early else range(0)
    for epoch in remaining:
        lr = detector.set_epoch_lr(epoch, settings.lr_decay, settings.lr_decay_delay)
        detector.train()
        sums, n = defaultdict(float), 0
        t_epoch = time.perf_counter()
        batches = train_ws.batches(
            batch_size, shuffle=True, generator=order, max_batches=settings.max_batches_per_epoch
        )
        for b, (_, x) in enumerate(progress.batches(batches, epoch, n_batches)):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                logs = detector.training_step(x.to(device), epoch)
            _check_finite(logs, epoch, b)
            for k, v in logs.items():
                sums[k] += v * len(x)
            n += len(x)
            progress.set_postfix(logs["loss"])
        epoch_logs = {f"train/{k}": v for k, v in _mean(sums, n).items()}
        epoch_logs.update(detector.on_epoch_end(epoch))
        val = validation_loss(detector, val_ws, batch_size, device, reference)
        epoch_logs.update({f"val/{k}": v for k, v in val.items()})
        epoch_logs["train/lr"] = lr
        epoch_logs["time/epoch_s"] = time.perf_counter() - t_epoch
        history.append(epoch_logs)
        if log_metrics is not None:
            log_metrics(epoch_logs, epoch + 1)

        if reference:
            # The reference's EarlyStopping: strictly below the best by more than min_delta,
            # no tie or flat-loss rule; a NaN criterion after the first epoch stops training.
            criterion = val[REFERENCE_CRITERION]
            improved = improves(criterion, best_loss, settings.min_delta, ties_improve=False)
            if math.isnan(criterion) and len(history) > 1:
                stopped_early = True
        else:
            criterion = val["loss"]
            flat = no_signal([h["val/loss"] for h in history])
            if flat and len(history) == 2:
                _say_no_signal(detector, val["loss"], settings.epochs)
            improved = flat or improves(
                criterion, best_loss, settings.min_delta, detector.backbone.keep_latest_on_tie
            )
        if improved:
            best_loss, best_epoch, bad_epochs = criterion, epoch, 0
            if settings.restore_best:
                best_state = copy.deepcopy(detector.state_dict())
        else:
            bad_epochs += 1
        if settings.patience is not None and bad_epochs >= settings.patience:
            stopped_early = True
        if checkpointer is not None:
            checkpointer.save(
                {
                    "model": detector.state_dict(),
                    "epoch": epoch,
                    "optimizers": {n: o.state_dict() for n, o in detector.optimizers.items()},
                    "best_loss": best_loss,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "best_state": best_state,
                    "history": history,
                    "stopped_early": stopped_early,
                    "rng": rng_state(order),
                }
            )
        shown = {
            k: v
            for k, v in epoch_logs.items()
            if k in ("train/loss", "val/loss", "val/" + REFERENCE_CRITERION, "madcluster/threshold")
        }
        progress.epoch_end(epoch, shown, " *" if improved else "")
        if stopped_early:
            break

    if settings.restore_best and best_state is not None:
        detector.load_state_dict(best_state)
    losses = [h["val/loss"] for h in history]
    return FitResult(
        epochs_run=epoch + 1,
        best_epoch=best_epoch + 1,
        best_val_loss=best_loss,
        history=history,
        fit_seconds=time.perf_counter() - t_start,
        stopped_early=stopped_early,
        val_loss_signal=None if len(losses) < 2 else not no_signal(losses),
    )


def _say_no_signal(detector: Detector, loss: float, epochs: int) -> None:
    print(
        f"{type(detector.backbone).__name__}: the validation loss is {loss:.6g} in every "
        "epoch so far; it carries no signal, so early stopping is off for this run: training "
        f"all {epochs} epochs and keeping the latest weights",
        flush=True,
    )
