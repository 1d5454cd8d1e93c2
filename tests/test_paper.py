"""The paper's set-up: reference-only training options, the paper sweeps' composition, and the
published-vs-measured report."""
from __future__ import annotations

import copy
import math
from collections import Counter
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from madcluster_exp.app import CONFIG_DIR
from madcluster_exp.config import validate

PAPER_BACKBONES = {"deepsvdd", "usad", "beatgan", "omnianomaly", "thoc", "anomaly_transformer",
                   "dcdetector"}
PAPER_DATASETS = {"SMD", "MSL", "SMAP", "PSM"}


# ------------------------------------------------------------------------- sweep expansion
def _is_group(key: str) -> bool:
    return (Path(CONFIG_DIR) / key).is_dir()


def sweep_jobs(cli: List[str]) -> List[DictConfig]:
    """Every job of ``python -m madcluster_exp -m <cli>``, expanded as Hydra's basic sweeper
    does (the experiment's ``hydra.sweeper.params`` first, the command line after, same key:
    the command line wins; the Cartesian product of the sweeps) and composed with Hydra's
    compose API. Jobs that differ only in plain values (seed, madcluster.k) share one
    composition of their config-group choices, the values then set as Hydra sets overrides
    (composition costs ~0.2 s per job, and a paper sweep has hundreds)."""
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(cli) if not o.is_sweep_override()]
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        root = compose(config_name="config", overrides=fixed, return_hydra_config=True)
        params = [f"{k}={v}" for k, v in (root.hydra.sweeper.params or {}).items()]
        (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(params + cli), None)
        composed: Dict[tuple, DictConfig] = {}
        jobs = []
        for job in batch:
            overrides = parser.parse_overrides(job)
            groups = tuple(o.input_line for o in overrides if _is_group(o.get_key_element()))
            if groups not in composed:
                composed[groups] = compose(config_name="config", overrides=list(groups))
            cfg = copy.deepcopy(composed[groups])
            for o in overrides:
                if not _is_group(o.get_key_element()):
                    OmegaConf.update(cfg, o.get_key_element(), o.value(), merge=False)
            jobs.append(cfg)
    return jobs


def _arm(cfg: DictConfig) -> str:
    mc = cfg.madcluster
    if not mc.enabled:
        return "off"
    if mc.combine == "backbone_only":
        return "on_backbone_only"
    return "clustering_only" if mc.components == "clustering" else "on"


def _assert_paper_setup(cfg: DictConfig) -> None:
    assert cfg.backbone.window == 100
    assert cfg.dataset.mode == "per_entity" and cfg.dataset.normalize == "minmax"
    assert cfg.backbone.lr_decay == 0.9 and cfg.backbone.lr_decay_delay == 0
    t = cfg.train
    assert (t.amsgrad, t.init, t.epochs, t.patience, t.min_delta) == (True, "he", 30, 5, 1e-5)
    if cfg.backbone.name == "dcdetector":
        b = cfg.backbone
        assert (b.dropout, b.embed_tap, b.revin, b.weight_decay) == (
            0.1, "input_embedding", False, 1e-5)
    if cfg.dataset.name == "SMAP":
        # The reference's 54 SMAP channels are every distinct chan_id of labeled_anomalies.csv
        # (its 55 SMAP rows list P-2 twice): nothing excluded, nothing selected.
        assert list(cfg.dataset.exclude) == [] and cfg.dataset.entities is None
    validate(cfg)


def test_paper_table_composes_every_job_in_the_papers_setup():
    jobs = sweep_jobs(["experiment=paper_table"])
    assert len(jobs) == 7 * 4 * 3 * 3
    assert {j.backbone.name for j in jobs} == PAPER_BACKBONES
    assert {j.dataset.name for j in jobs} == PAPER_DATASETS
    for cfg in jobs:
        _assert_paper_setup(cfg)
    arms = Counter((j.backbone.name, j.dataset.name, j.seed, _arm(j)) for j in jobs)
    assert set(arms.values()) == {1}
    assert {a for (*_, a) in arms} == {"off", "on", "on_backbone_only"}
    assert {j.seed for j in jobs} == {0, 1, 2}


def test_paper_ablation_arms_are_deepsvdd_alone_clustering_only_and_both():
    jobs = sweep_jobs(["experiment=paper_ablation"])
    assert len(jobs) == 4 * 3 * 3
    for cfg in jobs:
        _assert_paper_setup(cfg)
        assert cfg.backbone.name == "deepsvdd" and cfg.madcluster.k == 1
    assert Counter(_arm(j) for j in jobs) == {"off": 12, "clustering_only": 12, "on": 12}
    on = [j for j in jobs if _arm(j) == "on"]
    assert {j.madcluster.components for j in on} == {"both"}


def test_paper_k_sweeps_k_1_to_10_on_deepsvdd():
    jobs = sweep_jobs(["experiment=paper_k"])
    assert len(jobs) == 10 * 4 * 3
    for cfg in jobs:
        _assert_paper_setup(cfg)
        assert cfg.backbone.name == "deepsvdd" and _arm(cfg) == "on"
    assert sorted({j.madcluster.k for j in jobs}) == list(range(1, 11))


def test_command_line_restricts_the_paper_sweep():
    jobs = sweep_jobs(["experiment=paper_table", "backbone=deepsvdd,dcdetector_reference",
                       "dataset=SMD", "seed=0", "debug=fast"])
    assert len(jobs) == 2 * 3
    assert all(j.train.epochs == 1 and j.backbone.window == 100 for j in jobs)
