"""debug=fast caps entities, series length and batches whatever the dataset and backbone."""

from __future__ import annotations

import numpy as np
import pytest

from madcluster_exp.app import run
from tests.conftest import compose_config
from tests.dataset_fixtures import make_smd, make_timeeval


def _debug_cfg(tmp_path, *overrides):
    return compose_config(
        [
            f"paths.output_dir={tmp_path / 'outputs'}",
            f"paths.root_dir={tmp_path}",
            "debug=fast",
            "tracking=none",
            "train.progress=none",
            *overrides,
        ]
    )


@pytest.mark.parametrize("dataset", ["synthetic", "SMD", "MSL", "SMAP", "PSM", "csv", "collection"])
def test_debug_fast_composes_with_every_dataset(tmp_path, dataset):
    extra = [f"dataset.path={tmp_path}/x"] if dataset in ("csv", "collection") else []
    cfg = _debug_cfg(tmp_path, f"dataset={dataset}", *extra)
    assert (cfg.dataset.max_entities, cfg.dataset.max_length) == (2, 1000)
    assert cfg.train.max_batches_per_epoch == 20 and cfg.train.epochs == 1


def _test_rows_per_entity(job_dir):
    with np.load(job_dir / "scores.npz") as z:
        return [int(b - a) for a, b in z["entity_bounds"]], list(z["entity_names"])


def test_debug_fast_on_smd_keeps_two_entities_of_1000_rows(tmp_path):
    make_smd(
        tmp_path / "SMD",
        machines=("machine-1-1", "machine-1-2", "machine-2-1"),
        n_train=1500,
        n_test=1500,
        features=5,
    )
    result = run(
        _debug_cfg(tmp_path, "dataset=SMD", f"paths.data_dir={tmp_path}"),
        output_dir=tmp_path / "job",
        verbose=False,
    )
    rows, names = _test_rows_per_entity(tmp_path / "job")
    assert names == ["machine-1-1", "machine-1-2"] and rows == [1000, 1000]
    assert result.fit.epochs_run == 1 and 0 <= result.metrics["test/auc_roc"] <= 1


def test_debug_fast_on_a_csv_file_caps_train_and_test_rows(tmp_path):
    make_timeeval(tmp_path / "series.csv", n=3000, anomaly=(2000, 2040))
    result = run(
        _debug_cfg(tmp_path, "dataset=csv", f"dataset.path={tmp_path / 'series.csv'}"),
        output_dir=tmp_path / "job",
        verbose=False,
    )
    rows, _ = _test_rows_per_entity(tmp_path / "job")
    assert rows == [1000]  # 1500 test rows in the file, the first 1000 kept
    assert result.fit.epochs_run == 1 and result.metrics["test/auc_roc"] > 0.5


@pytest.mark.parametrize("backbone", ["anomaly_transformer", "dcdetector"])
def test_debug_fast_shrinks_heavy_backbones_and_finishes(tmp_path, backbone):
    cfg = _debug_cfg(tmp_path, f"backbone={backbone}")
    assert cfg.backbone.d_model == 32 and cfg.backbone.layers == 1
    default = compose_config([f"backbone={backbone}"])
    assert default.backbone.d_model > 32  # the published size without debug=fast
    result = run(cfg, output_dir=tmp_path / "job", verbose=False)
    assert result.fit.epochs_run == 1 and np.isfinite(result.metrics["val/best_loss"])
    rows, _ = _test_rows_per_entity(tmp_path / "job")
    assert rows == [1000, 1000]
