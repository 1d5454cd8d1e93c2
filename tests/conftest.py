"""Shared fixtures: compose configs the way the CLI does, with outputs in a temp dir."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from madcluster_exp.app import CONFIG_DIR

# Small enough for seconds-long runs, large enough for real signal.
FAST = [
    "dataset.n_entities=2", "dataset.train_length=800", "dataset.test_length=800",
    "dataset.n_channels=4", "backbone.window=32", "train.epochs=2", "train.patience=null",
    "train.progress=none", "tracking.plots=false",
]


def compose_config(overrides: Iterable[str] = ()) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def make_cfg(tmp_path: Path):
    """make_cfg(*overrides, fast=True) -> composed config writing only under tmp_path."""

    def _make(*overrides: str, fast: bool = True) -> DictConfig:
        base = [f"paths.output_dir={tmp_path / 'outputs'}", f"paths.root_dir={tmp_path}"]
        return compose_config(base + (FAST if fast else []) + list(overrides))

    return _make
