"""The fused k = 1 training loss (madcluster.fast.fused, compiled loops in
madcluster.fast.kernels) against the readable composition (madcluster.losses).

The fused op exists only for speed; it must give the composition's values and gradients for
every embedding layout a backbone hands over and every objective and component setting, and
the plug-in must fall back to the composition where the op does not apply.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from madcluster_exp.config import MADClusterConfig
from madcluster_exp.madcluster import build_plugin, fast, losses
from madcluster_exp.madcluster.fast import fused
from madcluster_exp.madcluster.plugin import NU_MARGIN

B, T, F = 4, 7, 5
# How backbones lay out z [B, T, f] in memory: contiguous (a Linear's output), time-major (an
# LSTM's batch-first output), features outer (a Conv1d's output), broadcast (a per-window code).
LAYOUTS = {
    "contiguous": lambda g: torch.randn(B, T, F, generator=g, dtype=torch.float64),
    "time_major": lambda g: torch.randn(T, B, F, generator=g, dtype=torch.float64).transpose(0, 1),
    "features_outer": lambda g: torch.randn(B, F, T, generator=g, dtype=torch.float64).transpose(
        1, 2
    ),
    "broadcast": lambda g: torch.randn(B, 1, F, generator=g, dtype=torch.float64).expand(B, T, F),
}


def _plugin(objective="one-class", components="both", nu_init=0.4, radius=1.5):
    cfg = OmegaConf.structured(MADClusterConfig)
    cfg.objective, cfg.components, cfg.nu_init, cfg.nu_r = objective, components, nu_init, 0.1
    plugin = build_plugin(F, cfg, seed=0).double().train()
    plugin.radius.fill_(radius)
    return plugin


def _leaf_with_layout(z0: torch.Tensor):
    """(leaf, z): z a view over the leaf with z0's shape and strides, so gradients land on a
    tensor the test owns and the layout reaches the plug-in unchanged."""
    if z0.stride(1) == 0:  # a broadcast code
        leaf = z0[:, :1].detach().clone().requires_grad_()
        return leaf, leaf.expand(z0.shape)
    order = sorted(range(z0.dim()), key=lambda d: -z0.stride(d))  # memory order
    leaf = z0.permute(order).detach().clone().contiguous().requires_grad_()
    z = leaf.permute(sorted(range(z0.dim()), key=lambda i: order[i]))
    assert z.shape == z0.shape and z.stride() == z0.stride()
    return leaf, z


def _run(plugin, make_z, loss_fn, weights=(1.0, 0.0, 0.0)):
    """Loss outputs and the gradients of w0 total + w1 mapping + w2 cluster w.r.t. the
    embedding, the center and theta, and the distances sampled for the radius."""
    leaf, z = _leaf_with_layout(make_z(torch.Generator().manual_seed(1)))
    plugin.zero_grad()
    sample_before = len(plugin._dist_sample._chunks)
    out = loss_fn(z)
    objective = (
        weights[0] * out["total"] + weights[1] * out["mapping"] + weights[2] * out["cluster"]
    )
    objective.backward()
    grads = [leaf.grad, plugin.center.grad, plugin.nu_raw.grad]
    grads = [torch.zeros(()) if x is None else x.clone() for x in grads]
    return out, grads, plugin._dist_sample._chunks[sample_before:]


def _assert_same(a, b, tol=1e-10):
    (out_a, grads_a, sample_a), (out_b, grads_b, sample_b) = a, b
    for key in ("total", "mapping", "cluster"):
        torch.testing.assert_close(out_a[key], out_b[key], rtol=tol, atol=tol)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb.to(ga.dtype), rtol=1e-9, atol=1e-12)
    assert len(sample_a) == len(sample_b)
    for sa, sb in zip(sample_a, sample_b):
        torch.testing.assert_close(sa, sb)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("objective", ["one-class", "soft-boundary"])
@pytest.mark.parametrize("components", ["both", "mapping", "clustering"])
def test_fused_loss_equals_the_composition(layout, objective, components):
    plugin = _plugin(objective, components)
    _assert_same(
        _run(plugin, LAYOUTS[layout], plugin._loss),
        _run(plugin, LAYOUTS[layout], plugin._composed_loss),
    )


@pytest.mark.parametrize("weights", [(0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.7, -1.3, 2.1)])
@pytest.mark.parametrize("objective", ["one-class", "soft-boundary"])
def test_gradients_through_the_logged_means_equal_the_composition(weights, objective):
    """mapping and cluster are returned for logging; differentiating them must still work."""
    plugin = _plugin(objective)
    _assert_same(
        _run(plugin, LAYOUTS["contiguous"], plugin._loss, weights),
        _run(plugin, LAYOUTS["contiguous"], plugin._composed_loss, weights),
    )


@pytest.mark.parametrize("theta", [-6.0, -0.5, 0.3, 5.0])
def test_clamped_steps_and_extreme_thresholds_equal_the_composition(theta):
    """A zero embedding (the cosine's clamp), one exactly opposite the center (q clamps at
    Q_EPS) and one equal to it (|z - c|^2 at the clamp at 0), with nu near either bound."""
    plugin = _plugin()
    with torch.no_grad():
        plugin.nu_raw.fill_(theta)

    def make(g):
        z = torch.randn(B, T, F, generator=g, dtype=torch.float64)
        z[0, 0] = 0.0
        z[1, 1] = -2.0 * plugin.center.detach()
        z[2, 2] = plugin.center.detach()
        return z

    _assert_same(_run(plugin, make, plugin._loss), _run(plugin, make, plugin._composed_loss))


@pytest.mark.parametrize("soft", [False, True])
def test_fused_loss_passes_gradcheck(soft):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 4, F, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(F, generator=g, dtype=torch.float64, requires_grad=True)
    theta = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    # soft-boundary: R^2 among the distances (none exactly at it, where the hinge has a kink),
    # so the hinge is active for some steps only
    r2 = 0.97 * ((z.detach() - c.detach()) ** 2).sum(-1).median() if soft else None

    def total(z, c, theta):
        return fused.paper_loss(z, c, theta, 0.01, NU_MARGIN, r2, 0.1)[:3]

    assert torch.autograd.gradcheck(total, (z, c, theta))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_no_grad_terms_equal_the_composed_terms(layout):
    """Scoring and validation take the fused forward; it must score exactly as the composition."""
    plugin = _plugin()
    z = LAYOUTS[layout](torch.Generator().manual_seed(5))
    with torch.no_grad():
        fast = plugin.terms(z)
    composed = plugin.terms(z.detach().requires_grad_())  # with gradients: the composition
    assert fast[0].shape == fast[1].shape == (B, T)
    torch.testing.assert_close(fast[0], composed[0].detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast[1], composed[1].detach(), rtol=1e-12, atol=1e-12)


def test_float32_stays_float32_and_matches_float64():
    """The kernels compute in float64 and store z's dtype: float32 in, float32 out, equal to
    the float64 result up to float32 rounding."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(8, 6, 16, generator=g, dtype=torch.float64)
    c = torch.randn(16, generator=g, dtype=torch.float64)
    theta = torch.tensor(0.2, dtype=torch.float64)
    results = {}
    for dtype in (torch.float32, torch.float64):
        inputs = [t.to(dtype).requires_grad_() for t in (z, c, theta)]
        total, mapping, cluster, dist2 = fused.paper_loss(*inputs, 0.01, NU_MARGIN, distances=True)
        assert total.dtype == mapping.dtype == cluster.dtype == dist2.dtype == dtype
        grads = torch.autograd.grad(total, inputs)
        assert all(gr.dtype == dtype for gr in grads)
        results[dtype] = (total, mapping, cluster, dist2, *grads)
    for a, b in zip(results[torch.float32], results[torch.float64]):
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("theta", [-30.0, -1.0, 0.0, 2.5, 30.0])
def test_threshold_scalars_equal_the_tensor_definitions(theta):
    """The kernels' nu, 1 - nu and f1 slope are the plug-in's (losses.bounded_nu, f1_slope);
    their derivatives are what autograd finds for those definitions."""
    t = torch.tensor(theta, dtype=torch.float64)
    nu, omn, slope, dslope, dnu_dtheta = fused.kernels().threshold(theta, NU_MARGIN)
    t_nu, t_omn = losses.bounded_nu(t, NU_MARGIN)
    # slope as a function of nu and 1 - nu taken apart, as the kernels differentiate it
    nu_leaf, omn_leaf = t_nu.detach().requires_grad_(), t_omn.detach().requires_grad_()
    t_slope = losses.f1_slope(nu_leaf, omn_leaf)
    d_nu, d_omn = torch.autograd.grad(t_slope, (nu_leaf, omn_leaf))
    # d nu/d theta in closed form: autograd's sigmoid backward, s (1 - s), loses digits to
    # cancellation once s nears 1 (theta = 30)
    e = math.exp(-abs(theta))
    d_theta = torch.tensor((1.0 - 2.0 * NU_MARGIN) * e / (1.0 + e) ** 2, dtype=torch.float64)
    for got, want in (
        (nu, t_nu),
        (omn, t_omn),
        (slope, t_slope),
        (dslope, d_nu - d_omn),
        (dnu_dtheta, d_theta),
    ):
        assert got == pytest.approx(float(want.detach()), rel=1e-12, abs=1e-300)


def test_distances_are_returned_only_when_asked():
    z = torch.randn(2, 3, F)
    c, theta = torch.randn(F), torch.tensor(0.0)
    assert fused.paper_loss(z, c, theta, 0.01, NU_MARGIN)[3] is None
    dist2 = fused.paper_loss(z, c, theta, 0.01, NU_MARGIN, distances=True)[3]
    torch.testing.assert_close(dist2, ((z - c) ** 2).sum(-1))


def test_a_nan_embedding_gives_a_nan_loss():
    """The training loop's NaN guard must see a diverged backbone through the plug-in's loss
    (as through the composition) and its gradients."""
    plugin = _plugin()
    z = torch.randn(B, T, F, dtype=torch.float64)
    z[1, 2, 3] = math.nan
    z.requires_grad_()
    out = plugin._loss(z)
    assert math.isnan(out["total"].item()) and math.isnan(out["mapping"].item())
    assert math.isnan(out["cluster"].item())
    with torch.no_grad():
        dist2, cluster = plugin.terms(z)
    assert math.isnan(float(dist2[1, 2])) and math.isnan(float(cluster[1, 2]))
    assert torch.isfinite(dist2[0]).all()


def test_the_op_applies_to_cpu_float_embeddings_only():
    assert fast.use_fast_path(torch.zeros(2, 3, F), "paper")
    assert fast.use_fast_path(torch.zeros(2, 3, F, dtype=torch.float64), "paper", k=1)
    assert not fast.use_fast_path(torch.zeros(2, 3, F, dtype=torch.bfloat16), "paper")
    assert not fast.use_fast_path(torch.zeros(2, 3, F, device="meta"), "paper")
    assert not fast.use_fast_path(torch.zeros(6, F), "paper")
    assert not fast.use_fast_path(torch.zeros(2, 3, F), "reference")
    assert not fast.use_fast_path(torch.zeros(2, 3, F), "paper", k=3)
    assert not fast.use_fast_path(nn.Parameter(torch.zeros(2, 3, F)), "paper")  # a subclass
    with fast.composition_only():  # the MAC count must see the plug-in's matmuls
        assert not fast.use_fast_path(torch.zeros(2, 3, F), "paper")
    assert fast.use_fast_path(torch.zeros(2, 3, F), "paper")  # and only inside the block


def test_the_mac_count_sees_the_plugins_matmuls_on_a_fast_path_embedding():
    """count_macs switches the plug-in to the composition: z . c over B x T steps and c . c."""
    from madcluster_exp.detector.complexity import count_macs

    plugin = _plugin().float().eval()
    z = torch.randn(B, T, F)
    assert fast.use_fast_path(z, "paper")
    with torch.no_grad():
        assert count_macs(lambda: plugin.score(z), plugin) == B * T * F + F


def test_without_numba_the_plugin_warns_and_uses_the_composition(monkeypatch):
    """numba is a declared dependency; if it cannot be imported the plug-in still trains, on
    the composition, and says so once."""
    monkeypatch.setattr(fused, "_KERNELS", None)
    monkeypatch.setitem(sys.modules, "numba", None)  # makes `import numba` fail
    monkeypatch.delitem(sys.modules, "madcluster_exp.madcluster.fast.kernels", raising=False)
    monkeypatch.delattr(fast, "kernels", raising=False)
    with pytest.warns(RuntimeWarning, match="numba is not importable"):
        assert not fast.use_fast_path(torch.zeros(2, 3, F), "paper")
    plugin = _plugin()
    calls = []
    monkeypatch.setattr(fast, "paper_loss", lambda *a, **k: calls.append(a))
    _assert_same(
        _run(plugin, LAYOUTS["contiguous"], plugin._loss),
        _run(plugin, LAYOUTS["contiguous"], plugin._composed_loss),
    )
    assert not calls


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_loss_terms_and_score_all_follow_the_one_selection_rule(monkeypatch, variant):
    """Training loss, no-grad terms and score take the compiled op exactly where
    fast.use_fast_path says so (paper variant on a CPU float embedding), and not inside
    composition_only()."""
    cfg = OmegaConf.structured(MADClusterConfig)
    cfg.variant = variant
    plugin = build_plugin(F, cfg, seed=0).train()
    calls = []

    def spy(name):
        real = getattr(fast, name)

        def call(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        return call

    for name in ("paper_loss", "paper_terms"):
        monkeypatch.setattr(fast, name, spy(name))
    z = torch.randn(B, T, F, requires_grad=True)
    plugin.loss(z)["total"].backward()
    with torch.no_grad():
        plugin.terms(z)
        plugin.score(z)
    expected = ["paper_loss", "paper_terms", "paper_terms"] if variant == "paper" else []
    assert calls == expected
    calls.clear()
    with fast.composition_only(), torch.no_grad():
        plugin.score(z)
    assert calls == []
