"""Threshold families, the reference protocol, and re-evaluation from saved scores."""

from __future__ import annotations

import ast
import inspect
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy.stats import genpareto

from madcluster_exp.app import run
from madcluster_exp.config import ConfigError
from madcluster_exp.evaluation.protocols import (
    PointProtocol,
    ReferenceProtocol,
    TSBADProtocol,
    effective_threshold_kind,
    protocol_for,
    reference_metrics,
)
from madcluster_exp.scoring.score import window_labels
from madcluster_exp.scoring.thresholds import (
    OracleThreshold,
    PercentileThreshold,
    POTThreshold,
    SPOTThreshold,
    TransductivePercentileThreshold,
    fit_gpd,
    fit_threshold,
    pot_quantile,
)
from tests.conftest import compose_config


@pytest.mark.parametrize("gamma,sigma", [(0.3, 1.5), (-0.2, 1.0), (0.0, 2.0)])
def test_gpd_fit_matches_scipy_maximum_likelihood(gamma, sigma):
    y = genpareto.rvs(gamma, scale=sigma, size=5000, random_state=1)
    g, s = fit_gpd(y)
    g_ref, _, s_ref = genpareto.fit(y, floc=0)
    assert g == pytest.approx(g_ref, abs=2e-3) and s == pytest.approx(s_ref, rel=2e-3)


def test_pot_quantile_by_hand():
    # Exponential tail (gamma = 0): z = t - sigma * log(q n / N_t).
    assert pot_quantile(2.0, 0.0, 0.5, 1e-3, 10_000, 200) == pytest.approx(
        2.0 - 0.5 * math.log(1e-3 * 10_000 / 200)
    )
    # gamma != 0: z = t + sigma / gamma * ((q n / N_t)^-gamma - 1)
    assert pot_quantile(1.0, 0.5, 2.0, 0.01, 1000, 100) == pytest.approx(
        1.0 + 4.0 * (0.1**-0.5 - 1)
    )


def test_pot_on_an_exponential_tail_recovers_the_true_quantile():
    """Scores ~ Exp(1): the 1 - q quantile is -log(q); POT must land close to it."""
    s = np.random.default_rng(0).exponential(1.0, 200_000)
    pot = POTThreshold(level=0.98, q=1e-4).fit(s)
    assert abs(pot.gamma) < 0.05
    assert pot.sigma == pytest.approx(1.0, rel=0.05)
    assert pot.value == pytest.approx(-math.log(1e-4), rel=0.03)
    assert pot.predict(s).mean() == pytest.approx(1e-4, abs=1e-4)


def test_spot_streams_causally_and_alarms_at_about_rate_q():
    rng = np.random.default_rng(1)
    calibration, stream = rng.normal(size=20_000), rng.normal(size=20_000)
    stream[5000] = 12.0  # an unmistakable anomaly
    spot = SPOTThreshold(level=0.98, q=1e-3).fit(calibration)
    alarms = spot.predict(stream)
    assert alarms[5000] == 1
    assert alarms.mean() < 5e-3
    # Causal: the threshold used at step i depends only on steps before i.
    prefix = SPOTThreshold(level=0.98, q=1e-3).fit(calibration).predict(stream[:6000])
    np.testing.assert_array_equal(prefix, alarms[:6000])


def test_families_see_only_what_they_may():
    val, test = np.arange(100.0), np.arange(100.0, 200.0)
    labels = np.r_[np.zeros(90), np.ones(10)].astype(int)
    assert fit_threshold(PercentileThreshold(50), val, test, labels).value == pytest.approx(49.5)
    assert fit_threshold(
        TransductivePercentileThreshold(50), val, test, labels
    ).value == pytest.approx(99.5)
    oracle = fit_threshold(OracleThreshold(), val, test, labels)
    assert oracle.value == 190.0 and oracle.family == "oracle"
    assert oracle.predict(test).sum() == 10  # >= at the best-F1 point


def test_window_labels_mark_any_anomaly_inside():
    labels = np.array([0, 0, 1, 0, 0, 0, 0, 1])
    starts = np.arange(0, 6)
    np.testing.assert_array_equal(window_labels(labels, starts, 3), [1, 1, 1, 0, 0, 1])


def test_reference_protocol_predicts_strictly_above_the_best_f1_threshold():
    y = np.array([0, 0, 1, 1, 0, 0, 1, 0])
    s = np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.8, 0.7, 0.1])
    metrics, pred, thr = reference_metrics(y, s, 2)
    assert metrics["f1_oracle"] == pytest.approx(2 * 0.75 * 1 / 1.75)  # s >= 0.7: 3 of 4, all 3
    assert thr == 0.7
    np.testing.assert_array_equal(pred, (s > 0.7).astype(int))  # strict: 0.7 itself is not in
    assert set(metrics) >= {"r_auc_roc", "vus_pr", "affiliation_precision", "auc_pr"}


@pytest.mark.parametrize(
    "kind,family",
    [
        ("pot", "label_free"),
        ("spot", "streaming"),
        ("transductive", "transductive"),
        ("oracle", "oracle"),
    ],
)
def test_threshold_kinds_run_end_to_end_and_are_tagged(make_cfg, tmp_path, kind, family):
    result = run(
        make_cfg(f"threshold={kind}", "train.epochs=1"), output_dir=tmp_path / "j", verbose=False
    )
    tags = MlflowClient(result.tracking_uri).get_run(result.run_id).data.tags
    assert tags["threshold.kind"] == kind and tags["threshold.family"] == family
    assert 0.0 <= result.metrics["test/f1"] <= 1.0


def test_reference_protocol_run_logs_ref_metrics_only(make_cfg, tmp_path):
    result = run(
        make_cfg("protocol=reference", "train.epochs=1"), output_dir=tmp_path / "j", verbose=False
    )
    r = MlflowClient(result.tracking_uri).get_run(result.run_id)
    assert r.data.tags["protocol"] == "reference" and r.data.tags["threshold.kind"] == "oracle"
    keys = set(r.data.metrics)
    assert {"ref/f1_oracle", "ref/vus_pr", "ref/r_auc_roc", "ref/affiliation_recall"} <= keys
    assert not any(k.startswith("test/") for k in keys)
    saved = np.load(result.output_dir / "scores.npz")
    n_windows = 2 * (800 - 32 + 1)
    assert saved["window_score"].shape == saved["window_label"].shape == (n_windows,)


def test_every_run_logs_the_full_suite_and_its_cost(make_cfg, tmp_path):
    result = run(make_cfg("train.epochs=1"), output_dir=tmp_path / "j", verbose=False)
    for key in (
        "test/vus_pr",
        "test/vus_roc",
        "test/r_auc_roc",
        "test/r_auc_pr",
        "test/affiliation_precision",
        "test/affiliation_recall",
        "time/metrics_s",
    ):
        assert key in result.metrics and np.isfinite(result.metrics[key]), key


def test_evaluate_recomputes_from_saved_scores_and_logs_to_the_same_run(make_cfg, tmp_path):
    result = run(make_cfg("train.epochs=1"), output_dir=tmp_path / "j", verbose=False)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "madcluster_exp.evaluate",
            f"run={result.output_dir}",
            "metrics=full",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "logged" in out.stdout and result.run_id in out.stdout
    client = MlflowClient(result.tracking_uri)
    history = client.get_metric_history(result.run_id, "test/vus_pr")
    assert len(history) == 2 and history[0].value == pytest.approx(history[1].value, abs=1e-12)
    # By run id, with another window: recomputed, not copied.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "madcluster_exp.evaluate",
            f"run={result.run_id}",
            f"uri={result.tracking_uri}",
            "window=10",
            "log=false",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if l.strip().startswith("test/vus_pr"))
    assert float(line.split()[1]) != pytest.approx(result.metrics["test/vus_pr"], abs=1e-9)


def test_evaluate_names_what_it_could_not_find(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "madcluster_exp.evaluate",
            "run=abc",
            f"uri=sqlite:///{tmp_path / 'x.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "'abc' is neither a run directory nor a run id" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "madcluster_exp.evaluate", "foo"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "unexpected argument 'foo'" in out.stderr


# ------------------------------------------------------------------------- score combination
@pytest.mark.parametrize(
    "overrides, rule",
    [
        ([], "sum"),
        (["protocol=reference"], "product"),  # the reference code multiplies the two scores
        (["protocol=reference", "scoring.combine=sum"], "sum"),  # an explicit choice stays
        (["scoring.combine=product"], "product"),
    ],
)
def test_the_score_combination_defaults_by_protocol_unless_set(overrides, rule):
    from madcluster_exp.config import combine_rule, resolve_defaults
    from tests.conftest import compose_config

    cfg = compose_config(overrides)
    assert combine_rule(cfg) == rule
    assert resolve_defaults(cfg).scoring.combine == rule


def _window_mean_softmax(n: int, seed: int) -> np.ndarray:
    """DCdetector's reference-protocol backbone score: a float32 softmax over each window's
    T = 100 steps, averaged over those steps (exactly 1/T, up to rounding)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, 100, generator=g), dim=-1).mean(dim=1).double().numpy()


def test_product_refuses_a_signed_component():
    from madcluster_exp.scoring import ScoreCombiner

    rng = np.random.default_rng(1)
    nll = rng.normal(-1.0, 2.0, 300)  # a negative log-likelihood takes both signs
    comps = {"backbone": nll, "madcluster": rng.gamma(2.0, size=300)}
    with pytest.raises(
        ValueError,
        match=r"product cannot use the 'backbone' score component.*"
        r"negative values",
    ):
        ScoreCombiner("product").fit(comps)
    shifted = {"backbone": nll - nll.min(), "madcluster": comps["madcluster"]}
    np.testing.assert_allclose(
        ScoreCombiner("product").fit(shifted).combine(shifted),
        shifted["backbone"] * shifted["madcluster"],
    )


def test_sum_refuses_to_standardise_a_component_that_is_rounding_noise():
    from madcluster_exp.scoring import ScoreCombiner

    rng = np.random.default_rng(0)
    noise = _window_mean_softmax(400, 0)
    assert np.abs(noise - 0.01).max() < 1e-8 and noise.std() > 0
    comps = {"backbone": noise, "madcluster": rng.gamma(2.0, size=400)}
    with pytest.raises(
        ValueError,
        match=r"'backbone' score component.*constant up to rounding"
        r".*scoring\.combine=product",
    ):
        ScoreCombiner("sum").fit(comps)
    # The reference's rule keeps it (a product with a constant only rescales), and a component
    # with real spread is standardised as before.
    product = ScoreCombiner("product").fit(comps).combine(comps)
    np.testing.assert_allclose(product, comps["madcluster"] * noise)
    real = {"backbone": rng.normal(5.0, 0.5, 400), "madcluster": comps["madcluster"]}
    combined = ScoreCombiner("sum").fit(real).combine(real)
    assert combined.mean() == pytest.approx(0.0, abs=1e-9)
    assert combined.std() == pytest.approx(
        np.std(sum((v - v.mean()) / v.std() for v in real.values())), rel=1e-12
    )


DCDETECTOR_TINY = [
    "backbone=dcdetector",
    "backbone.window=20",
    "backbone.d_model=16",
    "train.epochs=1",
    "protocol=reference",
]


def test_reference_protocol_multiplies_dcdetectors_scores_by_default(make_cfg, tmp_path):
    result = run(make_cfg(*DCDETECTOR_TINY), output_dir=tmp_path / "j", verbose=False)
    r = MlflowClient(result.tracking_uri).get_run(result.run_id)
    assert r.data.params["scoring.combine"] == "product"  # logged resolved
    assert r.data.params["score_rule"] == "product"
    saved = np.load(result.output_dir / "scores.npz")
    np.testing.assert_allclose(
        saved["window_score"],
        saved["window_component_backbone"] * saved["window_component_madcluster"],
    )
    assert np.abs(saved["window_component_backbone"] - 1 / 20).max() < 1e-7  # 1/T


def test_reference_protocol_with_sum_names_dcdetectors_noise_component(make_cfg, tmp_path):
    with pytest.raises(ValueError, match=r"cannot standardise the 'backbone' score component"):
        run(
            make_cfg(*DCDETECTOR_TINY, "scoring.combine=sum", "tracking=none"),
            output_dir=tmp_path / "j",
            verbose=False,
        )


def test_control_arm_uses_the_backbones_own_score_with_the_plugin_trained(make_cfg, tmp_path):
    result = run(
        make_cfg("backbone=lstm_ae", "madcluster=on_backbone_only", "train.epochs=1"),
        output_dir=tmp_path / "j",
        verbose=False,
    )
    r = MlflowClient(result.tracking_uri).get_run(result.run_id)
    assert r.info.run_name == f"on+backbone_only-{r.data.tags['config_id']}-s0-lstm_ae-synthetic"
    assert r.data.params["score_rule"] == "backbone_only"
    assert r.data.params["madcluster.enabled"] == "True"
    assert "train/loss_cluster" in r.data.metrics  # the plug-in trained
    saved = np.load(result.output_dir / "scores.npz")
    assert "test_component_madcluster" in saved.files
    np.testing.assert_array_equal(saved["test_score"], saved["test_component_backbone"])


def test_control_arm_refuses_a_backbone_without_its_own_score_before_training(make_cfg, tmp_path):
    from madcluster_exp.config import ConfigError

    with pytest.raises(ConfigError, match=r"backbone_only with backbone=deepsvdd"):
        run(make_cfg("madcluster=on_backbone_only"), output_dir=tmp_path / "j", verbose=False)
    # A configuration error found before any work leaves no (FAILED) run behind.
    assert not (tmp_path / "outputs" / "mlflow.db").exists()


# ------------------------------------------------------------ the protocol objects the job asks
def _score_output(window_means: bool, n: int, window: int, seed: int):
    """What a detector's ``score(split)`` returns: point scores, and with window means also
    window scores and starts."""
    rng = np.random.default_rng(seed)
    points = {"backbone": rng.random(n)}
    if not window_means:
        return points
    starts = np.arange(n - window + 1)
    return points, {"backbone": rng.random(len(starts))}, starts


@pytest.mark.parametrize(
    "overrides, cls, kind, key, prefix",
    [
        (["threshold.kind=pot"], PointProtocol, "pot", "test_score", "test/"),
        (["protocol=reference"], ReferenceProtocol, "oracle", "window_score", "ref/"),
        (["protocol=tsbad"], TSBADProtocol, "val_percentile", "test_score", "test/"),
    ],
)
def test_each_protocol_answers_the_jobs_questions_with_its_own_values(
    overrides, cls, kind, key, prefix
):
    cfg = compose_config(["madcluster=off", *overrides])
    protocol = protocol_for(cfg)
    assert type(protocol) is cls
    assert protocol.threshold_kind == effective_threshold_kind(cfg) == kind
    assert protocol.window_means is (cls is ReferenceProtocol)
    assert protocol.tsbad_detectors is (cls is TSBADProtocol)
    assert protocol.score_array_key == key
    n, window = 300, 10
    labels = np.zeros(n, dtype=np.int8)
    labels[100:120] = 1
    evs = []
    for seed in (0, 1):
        val_out = _score_output(protocol.window_means, n, window, seed)
        test_out = _score_output(protocol.window_means, n, window, seed + 10)
        np.testing.assert_array_equal(
            protocol.point_scores(test_out)["backbone"],
            np.random.default_rng(seed + 10).random(n),
        )
        evs.append(protocol.evaluate(val_out, test_out, labels, window, range_window=8))
    scored = n - window + 1 if cls is ReferenceProtocol else n
    assert all(ev.arrays[key].shape == (scored,) for ev in evs)
    assert all(k.startswith((prefix, "threshold/")) for ev in evs for k in ev.metrics)

    pooled, table = protocol.pool(evs, ["a", "b"])
    assert list(table["entity"]) == ["a", "b"]
    np.testing.assert_array_equal(pooled.arrays[key], np.concatenate([e.arrays[key] for e in evs]))
    assert pooled.arrays["threshold"].shape == (2,)
    mean = (evs[0].metrics[f"{prefix}auc_roc"] + evs[1].metrics[f"{prefix}auc_roc"]) / 2
    assert pooled.metrics[f"{prefix}auc_roc_entity_mean"] == pytest.approx(mean)
    assert 0.0 <= pooled.metrics[f"{prefix}auc_roc"] <= 1.0
    assert pooled.metrics["sanity/score_mode_fraction"] == pytest.approx(1 / (2 * scored))


def test_an_unknown_protocol_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="protocol=bogus: expected one of point, reference"):
        protocol_for(SimpleNamespace(protocol="bogus"))


def test_the_job_never_compares_the_protocol_itself():
    """The pipeline asks the protocol object its plan holds; no comparison in it reads
    ``.protocol`` (the one place that does is protocols.protocol_for)."""
    from madcluster_exp.pipeline import collection, job, kinds, outputs, plan, unit

    for module in (job, plan, kinds, unit, collection, outputs):
        tree = ast.parse(inspect.getsource(module))
        compared = [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Compare)
            for operand in (node.left, *node.comparators)
            if isinstance(operand, ast.Attribute) and operand.attr == "protocol"
        ]
        assert compared == [], module.__name__
