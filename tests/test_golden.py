"""Behaviour kept across a restructuring: golden runs record what they recorded before, and a
run directory saved before the move still predicts and resumes.

``tests/data/golden/`` was written by ``python -m tests.golden --write`` and a debug=fast run
(``old_run/``) on the code before the package moved into layers (issue 24). The captures were
rewritten for issue 26, where two things changed on purpose: run names lead with on/off, config
id and seed, and the saved model is the run's MLflow logged model, no longer a ``model/`` among
its artifacts; params, tags, metrics and scores were compared equal before the rewrite.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from madcluster_exp.data import load_dataset
from madcluster_exp.predict import load_detector
from tests import golden
from tests.conftest import compose_config

OLD_RUN = golden.GOLDEN_DIR / "old_run"


def _old_run_config(tmp: Path):
    """The saved run's overrides, pointed at a fresh folder."""
    overrides = json.loads((OLD_RUN / "overrides.json").read_text())["overrides"]
    kept = [o for o in overrides if not o.startswith("paths.")]
    return compose_config(kept + [f"paths.root_dir={tmp}", f"paths.output_dir={tmp / 'out'}"])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(golden.RUNS))
def test_golden_run_records_what_it_recorded_before_the_move(name):
    now = golden.capture([name])[name]
    assert golden.differences(golden.load(name), now) == []


def test_a_run_saved_before_the_move_scores_its_test_split_as_it_did(tmp_path):
    import mlflow

    saved = dict(np.load(OLD_RUN / "scores.npz"))
    cfg = _old_run_config(tmp_path)
    raw = load_dataset(cfg.dataset, tmp_path / "datasets")
    raw.test.unseal()
    test = raw.test.get()
    det = load_detector(OLD_RUN)
    model = mlflow.pyfunc.load_model(str(OLD_RUN / "model"))
    for a, b in saved["entity_bounds"]:
        x = test.values[a:b].astype(np.float64)
        np.testing.assert_allclose(det.score(x), saved["test_score"][a:b], rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(det.predict(x), saved["test_pred"][a:b])
        out = model.predict(pd.DataFrame(x))
        np.testing.assert_allclose(out["score"].to_numpy(), saved["test_score"][a:b], rtol=1e-6)


@pytest.mark.slow
def test_the_predict_command_scores_a_run_saved_before_the_move(tmp_path):
    import subprocess
    import sys

    saved = dict(np.load(OLD_RUN / "scores.npz"))
    cfg = _old_run_config(tmp_path)
    raw = load_dataset(cfg.dataset, tmp_path / "datasets")
    raw.test.unseal()
    a, b = saved["entity_bounds"][0]
    frame = pd.DataFrame(raw.test.get().values[a:b])
    frame.to_csv(tmp_path / "x.csv", index=False)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "madcluster_exp.predict",
            f"run={OLD_RUN}",
            "data=x.csv",
            "out=pred.csv",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = pd.read_csv(tmp_path / "pred.csv")["score"].to_numpy()
    np.testing.assert_allclose(got, saved["test_score"][a:b], rtol=1e-6, atol=1e-9)


def test_a_run_saved_before_the_move_is_matched_for_resume(tmp_path):
    """Same config, same fingerprint: its checkpoints may be continued; a changed key is named."""
    from madcluster_exp.training.checkpoint import ResumeError, check_resume

    job = shutil.copytree(OLD_RUN, tmp_path / "job")
    info = json.loads((job / "run_info.json").read_text())
    flat = _flat(_old_run_config(tmp_path))
    assert check_resume(job / "run_info.json", flat, info["tracking_uri"]) == []
    with pytest.raises(ResumeError, match="train.lr"):
        check_resume(job / "run_info.json", {**flat, "train.lr": 0.5}, info["tracking_uri"])


def _flat(cfg):
    from madcluster_exp.config import load

    return load(cfg).params
