"""What a type cannot express: ranges, cross-field rules, settings without effect, and the
by-protocol defaults. Run on the composed config before any work starts (settings.load)."""

from __future__ import annotations

import copy
from typing import List

from omegaconf import DictConfig, OmegaConf

from madcluster_exp.config.schema import (
    INJECTED_KINDS,
    PROTOCOL_COMBINE,
    RANGE_WINDOW_RULE,
    TSBAD_DETECTORS,
    DatasetConfig,
    MADClusterConfig,
    ScoringConfig,
    ThresholdConfig,
)
from madcluster_exp.config.store import option_schema
from madcluster_exp.errors import ExpectedError


# --------------------------------------------------------------------------------- validation
class ConfigError(ExpectedError, ValueError):
    """A config value that composes but cannot be run; the message names key and expectation."""


#: ``train.resume=last``: continue the newest unfinished run of the same configuration.
RESUME_LAST = "last"

# key -> (low, high, low_inclusive, high_inclusive)
_RANGES = {
    "seed": (0, None, True, None),
    "dataset.val_fraction": (0.0, 1.0, False, False),
    "dataset.train_stride": (1, None, True, None),
    "dataset.train_fraction": (0.0, 1.0, False, False),
    "dataset.max_entities": (1, None, True, None),
    "dataset.max_length": (2, None, True, None),
    "train.max_batches_per_epoch": (1, None, True, None),
    "backbone.window": (2, None, True, None),
    "backbone.lr": (0.0, None, False, None),
    "backbone.batch_size": (1, None, True, None),
    "backbone.lr_decay": (0.0, 1.0, False, True),
    "backbone.lr_decay_delay": (0, None, True, None),
    "madcluster.k": (1, None, True, None),
    "madcluster.nu_init": (0.0, 1.0, False, False),
    "madcluster.tau": (0.0, 0.5, True, False),
    "madcluster.nu_r": (0.0, 1.0, False, False),
    "madcluster.radius_warmup_epochs": (0, None, True, None),
    "backbone.radius_warmup_epochs": (0, None, True, None),
    "train.epochs": (1, None, True, None),
    "scoring.stride": (1, None, True, None),
    "scoring.batch_size": (1, None, True, None),
    "threshold.percentile": (0.0, 100.0, True, True),
    "threshold.level": (0.0, 1.0, False, False),
    "threshold.q": (0.0, 1.0, False, False),
    "search.inject.seed": (0, None, True, None),
    "search.inject.ratio": (0.0, 0.5, False, False),
    "backbone.n_neighbors": (1, None, True, None),
    "backbone.n_estimators": (1, None, True, None),
    "backbone.max_samples": (1, None, True, None),
    "backbone.n_components": (0.0, None, False, None),
}


def _in_range(value: float, low, high, low_inc, high_inc) -> bool:
    if low is not None and (value < low or (value == low and not low_inc)):
        return False
    if high is not None and (value > high or (value == high and not high_inc)):
        return False
    return True


def _describe_range(low, high, low_inc, high_inc) -> str:
    left = ("[" if low_inc else "(") + (str(low) if low is not None else "-inf")
    right = (str(high) if high is not None else "inf") + ("]" if high_inc else ")")
    return f"{left}, {right}"


def validate(cfg: DictConfig) -> None:
    """Check ranges and cross-field rules; raise ConfigError naming the key. (Choices are
    checked at composition: their fields are :class:`Choice` Enums.)"""
    problems = []
    for key, (low, high, low_inc, high_inc) in _RANGES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and not _in_range(value, low, high, low_inc, high_inc):
            problems.append(
                f"{key}={value!r}: expected a value in "
                f"{_describe_range(low, high, low_inc, high_inc)}"
            )
    mc = cfg.madcluster
    if cfg.backbone.get("family") == "classical" and mc.enabled:
        problems.append(
            f"madcluster=on with backbone={cfg.backbone.name} (family classical): "
            "the plug-in trains with a backbone's embeddings and a classical "
            "detector has neither; expected madcluster=off"
        )
    if cfg.protocol == "reference" and cfg.scoring.stride != 1:
        problems.append(
            f"protocol=reference with scoring.stride={cfg.scoring.stride}: the "
            "reference protocol scores every stride-1 window; expected 1"
        )
    problems += _validation_problems(cfg)
    if cfg.dataset.name == "collection" and cfg.dataset.mode != "per_entity":
        problems.append(
            f"dataset.mode={cfg.dataset.mode!r} with dataset=collection: every "
            "series of a collection is its own entity with its own model and "
            "child run; expected per_entity"
        )
    th = cfg.threshold
    if th.kind in ("pot", "spot") and not th.q < 1 - th.level:
        problems.append(
            f"threshold.q={th.q} with threshold.level={th.level}: POT/SPOT's tail risk must be "
            f"below the share of points above the initial threshold; expected q < 1 - level "
            f"= {1 - th.level:.6g}"
        )
    resume = cfg.train.resume
    if not isinstance(resume, bool) and resume != RESUME_LAST:
        problems.append(
            f"train.resume={resume!r}: expected true, false or {RESUME_LAST} (the newest "
            "unfinished run of this configuration)"
        )
    problems += _inject_problems(cfg)
    problems += _range_window_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


#: What each pipeline does with test data (dataset.validation, protocol): the label must say it.
PIPELINE_TEST_USE = {
    "reference": ("test", "reference"),
    "honest": ("train_tail", "point"),
}


def _validation_problems(cfg: DictConfig) -> List[str]:
    """dataset.validation=test only inside the reference protocol, and a pipeline label that
    says what the run does with test data."""
    problems = []
    validation = cfg.dataset.get("validation", "train_tail")
    if validation == "test" and cfg.protocol != "reference":
        problems.append(
            f"dataset.validation=test with protocol={cfg.protocol}: validating on the test split "
            "is the MADCluster reference pipeline's (setup=paper), whose threshold is the "
            "test-label oracle anyway; under the honest protocol it would fit early stopping, "
            "the score combiner and the threshold on test data. Expected protocol=reference "
            "(setup=paper) or dataset.validation=train_tail"
        )
    pipeline = cfg.get("pipeline")
    if pipeline is not None:
        want = PIPELINE_TEST_USE[str(pipeline)]
        if (validation, cfg.protocol) != want:
            problems.append(
                f"pipeline={pipeline} with dataset.validation={validation} and "
                f"protocol={cfg.protocol}: the {pipeline} pipeline runs with "
                f"dataset.validation={want[0]} and protocol={want[1]}; set those, or "
                "pipeline=null for a run that is neither of the paper's pipelines"
            )
    return problems


#: Keys of the classical backbones that TSB-AD's detectors (protocol=tsbad) do not read.
TSBAD_INERT_BACKBONE_KEYS = (
    "spread",
    "n_neighbors",
    "method",
    "algorithm",
    "n_estimators",
    "max_samples",
    "n_components",
    "normalize",
    "channels",
)


def _tsbad_names(backbone: str) -> str:
    return " / ".join(dict.fromkeys(n for n in TSBAD_DETECTORS[backbone] if n))


def _schema_default(key: str, cfg: DictConfig):
    """The schema's default of ``key`` for this configuration's options (None if unknown)."""
    group, _, leaf = key.partition(".")
    schemas = {
        "dataset": DatasetConfig,
        "madcluster": MADClusterConfig,
        "scoring": ScoringConfig,
        "threshold": ThresholdConfig,
    }
    if group in schemas:
        return getattr(schemas[group](), leaf, None)
    if group == "backbone":
        return getattr(option_schema("backbone", cfg.backbone.name)(), leaf, None)
    return None


def inert_settings(cfg: DictConfig) -> List[str]:
    """Keys set away from their default that have no effect in this composed configuration,
    with the reason; the run warns once, naming them (nothing is changed)."""
    rules = []
    mc = cfg.madcluster
    if mc.enabled and cfg.backbone.name == "deepsvdd":
        rules.append(
            (
                ("backbone.objective", "backbone.nu", "backbone.radius_warmup_epochs"),
                "MADCluster's center replaces Deep SVDD's own objective",
            )
        )
    if mc.enabled and mc.k > 1:
        rules.append(
            (
                ("madcluster.tau", "madcluster.nu_init", "madcluster.nu_lr"),
                f"madcluster.k={mc.k} uses the DEC target, not the OD loss and its nu",
            )
        )
    if not mc.enabled:
        rules.append(
            (
                (
                    "madcluster.k",
                    "madcluster.tau",
                    "madcluster.nu_init",
                    "madcluster.objective",
                    "scoring.combine",
                ),
                "MADCluster is off",
            )
        )
    if cfg.dataset.get("validation") == "test":
        rules.append(
            (
                ("dataset.val_fraction",),
                "dataset.validation=test trains on 100 % of each training series",
            )
        )
    if cfg.protocol == "reference":
        rules.append(
            (
                ("threshold.kind", "threshold.percentile", "threshold.level", "threshold.q"),
                "protocol=reference thresholds at the best F1 on test",
            )
        )
    if cfg.protocol == "tsbad" and cfg.backbone.name in TSBAD_DETECTORS:
        rules.append(
            (
                (
                    *(f"backbone.{k}" for k in TSBAD_INERT_BACKBONE_KEYS),
                    "scoring.stride",
                    "scoring.aggregate",
                    "dataset.train_stride",
                ),
                f"protocol=tsbad runs TSB-AD's {_tsbad_names(cfg.backbone.name)} with its "
                "published hyper-parameters and period-rule window",
            )
        )
    found = []
    for keys, why in rules:
        for key in keys:
            value = OmegaConf.select(cfg, key)
            try:
                default = _schema_default(key, cfg)
            except Exception:  # noqa: BLE001 - a key the schema does not know has no default
                continue
            if value is not None and value != default:  # a None default set is named too
                found.append(f"{key}={value} ({why})")
    return found


def _range_window_problems(cfg: DictConfig) -> List[str]:
    """metrics.range_window: an integer >= 0 or the period rule's name (the schema types it
    Any, so both compose)."""
    value = cfg.metrics.range_window
    if value == RANGE_WINDOW_RULE or (
        isinstance(value, int) and not isinstance(value, bool) and value >= 0
    ):
        return []
    return [
        f"metrics.range_window={value!r}: expected an integer >= 0, or {RANGE_WINDOW_RULE} "
        "(TSB-AD's period rule on each scored series)"
    ]


def _inject_problems(cfg: DictConfig) -> List[str]:
    kinds = list(OmegaConf.select(cfg, "search.inject.kinds") or [])
    problems = [
        f"search.inject.kinds contains {k!r}: expected any of {', '.join(INJECTED_KINDS)}"
        for k in kinds
        if k not in INJECTED_KINDS
    ]
    if not kinds:
        problems.append(
            f"search.inject.kinds is empty: expected at least one of {', '.join(INJECTED_KINDS)}"
        )
    return problems


def combine_rule(cfg: DictConfig) -> str:
    """scoring.combine, or the protocol's rule when unset: the one place this is decided."""
    return cfg.scoring.combine or PROTOCOL_COMBINE[cfg.protocol]


def resolve_defaults(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` with the by-protocol defaults filled in: what a run uses and logs."""
    out = copy.deepcopy(cfg)
    out.scoring.combine = combine_rule(cfg)
    return out
