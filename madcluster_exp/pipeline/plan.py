"""A job's decisions, made once: :class:`JobPlan`; and what it runs in: :class:`JobEnv`.

:func:`make_plan` turns typed settings into the plan every later step reads: the protocol
object, the detector kind (deep or classical), the data window, the training settings, the run
name and the config id, and the checks that need the backbone's class (they fail here, before
any data is read or an MLflow run exists). No step below re-decides any of these from the
config.
"""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from madcluster_exp.backbones import backbone_class
from madcluster_exp.classical import FAMILY as CLASSICAL
from madcluster_exp.config import PROTOCOL_COMBINE, ConfigError, Settings
from madcluster_exp.config.identity import config_id
from madcluster_exp.config.schema import TSBAD_DETECTORS, Config
from madcluster_exp.evaluation.protocols import EvaluationProtocol, protocol_for
from madcluster_exp.pipeline.context import JobContext
from madcluster_exp.pipeline.kinds import KINDS, DetectorKind
from madcluster_exp.tracking import Tracker
from madcluster_exp.tracking.sweep import search_tags
from madcluster_exp.training import TrainSettings

# The checkout this code runs from: its git commit is the run's source version.
CODE_ROOT = Path(__file__).resolve().parents[2]

#: The ``validation`` tag of a run that validates and early-stops on the test split.
VALIDATES_ON_TEST = "validates on test"
#: The paper's two pipelines, in the words a run's description uses.
PIPELINES = {
    "reference": "the official MADCluster code's (validates on test, tests the last epoch's "
    "weights, best-F1 threshold on test labels)",
    "honest": "the same models and schedule under this project's protocol (validation = the "
    "tail of each training series, threshold fitted on validation, test sealed until the fit "
    "ends)",
}


@dataclass(frozen=True)
class JobPlan:
    """Everything a job decides before it runs, read by every later step."""

    settings: Settings
    protocol: EvaluationProtocol
    kind: DetectorKind
    #: The window the data is cut into (the backbone's, more where it needs it).
    window: int
    #: The loop's settings; None for a classical detector (no training loop).
    train: Optional[TrainSettings]
    config_id: str
    run_name: str
    #: The reference pipeline's validation (``dataset.validation=test``): train on all of each
    #: training series, validate and early-stop on the test split, which the unit unseals
    #: before fitting. False everywhere else: the test split stays sealed until the fit ends.
    validates_on_test: bool = False

    @property
    def cfg(self) -> Config:
        return self.settings.cfg

    @property
    def params(self) -> Dict[str, Any]:
        return self.settings.params

    def identity_tags(self, context: JobContext) -> Dict[str, str]:
        """The run's tags: what it is (backbone, dataset, on/off, seed, protocol, config id,
        git), the Hydra command's overrides and job number, an Optuna trial's study."""
        cfg = self.cfg
        tags = {
            "backbone": cfg.backbone.name,
            "family": cfg.backbone.family,
            "dataset": cfg.dataset.name,
            "madcluster": "on" if cfg.madcluster.enabled else "off",
            "seed": str(cfg.seed),
            "protocol": str(cfg.protocol),
            "threshold.kind": str(self.protocol.threshold_kind),
            "config_id": self.config_id,
            **_source_tags(),
        }
        embed_tap = getattr(cfg.backbone, "embed_tap", None)
        if embed_tap is not None:
            tags["embed_tap"] = embed_tap
        if cfg.madcluster.enabled:
            tags.update(
                {
                    "madcluster.k": str(cfg.madcluster.k),
                    "madcluster.variant": str(cfg.madcluster.variant),
                    "scoring.combine": str(cfg.scoring.combine),
                }
            )
        tags.update(context.tags())  # the Hydra command's overrides and job number
        if cfg.search.trial is not None:  # a trial of an Optuna search (its sweeper sets it)
            tags.update(search_tags(context.sweeper))
            tags["optuna.trial"] = str(cfg.search.trial)
        if cfg.pipeline is not None:
            tags["pipeline"] = str(cfg.pipeline)
        if self.validates_on_test:
            tags["validation"] = VALIDATES_ON_TEST
        note = " ".join(filter(None, [self.pipeline_note(), cfg.notes]))
        if note:
            tags["mlflow.note.content"] = note
        return tags

    def run_params(self) -> Dict[str, Any]:
        """The params a tracked run starts with: every config leaf, and ``validation`` =
        "validates on test" on a run that does (beside ``dataset.validation=test``)."""
        extra = {"validation": VALIDATES_ON_TEST} if self.validates_on_test else {}
        return {**self.params, **extra}

    def pipeline_note(self) -> Optional[str]:
        """What the run's description says of its pipeline (None: neither of the paper's)."""
        if self.cfg.pipeline is None:
            return None
        what = PIPELINES[str(self.cfg.pipeline)]
        return f"{self.cfg.pipeline} pipeline: {what}."


@dataclass(frozen=True)
class JobEnv:
    """Where a job runs: its tracked run, its directory and root, the compute device, and
    what it says (printed when verbose, always in the job's log)."""

    tracker: Tracker
    #: The tracked run's name (a resumed run keeps the name it was started with).
    name: str
    job_dir: Path
    root: Path
    device: torch.device
    say: Callable[..., None]
    context: JobContext

    def with_tracker(self, tracker: Tracker) -> "JobEnv":
        """The same environment logging to another run (a collection's child run)."""
        return replace(self, tracker=tracker)


def make_plan(settings: Settings) -> JobPlan:
    """The job's plan; a configuration the backbone cannot run raises :class:`ConfigError`."""
    cfg = settings.cfg
    protocol = protocol_for(cfg)
    kind = KINDS[CLASSICAL if cfg.backbone.family == CLASSICAL else "deep"]
    if protocol.tsbad_detectors and cfg.backbone.name in TSBAD_DETECTORS:
        kind = KINDS["tsbad"]  # TSB-AD's detector, as its benchmark ran it
    if kind.trains:
        check_backbone_score_exists(cfg)
        check_components_apply(cfg)
    cid = config_id(settings.params)
    return JobPlan(
        settings=settings,
        protocol=protocol,
        kind=kind,
        window=kind.data_window(cfg.backbone),
        train=TrainSettings.from_config(cfg) if kind.trains else None,
        config_id=cid,
        run_name=run_name(cfg, cid),
        validates_on_test=cfg.dataset.validation == "test",
    )


def run_name(cfg: Config, cid: str) -> str:
    """``{state}-{config id}-s{seed}-{backbone}-{dataset}``: what tells runs apart comes first,
    because MLflow 3's runs list shows a name in a 190-pixel column, about 16 characters of a
    sweep's nested child (``on-6fb75e-s0`` fits; backbone and dataset, also tags and columns,
    may be cut). The state is on, off, or "on+<rule>" when MADCluster's score meets the
    backbone's by another rule than the protocol's (e.g. the backbone_only control arm); the
    config id tells configurations apart, the same for every seed of one configuration."""
    state = "on" if cfg.madcluster.enabled else "off"
    combine = cfg.scoring.combine
    if cfg.madcluster.enabled and combine and combine != PROTOCOL_COMBINE[cfg.protocol]:
        state = f"on+{combine}"
    name = f"{state}-{cid}-s{cfg.seed}-{cfg.backbone.name}-{cfg.dataset.name}"
    return f"{name}-{cfg.tracking.run_name_suffix}" if cfg.tracking.run_name_suffix else name


def check_backbone_score_exists(cfg: Config) -> None:
    """scoring.combine=backbone_only with MADCluster on needs a backbone score; a backbone
    that hands its objective and score to the plug-in (Deep SVDD) has none, and the combiner
    would silently use the plug-in's."""
    if (
        cfg.madcluster.enabled
        and cfg.scoring.combine == "backbone_only"
        and not backbone_class(cfg.backbone.name).keeps_objective_with_plugin
    ):
        raise ConfigError(
            f"scoring.combine=backbone_only with backbone={cfg.backbone.name}: this backbone "
            "hands its objective and score to MADCluster's center, so there is no backbone "
            "score to keep; the control arm does not apply to it (use madcluster=off for the "
            "backbone alone)"
        )


def check_components_apply(cfg: Config) -> None:
    """madcluster.components=mapping on a backbone whose objective the plug-in replaces (Deep
    SVDD) leaves only ||h - c||^2 with a *learnable* center c: its minimum is the trivial
    collapse (Ruff et al. 2018, Prop. 1), so the run would measure nothing. The paper's
    "distance only" row is Deep SVDD alone (madcluster=off)."""
    mc = cfg.madcluster
    if (
        mc.enabled
        and mc.components == "mapping"
        and not backbone_class(cfg.backbone.name).keeps_objective_with_plugin
    ):
        raise ConfigError(
            f"madcluster.components=mapping with backbone={cfg.backbone.name}: MADCluster "
            "replaces this backbone's objective, leaving only the distance to a learnable "
            "center, which collapses; the paper's 'distance only' row (appendix Table 3) is "
            f"{cfg.backbone.name} alone: use madcluster=off (see experiment=paper_ablation)"
        )


@functools.lru_cache(maxsize=1)
def _source_tags() -> Dict[str, str]:
    """This process's code version (:func:`git_tags` of the checkout it imported), read once:
    the code a process runs is what it imported, and a collection tags every series' run with
    it (three git calls each, before). Callers unpack it into their own dict."""
    return git_tags(CODE_ROOT)


def _git(root: Path, *args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def git_tags(root: Path) -> Dict[str, str]:
    """MLflow's own source tags (the UI's version column) and whether tracked files differed
    from that commit (``git_dirty``); none outside a git checkout."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": "unknown"}
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    tags = {
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "git_dirty": "unknown" if status is None else str(bool(status)).lower(),
    }
    branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    return tags
