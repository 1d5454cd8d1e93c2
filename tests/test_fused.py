"""The fused k = 1 training loss (madcluster.fused) against the readable composition.

The fused op exists only for speed; it must give the composition's values and gradients for
every embedding layout a backbone hands over, every objective and component setting, on both of
its array paths (numpy on CPU, torch elsewhere; the torch path is forced here on CPU, and runs
for real in tests/test_cuda.py).
"""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from madcluster_exp.config import MADClusterConfig
from madcluster_exp.madcluster import build_plugin, fused
from madcluster_exp.madcluster.plugin import NU_MARGIN

B, T, F = 4, 7, 5
# How backbones lay out z [B, T, f] in memory; "features_outer" (a Conv1d's output) takes the
# general layout path, the others the dense-rows path.
LAYOUTS = {
    "contiguous": lambda g: torch.randn(B, T, F, generator=g, dtype=torch.float64),
    "time_major": lambda g: torch.randn(T, B, F, generator=g, dtype=torch.float64).transpose(0, 1),
    "features_outer": lambda g: torch.randn(B, F, T, generator=g, dtype=torch.float64).transpose(1, 2),
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
    objective = weights[0] * out["total"] + weights[1] * out["mapping"] + weights[2] * out["cluster"]
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


def test_layouts_take_the_expected_path():
    g = torch.Generator().manual_seed(0)
    for name, make in LAYOUTS.items():
        steps = fused._Steps(make(g))
        assert (steps.rows is None) == (name == "features_outer"), name
        assert steps.reps == (T if name == "broadcast" else 1)


@pytest.fixture(params=["numpy", "torch"])
def math_path(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.setattr(fused, "_math_for", lambda t: fused._TorchMath)
    return request.param


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("objective", ["one-class", "soft-boundary"])
@pytest.mark.parametrize("components", ["both", "mapping", "clustering"])
def test_fused_loss_equals_the_composition(layout, objective, components, math_path):
    plugin = _plugin(objective, components)
    _assert_same(_run(plugin, LAYOUTS[layout], plugin._loss),
                 _run(plugin, LAYOUTS[layout], plugin._composed_loss))


@pytest.mark.parametrize("weights", [(0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.7, -1.3, 2.1)])
def test_gradients_through_the_logged_means_equal_the_composition(weights, math_path):
    """mapping and cluster are returned for logging; differentiating them must still work."""
    plugin = _plugin()
    _assert_same(_run(plugin, LAYOUTS["contiguous"], plugin._loss, weights),
                 _run(plugin, LAYOUTS["contiguous"], plugin._composed_loss, weights))


@pytest.mark.parametrize("theta", [-6.0, -0.5, 0.3, 5.0])
def test_clamped_steps_and_extreme_thresholds_equal_the_composition(theta, math_path):
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


def test_fused_loss_passes_gradcheck_on_both_paths(math_path):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 4, F, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(F, generator=g, dtype=torch.float64, requires_grad=True)
    theta = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def total(z, c, theta):
        return fused.paper_loss(z, c, theta, 0.01, NU_MARGIN)[:3]
    assert torch.autograd.gradcheck(total, (z, c, theta))


def test_no_grad_terms_equal_the_composed_terms(math_path):
    """Scoring and validation take the fused forward; it must score exactly as the composition."""
    plugin = _plugin()
    z = torch.randn(B, T, F, dtype=torch.float64)
    with torch.no_grad():
        fast = plugin.terms(z)
    composed = plugin.terms(z.requires_grad_())  # with gradients: the readable composition
    torch.testing.assert_close(fast[0], composed[0].detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast[1], composed[1].detach(), rtol=1e-12, atol=1e-12)


def test_float32_paths_agree_and_keep_float32(monkeypatch):
    """numpy on the host must not promote float32 to float64, and both paths agree."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(8, 6, 16, generator=g, requires_grad=True)
    c = torch.randn(16, generator=g, requires_grad=True)
    theta = torch.tensor(0.2, requires_grad=True)
    results = []
    for path in ("numpy", "torch"):
        if path == "torch":
            monkeypatch.setattr(fused, "_math_for", lambda t: fused._TorchMath)
        total, mapping, cluster, dist2 = fused.paper_loss(z, c, theta, 0.01, NU_MARGIN,
                                                          distances=True)
        assert total.dtype == mapping.dtype == cluster.dtype == dist2.dtype == torch.float32
        grads = torch.autograd.grad(total, (z, c, theta))
        assert all(gr.dtype == torch.float32 for gr in grads)
        results.append((total, dist2, grads))
    (t_a, d_a, g_a), (t_b, d_b, g_b) = results
    torch.testing.assert_close(t_a, t_b)
    torch.testing.assert_close(d_a, d_b)
    for a, b in zip(g_a, g_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("theta", [-30.0, -1.0, 0.0, 2.5, 30.0])
def test_threshold_scalars_on_the_host_equal_the_tensor_ones(theta):
    t = torch.tensor(theta, dtype=torch.float64)
    host = fused.threshold_constants(t, NU_MARGIN, host=True)
    device = fused.threshold_constants(t, NU_MARGIN, host=False)
    for a, b in zip(host, device):
        assert isinstance(a, float)
        assert a == pytest.approx(float(b), rel=1e-12, abs=1e-300)


def test_distances_are_returned_only_when_asked():
    z = torch.randn(2, 3, F)
    c, theta = torch.randn(F), torch.tensor(0.0)
    assert fused.paper_loss(z, c, theta, 0.01, NU_MARGIN)[3] is None
    dist2 = fused.paper_loss(z, c, theta, 0.01, NU_MARGIN, distances=True)[3]
    torch.testing.assert_close(dist2, ((z - c) ** 2).sum(-1))
