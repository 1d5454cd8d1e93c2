"""The plug-in's objective: hand-computed values, gradients, the sign of dL/dnu, nu's bounds."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from madcluster_exp.config import MADClusterConfig
from madcluster_exp.madcluster import MADCluster, MultiMADCluster, build_plugin, losses


def _cfg(**kw):
    cfg = OmegaConf.structured(MADClusterConfig)
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def _od_by_hand(q: float, nu: float, tau: float) -> float:
    """The OD loss of one step written out from method.md, in plain floats."""
    p = 1.0 if q >= nu else 0.0
    ps = p * (1 - tau) + (1 - p) * tau
    f1 = (1 - nu ** (1 - nu)) / (1 - nu) * (q - 1) + 1
    f2 = q ** (1 - nu)
    return -(ps * math.log(f1) + (1 - ps) * math.log(f2))


@pytest.mark.parametrize(
    "q,nu,tau",
    [
        (0.9, 0.5, 0.01),
        (0.3, 0.5, 0.01),
        (0.5, 0.5, 0.01),
        (0.99, 0.8, 0.0),
        (0.05, 0.2, 0.1),
        (0.7, 0.95, 0.01),
        (0.999, 0.001, 0.01),
    ],
)
def test_od_loss_matches_hand_computation(q, nu, tau):
    qt = torch.tensor([[q]], dtype=torch.float64)
    nut = torch.tensor(nu, dtype=torch.float64)
    got = losses.od_loss_terms(qt, nut, 1 - nut, tau).item()
    assert got == pytest.approx(_od_by_hand(q, nu, tau), rel=1e-12, abs=1e-12)


def test_od_loss_hard_target_switches_at_nu():
    nu = torch.tensor(0.6, dtype=torch.float64)
    below = losses.od_loss_terms(torch.tensor([[0.59]], dtype=torch.float64), nu, 1 - nu, 0.0)
    above = losses.od_loss_terms(torch.tensor([[0.61]], dtype=torch.float64), nu, 1 - nu, 0.0)
    # tau = 0: below nu only f2 counts, above only f1.
    assert below.item() == pytest.approx(-(0.4 * math.log(0.59)), rel=1e-12)
    s = (1 - 0.6**0.4) / 0.4
    assert above.item() == pytest.approx(-math.log(s * (0.61 - 1) + 1), rel=1e-12)


def test_reference_loss_matches_hand_computation():
    q, nu, tau = 0.7, 0.5, 0.01
    s = (1 - nu ** (1 - nu)) / (1 - nu)
    expected = -math.log(q) - (1 - tau) * math.log(s * (q - 1) + 1) - tau * (1 - nu) * math.log(q)
    got = losses.reference_loss_terms(
        torch.tensor([[q]], dtype=torch.float64), torch.tensor(nu, dtype=torch.float64), tau
    ).item()
    assert got == pytest.approx(expected, rel=1e-12)


def test_total_loss_is_log_of_mean_window_sums_like_the_reference():
    torch.manual_seed(0)
    plugin = MADCluster(6, _cfg(), torch.Generator().manual_seed(0)).double()
    z = torch.randn(3, 5, 6, dtype=torch.float64)
    out = plugin.loss(z)
    dist = ((z - plugin.center.detach()) ** 2).sum(-1)
    c = plugin.center.detach()
    q = (1 + torch.nn.functional.cosine_similarity(z, c.expand_as(z), dim=-1)) / 2
    nu = plugin.nu.item()
    cluster = torch.tensor(
        [[_od_by_hand(float(v), nu, 0.01) for v in row] for row in q], dtype=torch.float64
    )
    expected = math.log(float((dist.sum(1) + cluster.sum(1)).mean()) + 1e-8)
    assert out["total"].item() == pytest.approx(expected, rel=1e-9)
    assert out["mapping"].item() == pytest.approx(float(dist.sum(1).mean()), rel=1e-12)
    assert out["cluster"].item() == pytest.approx(float(cluster.sum(1).mean()), rel=1e-9)


def test_gradients_reach_center_and_nu():
    plugin = build_plugin(8, _cfg(), seed=0)
    z = torch.randn(4, 10, 8)
    plugin.loss(z)["total"].backward()
    assert plugin.center.grad is not None and plugin.center.grad.abs().sum() > 0
    assert plugin.nu_raw.grad is not None and plugin.nu_raw.grad.abs() > 0


@pytest.mark.parametrize("nu", [0.05, 0.3, 0.5, 0.7, 0.95])
def test_dL_dnu_is_negative(nu):
    """Both by autograd and by central finite differences, for q on both sides of nu."""
    q = torch.linspace(0.02, 0.999, 60, dtype=torch.float64).reshape(1, -1)
    nu_t = torch.tensor(nu, dtype=torch.float64, requires_grad=True)
    # Fix the hard target at nu so the finite difference does not cross the switch.
    loss = losses.od_loss_terms(q, nu_t, 1 - nu_t, 0.01).sum()
    (grad,) = torch.autograd.grad(loss, nu_t)
    assert grad.item() < 0
    # Finite differences with the hard target held at its value for nu (the target carries no
    # gradient, so it must not switch between the two evaluation points).
    h = 1e-6
    p_fixed = (q >= nu).double()
    ps = p_fixed * 0.99 + (1 - p_fixed) * 0.01

    def loss_at(v: float) -> float:
        s = (1 - v ** (1 - v)) / (1 - v)
        return (-(ps * torch.log(s * (q - 1) + 1) + (1 - ps) * (1 - v) * torch.log(q))).sum().item()

    fd = (loss_at(nu + h) - loss_at(nu - h)) / (2 * h)
    assert fd < 0
    assert fd == pytest.approx(grad.item(), rel=1e-5)


def test_dL_dq_is_negative():
    nu = torch.tensor(0.5, dtype=torch.float64)
    q = torch.linspace(0.02, 0.999, 50, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(losses.od_loss_terms(q.reshape(1, -1), nu, 1 - nu, 0.01).sum(), q)
    assert (g < 0).all()


@pytest.mark.parametrize("lr", [1e3, 1e6])
def test_nu_never_leaves_open_unit_interval_with_huge_lr(lr):
    torch.manual_seed(0)
    plugin = build_plugin(8, _cfg(nu_init=0.5), seed=0)
    opt = torch.optim.Adam(plugin.nu_parameters(), lr=lr, amsgrad=True)
    z = torch.randn(16, 20, 8)
    seen = []
    for _ in range(200):
        opt.zero_grad()
        loss = plugin.loss(z)["total"]
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        nu = plugin.nu.item()
        seen.append(nu)
        assert 0.0 < nu < 1.0
    # The loss pushes nu upward (dL/dnu < 0): it must have moved toward 1 and stayed below it.
    assert seen[-1] > 0.9


def test_nu_starts_at_nu_init():
    assert build_plugin(4, _cfg(nu_init=0.3), seed=0).nu.item() == pytest.approx(0.3, abs=1e-6)


def test_center_init_is_he_normal_and_independent_of_global_rng():
    torch.manual_seed(123)
    a = build_plugin(4096, _cfg(), seed=5).center.detach()
    torch.manual_seed(999)
    b = build_plugin(4096, _cfg(), seed=5).center.detach()
    assert torch.equal(a, b)
    assert float(a.std()) == pytest.approx(math.sqrt(2 / 4096), rel=0.05)


def test_k_greater_than_one_target_rows_sum_to_one():
    plugin = build_plugin(8, _cfg(k=4), seed=0)
    assert isinstance(plugin, MultiMADCluster)
    z = torch.randn(5, 12, 8)
    q, p = plugin.assignment_and_target(z)
    assert q.shape == p.shape == (5, 12, 4)
    torch.testing.assert_close(q.sum(-1), torch.ones(5, 12))
    torch.testing.assert_close(p.sum(-1), torch.ones(5, 12))
    assert (p >= 0).all()


def test_k_greater_than_one_loss_score_and_hand_values():
    plugin = build_plugin(2, _cfg(k=2), seed=0).double()
    with torch.no_grad():
        plugin.centers.copy_(torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=torch.float64))
    z = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]], dtype=torch.float64)  # one window, T = 2
    # Student-t by hand: d = [[0, 9], [1, 4]]
    inv = torch.tensor([[1.0, 0.1], [0.5, 0.2]], dtype=torch.float64)
    q = inv / inv.sum(1, keepdim=True)
    f = q.sum(0)
    w = q**2 / f
    p = w / w.sum(1, keepdim=True)
    kl = (p * (p / q).log()).sum(1)
    nearest = torch.tensor([0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(plugin.score(z)[0], kl + nearest)
    all_centers = torch.tensor([0.0 + 9.0, 1.0 + 4.0], dtype=torch.float64)  # eq. 27: every c_j
    out = plugin.loss(z)
    assert out["total"].item() == pytest.approx(math.log(float((kl + all_centers).sum()) + 1e-8))
    out["total"].backward()
    assert plugin.centers.grad.abs().sum() > 0


def test_soft_boundary_radius_comes_from_training_distances_only():
    plugin = build_plugin(4, _cfg(objective="soft-boundary", nu_r=0.1), seed=0)
    plugin.train()
    z_train = torch.randn(8, 50, 4)
    plugin.loss(z_train)
    plugin.eval()
    plugin.loss(torch.randn(8, 50, 4) * 100)  # eval-mode (validation/test) data is ignored
    logs = plugin.on_epoch_end(0)
    dist = ((z_train - plugin.center.detach()) ** 2).sum(-1).sqrt().flatten()
    expected = float(torch.quantile(dist.double(), 0.9))
    assert logs["madcluster/radius"] == pytest.approx(expected, rel=1e-5)
    r2 = plugin.radius**2
    d2 = torch.tensor([[0.0, float(r2) + 2.0]])
    torch.testing.assert_close(
        plugin.mapping_terms(d2), torch.stack([r2, r2 + 2.0 / 0.1]).reshape(1, 2)
    )


@pytest.mark.parametrize("k", [1, 3])
def test_soft_boundary_score_is_the_squared_distance_not_the_flat_mapping(k):
    plugin = build_plugin(4, _cfg(objective="soft-boundary", nu_r=0.1, k=k), seed=0)
    plugin.train()
    plugin.loss(torch.randn(8, 50, 4))
    plugin.on_epoch_end(0)  # fits R from those training distances
    plugin.eval()
    r = float(plugin.radius.reshape(-1)[0])  # k > 1: one radius per center, center 0's here
    assert r > 0
    centers = plugin.center.detach()[None] if k == 1 else plugin.centers.detach()
    # Two steps inside the radius at different distances, one outside.
    near = centers[0] + torch.tensor([0.1 * r, 0.0, 0.0, 0.0])
    mid = centers[0] + torch.tensor([0.0, 0.6 * r, 0.0, 0.0])
    far = centers[0] + torch.tensor([0.0, 0.0, 3.0 * r, 0.0])
    z = torch.stack([near, mid, far])[None]  # [1, 3, 4]
    dist2 = ((z[..., None, :] - centers) ** 2).sum(-1).min(-1).values
    score = plugin.score(z)
    torch.testing.assert_close(score, plugin.cluster_terms(z) + dist2)
    mapping = plugin.mapping_terms(dist2)
    if k == 1:  # the mapping (the loss) cannot tell the two inside steps apart; the score can
        assert mapping[0, 0] == mapping[0, 1] == pytest.approx(r * r)
    distance_only = build_plugin(
        4, _cfg(objective="soft-boundary", k=k, components="mapping"), seed=0
    )
    distance_only.load_state_dict(plugin.state_dict())
    s = distance_only.eval().score(z)[0]
    torch.testing.assert_close(s, dist2[0])
    assert s[0] < s[1] < s[2]


def test_reference_variant_scores_one_value_per_window():
    plugin = build_plugin(4, _cfg(variant="reference"), seed=0)
    s = plugin.score(torch.randn(3, 7, 4))
    assert s.shape == (3, 7)
    assert torch.all(s == s[:, :1])


@pytest.mark.parametrize("components", ["mapping", "clustering", "both"])
def test_component_ablation_selects_loss_and_score_terms(components):
    plugin = build_plugin(6, _cfg(components=components), seed=0)
    z = torch.randn(3, 5, 6)
    out = plugin.loss(z)
    parts = {
        "mapping": out["mapping"],
        "clustering": out["cluster"],
        "both": out["mapping"] + out["cluster"],
    }
    assert out["total"].item() == pytest.approx(math.log(parts[components].item() + 1e-8), rel=1e-5)
    dist = ((z - plugin.center.detach()) ** 2).sum(-1)
    cluster = plugin.cluster_terms(z)
    expected = {"mapping": dist, "clustering": cluster, "both": dist + cluster}[components]
    torch.testing.assert_close(plugin.score(z), expected)


def test_zero_embedding_rows_keep_loss_and_gradients_finite():
    plugin = build_plugin(4, _cfg(), seed=0)
    z = torch.randn(2, 6, 4)
    z[0, 2] = 0.0  # e.g. a ReLU output that is all zero at one step
    z.requires_grad_(True)
    out = plugin.loss(z)
    out["total"].backward()
    assert torch.isfinite(out["total"]) and torch.isfinite(z.grad).all()
    assert torch.isfinite(plugin.center.grad).all()


# Memory layouts backbones hand over: contiguous, time-major (an LSTM's batch-first output),
# features-outermost (a Conv1d's output viewed as [B, T, f]).
LAYOUTS = {"contiguous": (0, 1, 2), "time_major": (1, 0, 2), "features_outer": (0, 2, 1)}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_fused_dot_and_norm_values_and_gradients_in_every_layout(layout):
    from madcluster_exp.madcluster.fast.memory_order import dot_and_squared_norm

    perm = LAYOUTS[layout]
    shape = (3, 4, 5)
    stored = torch.randn([shape[i] for i in perm], dtype=torch.float64)
    inverse = sorted(range(3), key=lambda i: perm[i])
    z = stored.permute(inverse).requires_grad_()  # a [3, 4, 5] view over that memory
    assert z.shape == shape and (layout == "contiguous") == z.is_contiguous()
    c = torch.randn(5, dtype=torch.float64, requires_grad=True)
    zc, zz = dot_and_squared_norm(z, c)
    torch.testing.assert_close(zc, (z * c).sum(-1))
    torch.testing.assert_close(zz, (z * z).sum(-1))
    assert torch.autograd.gradcheck(lambda a, b: dot_and_squared_norm(a, b), (z, c))


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(3, 8, 5)[:, ::2],
        lambda: torch.randn(3, 1, 5).expand(3, 4, 5),
        lambda: torch.randn(5, 3, 4).permute(1, 2, 0)[:, 1:],
    ],
    ids=["gapped", "broadcast", "permuted_slice"],
)
def test_fused_dot_and_norm_on_gapped_and_overlapping_views(make):
    from madcluster_exp.madcluster.fast.memory_order import dot_and_squared_norm

    z = make().double().requires_grad_()
    c = torch.randn(5, dtype=torch.float64, requires_grad=True)
    zc, zz = dot_and_squared_norm(z, c)
    (1.3 * zc.sum() + zz.square().sum()).backward()
    z2, c2 = z.detach().clone().requires_grad_(), c.detach().clone().requires_grad_()
    (1.3 * (z2 @ c2).sum() + (z2 * z2).sum(-1).square().sum()).backward()
    torch.testing.assert_close(zc, z2 @ c2)
    torch.testing.assert_close(z.grad, z2.grad)
    torch.testing.assert_close(c.grad, c2.grad)


def test_time_broadcast_embeddings_give_the_same_terms_as_materialised_ones():
    plugin = build_plugin(6, _cfg(), seed=0)
    code = torch.randn(4, 1, 6)
    broadcast = code.expand(-1, 9, -1)
    assert broadcast.stride(1) == 0
    a, b = plugin.terms(broadcast), plugin.terms(broadcast.contiguous())
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    torch.testing.assert_close(
        plugin.loss(broadcast)["total"], plugin.loss(broadcast.contiguous())["total"]
    )


@pytest.mark.slow  # compiles (seconds) and needs a C++ compiler: `make test-all`
@pytest.mark.parametrize("objective", ["one-class", "soft-boundary"])
def test_compiled_loss_equals_the_eager_loss_with_gradients(objective):
    eager = build_plugin(8, _cfg(objective=objective), seed=0)
    compiled = build_plugin(8, _cfg(objective=objective, compile=True), seed=0)
    for plugin in (eager, compiled):
        plugin.train()
    zs = torch.randn(2, 4, 10, 8)
    results = []
    for plugin in (eager, compiled):
        grads = []
        for z in zs:  # two steps: the second reuses the compiled graph
            z = z.clone().requires_grad_()
            out = plugin.loss(z)
            out["total"].backward()
            grads.append((out["total"].detach(), z.grad, plugin.center.grad.clone()))
            plugin.center.grad = None
        results.append(grads)
    assert compiled._compiled_loss is not None and eager._compiled_loss is None
    for (t_a, gz_a, gc_a), (t_b, gz_b, gc_b) in zip(*results):
        torch.testing.assert_close(t_a, t_b)
        torch.testing.assert_close(gz_a, gz_b)
        torch.testing.assert_close(gc_a, gc_b)


@pytest.mark.parametrize("warmup,first_fit", [(0, 0), (2, 2)])
def test_deepsvdd_and_the_plugin_fit_their_radius_by_one_warmup_rule(warmup, first_fit):
    """radius_due is the one rule: epochs are 0-based and the radius is fitted at the end of
    epoch index ``warmup`` and after (warm-up 0: after epoch 0; warm-up 2: first at epoch 2)."""
    from madcluster_exp.backbones.deepsvdd import DeepSVDD
    from madcluster_exp.utils.nn import radius_due
    from tests.conftest import compose_config

    assert [radius_due(e, warmup) for e in range(4)] == [e >= first_fit for e in range(4)]
    cfg = compose_config(
        [
            "backbone.objective=soft-boundary",
            f"backbone.radius_warmup_epochs={warmup}",
            "madcluster.objective=soft-boundary",
            f"madcluster.radius_warmup_epochs={warmup}",
        ]
    )
    torch.manual_seed(0)
    backbone = DeepSVDD(3, cfg.backbone).train()
    plugin = build_plugin(backbone.embed_dim, cfg.madcluster, seed=0).train()
    x = torch.randn(4, 16, 3)
    fitted = {"deepsvdd": [], "plugin": []}
    for epoch in range(4):
        out = backbone(x)
        backbone.loss(x, out)  # each samples its training distances
        plugin.loss(out.z)
        backbone.on_epoch_end(epoch)
        plugin.on_epoch_end(epoch)
        fitted["deepsvdd"].append(float(backbone.radius) > 0)
        fitted["plugin"].append(float(plugin.radius) > 0)
    expected = [e >= first_fit for e in range(4)]
    assert fitted == {"deepsvdd": expected, "plugin": expected}
