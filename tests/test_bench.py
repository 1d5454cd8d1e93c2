"""The benchmark's statistics and its memory measurement (the timings themselves live in
``make bench``, not in tests)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from madcluster_exp.bench.common import PEAK_RSS_WRAPPER, child_peak_rss_mb, peak_rss_mb
from madcluster_exp.bench.load import busy_processes
from madcluster_exp.bench.train import bootstrap_interval


def test_bootstrap_interval_of_identical_ratios_is_that_ratio():
    low, high = bootstrap_interval(np.full(15, 1.03), np.full(15, 1.03))
    assert low == high == 1.03


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_pairs():
    rng = np.random.default_rng(1)
    first, second = (1.04 + 0.03 * rng.standard_normal(200) for _ in range(2))
    estimate = np.sqrt(np.median(first) * np.median(second))
    low, high = bootstrap_interval(first, second)
    assert low < estimate < high
    assert 1.03 < low and high < 1.05
    few_low, few_high = bootstrap_interval(first[:10], second[:10])
    assert few_high - few_low > 2 * (high - low)
    assert bootstrap_interval(first, second) == (low, high)  # seeded: reproducible


def test_peak_rss_is_the_processs_own_not_its_parents():
    """A child of a large process reports its own peak (ru_maxrss would report the parent's)."""
    ballast = np.ones(50_000_000)  # 400 MB, touched
    assert peak_rss_mb() >= ballast.nbytes / 2**20
    code = (
        "import resource; from madcluster_exp.bench.common import peak_rss_mb; "
        "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    own, inherited = map(
        float,
        subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        ).stdout.split(),
    )
    assert own < 100 < 400 <= inherited  # the child holds no ballast; ru_maxrss says it does
    del ballast


def test_the_wrapped_run_reports_its_peak_and_keeps_the_exit_status(tmp_path):
    bad = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_WRAPPER, "backbone=nope"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bad.returncode != 0
    assert "nope" in bad.stderr  # Hydra's own message about the unknown backbone
    assert 10 < child_peak_rss_mb(bad.stderr) < 2000
    with pytest.raises(ValueError, match="PEAK_RSS_MB"):
        child_peak_rss_mb("no such line\n")


def test_benchmark_builds_and_configures_detectors_as_a_run_does():
    """One builder for runs and the benchmark: the run's class (or the named baseline), the
    run's optimizer settings (Deep SVDD's weight decay included), the plug-in compiled only when
    asked and only with MADCluster on."""
    from madcluster_exp.backbones import BACKBONES
    from madcluster_exp.bench.dcdetector_baseline import MaterialisedDCdetector
    from madcluster_exp.bench.train import bench_config, build_bench_detector

    det, cfg = build_bench_detector("deepsvdd", "on")
    assert type(det.backbone) is BACKBONES["deepsvdd"] and det.plugin is not None
    group = det.optimizers["main"].param_groups[0]
    assert group["weight_decay"] == cfg.backbone.weight_decay == 1e-6
    assert group["lr"] == cfg.backbone.lr
    det, _ = build_bench_detector("dcdetector_materialised", "off")
    assert type(det.backbone) is MaterialisedDCdetector and det.plugin is None
    assert bench_config("usad", "on", plugin_compile=True).madcluster.compile
    assert not bench_config("usad", "off", plugin_compile=True).madcluster.compile
    assert not bench_config("usad", "on").madcluster.compile


def _openmp_environment(**given: str) -> tuple:
    drop = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    code = (
        "import os, madcluster_exp; "
        "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**env, **given}, capture_output=True, text=True
    )
    return tuple(out.stdout.split())


def test_openmp_threads_spin_briefly_unless_the_environment_sets_a_policy():
    """libgomp's long default spin burns the CPU share of a run that shares its cores; the
    package shortens it before torch loads libgomp, and a policy or spin count given wins."""
    assert _openmp_environment() == ("None", "10000")
    assert _openmp_environment(OMP_WAIT_POLICY="PASSIVE") == ("PASSIVE", "None")
    assert _openmp_environment(GOMP_SPINCOUNT="300000") == ("None", "300000")


def test_busy_processes_run_during_the_block_and_are_gone_after():
    with busy_processes(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.returncode is not None for p in procs)
