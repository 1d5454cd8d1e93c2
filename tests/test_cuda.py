"""GPU paths: device=cuda, train.amp (bf16 autocast) and deterministic=true.

Skipped where no CUDA device is visible (CI, laptops); run them on a GPU machine with
``make test-cuda``. Nothing else in the suite needs a GPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from madcluster_exp.app import run
from madcluster_exp.backbones import BACKBONES
from madcluster_exp.detector import build_detector
from madcluster_exp.madcluster import build_plugin
from tests.conftest import compose_config
from tests.test_backbones import SMALL, assert_dcdetector_fast_path_equals_baseline

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

C = 3
QUICK = [
    "tracking=none",
    "dataset.n_entities=1",
    "dataset.train_length=1500",
    "dataset.test_length=1500",
    "train.epochs=3",
    "train.patience=null",
    "train.progress=none",
    "tracking.plots=false",
]


def _run(tmp_path, name, *overrides):
    cfg = compose_config(
        [f"paths.output_dir={tmp_path}", f"paths.root_dir={tmp_path}", *QUICK, *overrides]
    )
    return run(cfg, output_dir=tmp_path / name, verbose=False).metrics


def _quality(metrics):
    return {k: v for k, v in metrics.items() if k.startswith(("test/", "val/"))}


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_trains_and_scores_on_cuda(backbone, amp):
    cfg = compose_config([f"backbone={backbone}", "madcluster=on", *SMALL[backbone]])
    torch.manual_seed(0)
    det = build_detector(cfg, C).cuda()
    bb = det.backbone
    det.configure_optimizers(1e-3, 0.0, None)
    det.train()
    x = torch.randn(8, bb.input_length, C, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        logs = det.training_step(x, 0)
    assert logs and all(math.isfinite(v) for v in logs.values()), logs
    assert all(p.is_cuda and p.dtype == torch.float32 for p in det.parameters())
    det.eval()
    comps = det.score_components(x)
    assert "madcluster" in comps
    for name, s in comps.items():
        assert s.is_cuda and s.shape == (8, bb.input_length), name
        assert torch.isfinite(s).all(), name


def test_a_cuda_run_scores_like_a_cpu_run(tmp_path):
    cpu = _run(tmp_path, "cpu", "device=cpu")
    gpu = _run(tmp_path, "gpu", "device=cuda")
    # Different kernels, different rounding: close, not equal.
    assert gpu["test/auc_roc"] == pytest.approx(cpu["test/auc_roc"], abs=0.03)
    assert gpu["test/auc_roc"] > 0.8


def test_amp_run_is_finite_and_close_to_float32(tmp_path):
    f32 = _run(tmp_path, "f32", "device=cuda")
    bf16 = _run(tmp_path, "bf16", "device=cuda", "train.amp=true")
    assert all(math.isfinite(v) for v in _quality(bf16).values())
    assert bf16["test/auc_roc"] == pytest.approx(f32["test/auc_roc"], abs=0.05)


@pytest.mark.parametrize("backbone", ["deepsvdd", "slmr", "dcdetector"])
def test_deterministic_cuda_runs_repeat_exactly(tmp_path, backbone):
    """Fresh processes, as a user would run them (cuBLAS reads its workspace setting when it
    starts): identical metrics to the last bit."""
    extra = [f"backbone={backbone}", *SMALL[backbone]] if backbone != "deepsvdd" else []
    results = []
    for name in ("a", "b"):
        out = tmp_path / name
        cmd = [
            sys.executable,
            "-m",
            "madcluster_exp",
            "device=cuda",
            "deterministic=true",
            f"paths.output_dir={tmp_path}",
            f"hydra.run.dir={out}",
            *QUICK,
            *extra,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(_quality(json.loads((out / "metrics.json").read_text())))
    assert results[0] and results[0] == results[1]


@pytest.mark.parametrize("heads", [1, 2])
def test_dcdetector_fast_path_equals_the_materialising_baseline_on_cuda(heads):
    assert_dcdetector_fast_path_equals_baseline(heads, "cuda")


def test_compiled_plugin_loss_matches_eager_on_cuda():
    """madcluster.compile=true on CUDA (Triton kernels): same loss and gradients as eager."""
    results = []
    for compile_ in (False, True):
        cfg = compose_config(["madcluster=on", f"madcluster.compile={str(compile_).lower()}"])
        plugin = build_plugin(16, cfg.madcluster, 0).cuda().train()
        grads = []
        for step in range(2):
            z = torch.randn(
                8, 10, 16, device="cuda", generator=torch.Generator("cuda").manual_seed(step)
            ).requires_grad_()
            out = plugin.loss(z)
            out["total"].backward()
            grads.append((out["total"].detach(), z.grad, plugin.center.grad.clone()))
            plugin.center.grad = None
        results.append(grads)
    for eager, compiled in zip(*results):
        for a, b in zip(eager, compiled):
            torch.testing.assert_close(a, b)
