"""k > 1 against the appendix's equations written out step by step (eqs. 25-28): the mapping
term over all k centers, the DEC target per window (paper) or over the batch (reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from madcluster_exp.config import MADClusterConfig
from madcluster_exp.madcluster import MultiMADCluster, build_plugin

B, T, F, K = 3, 5, 4, 3


def _plugin(**kw) -> MultiMADCluster:
    cfg = OmegaConf.structured(MADClusterConfig)
    cfg.k = K
    for key, value in kw.items():
        cfg[key] = value
    plugin = build_plugin(F, cfg, seed=0).double()
    assert isinstance(plugin, MultiMADCluster)
    return plugin


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, F, generator=g, dtype=torch.float64), torch.randn(
        K, F, generator=g, dtype=torch.float64
    )


def _by_hand(z, c, over_batch: bool, detach: bool):
    """Per window b and step t, in loops: d_btj = ||h - c_j||^2; q_btj = (1 + d)^-1 /
    sum_j' (1 + d_btj')^-1 (eq. 25); f_j = sum_t q_btj (eq. 26) or sum_b sum_t q_btj (the
    official ``q.sum(dim=(0, 1))``); p_btj = (q^2 / f_j) / sum_j' (q_btj'^2 / f_j');
    KL_bt = sum_j p log(p / q); mapping_bt = sum_j d_btj (eq. 27)."""
    d = [[[((z[b, t] - c[j]) ** 2).sum() for j in range(K)] for t in range(T)] for b in range(B)]
    q = [[[None] * K for _ in range(T)] for _ in range(B)]
    for b in range(B):
        for t in range(T):
            norm = sum(1 / (1 + d[b][t][j]) for j in range(K))
            for j in range(K):
                q[b][t][j] = (1 / (1 + d[b][t][j])) / norm
    kl = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in range(T):
            windows = range(B) if over_batch else [b]
            freq = [sum(q[bb][tt][j] for bb in windows for tt in range(T)) for j in range(K)]
            if detach:
                freq = [f.detach() for f in freq]
                qd = [q[b][t][j].detach() for j in range(K)]
            else:
                qd = q[b][t]
            w = [qd[j] ** 2 / freq[j] for j in range(K)]
            p = [w[j] / sum(w) for j in range(K)]
            kl[b][t] = sum(p[j] * torch.log(p[j] / q[b][t][j]) for j in range(K))
    mapping = [sum(d[b][t][j] for t in range(T) for j in range(K)) for b in range(B)]
    cluster = [sum(kl[b]) for b in range(B)]
    nearest = [[min(d[b][t]) for t in range(T)] for b in range(B)]
    return mapping, cluster, kl, nearest


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_loss_maps_to_all_centers_with_the_variants_dec_target(variant):
    z, c = _inputs()
    plugin = _plugin(variant=variant)
    with torch.no_grad():
        plugin.centers.copy_(c)
    c_hand = c.clone().requires_grad_(True)
    mapping, cluster, _, _ = _by_hand(
        z, c_hand, over_batch=variant == "reference", detach=variant == "paper"
    )
    total = torch.log(sum(m + k for m, k in zip(mapping, cluster)) / B + 1e-8)
    out = plugin.loss(z)
    assert out["mapping"].item() == pytest.approx(sum(mapping).item() / B, rel=1e-12)
    assert out["cluster"].item() == pytest.approx(sum(cluster).item() / B, rel=1e-12)
    assert out["total"].item() == pytest.approx(total.item(), rel=1e-12)
    # Gradients too: the reference's target is attached to the graph, the paper's is not.
    out["total"].backward()
    total.backward()
    torch.testing.assert_close(plugin.centers.grad, c_hand.grad, rtol=1e-10, atol=1e-12)


def test_the_nearest_center_alone_would_be_a_different_loss():
    """The all-centers sum is not the nearest-center one (what this code used before)."""
    z, c = _inputs()
    plugin = _plugin()
    with torch.no_grad():
        plugin.centers.copy_(c)
    _, cluster, _, nearest = _by_hand(z, c, over_batch=False, detach=True)
    nearest_total = math.log(float(sum(sum(n) for n in nearest) + sum(cluster)) / B + 1e-8)
    assert plugin.loss(z)["total"].item() > nearest_total + 0.5


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_score_is_kl_plus_the_nearest_center(variant):
    z, c = _inputs(1)
    plugin = _plugin(variant=variant).eval()
    with torch.no_grad():
        plugin.centers.copy_(c)
        score = plugin.score(z)
    _, _, kl, nearest = _by_hand(z, c, over_batch=variant == "reference", detach=True)
    expected = torch.stack(
        [torch.stack([kl[b][t] + nearest[b][t] for t in range(T)]) for b in range(B)]
    )
    torch.testing.assert_close(score, expected, rtol=1e-12, atol=1e-12)


def test_batch_frequencies_change_the_reference_target_but_not_the_papers():
    """Per window (paper), a window's target ignores the other windows in its batch; over the
    batch (reference) it does not."""
    z, _ = _inputs(2)
    for variant, alone_equals_batched in (("paper", True), ("reference", False)):
        plugin = _plugin(variant=variant)
        _, p_batch = plugin.assignment_and_target(z)
        _, p_alone = plugin.assignment_and_target(z[:1])
        assert torch.allclose(p_batch[:1], p_alone, rtol=1e-12) is alone_equals_batched


def test_soft_boundary_fits_one_radius_per_center_and_maps_to_each():
    z, c = _inputs(3)
    nu_r = 0.2
    plugin = _plugin(objective="soft-boundary", nu_r=nu_r)
    with torch.no_grad():
        plugin.centers.copy_(c)
    plugin.train()
    plugin.loss(z)
    logs = plugin.on_epoch_end(0)
    dist = ((z[..., None, :] - c) ** 2).sum(-1).sqrt().reshape(-1, K).numpy()
    expected = [float(np.quantile(dist[:, j], 1 - nu_r)) for j in range(K)]
    assert [logs[f"madcluster/radius_{j}"] for j in range(K)] == pytest.approx(expected)
    torch.testing.assert_close(plugin.radius, torch.tensor(expected, dtype=torch.float64))
    # The loss with the fitted radii: sum_j R_j^2 + max(0, d_tj - R_j^2) / nu_R per step.
    d = torch.from_numpy(dist) ** 2  # [B T, K]
    r2 = torch.tensor(expected, dtype=torch.float64) ** 2
    per_window = (r2 + (d - r2).clamp_min(0) / nu_r).sum(-1).reshape(B, T).sum(1)
    assert plugin.loss(z)["mapping"].item() == pytest.approx(per_window.mean().item(), rel=1e-12)


def test_a_model_saved_with_one_shared_radius_loads_into_per_center_radii():
    plugin = _plugin(objective="soft-boundary")
    state = plugin.state_dict()
    state["radius"] = torch.tensor(1.5, dtype=torch.float64)
    plugin.load_state_dict(state)
    assert plugin.radius.tolist() == [1.5] * K
