"""OmniAnomaly's pieces against hand-computed and independent computations: the planar flow's
log-det-Jacobian, the state-space prior's log-density, the ELBO, the score, the reference's
initialisation and per-tensor gradient clipping, and the last-step point score."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from madcluster_exp.backbones import build_backbone
from madcluster_exp.backbones.omnianomaly import PlanarFlow, StateSpacePrior, gaussian_log_prob
from madcluster_exp.data import SeriesSplit
from madcluster_exp.detector import Detector
from madcluster_exp.scoring import score_split
from tests.conftest import compose_config

C = 3
SMALL = [
    "backbone=omnianomaly",
    "backbone.window=12",
    "backbone.rnn_hidden=8",
    "backbone.dense_dim=6",
    "backbone.nf_layers=3",
]


def _backbone(*extra):
    torch.manual_seed(0)
    return build_backbone(C, compose_config(SMALL + list(extra)).backbone)


# ------------------------------------------------------------------------------ planar flow
def test_planar_flow_by_hand_for_one_layer():
    flow = PlanarFlow(dim=2, layers=1)
    with torch.no_grad():
        flow.w.copy_(torch.tensor([[1.0, 0.0]]))
        flow.u.copy_(torch.tensor([[0.5, 2.0]]))
        flow.b.fill_(0.25)
    # w.u = 0.5 -> u_hat = u + (softplus(0.5) - 1 - 0.5) w / |w|^2
    m = math.log1p(math.exp(0.5)) - 1.5
    u_hat = [0.5 + m, 2.0]
    z = torch.tensor([[0.3, -1.0]])
    a = math.tanh(0.3 + 0.25)
    y, log_det = flow(z)
    torch.testing.assert_close(y, torch.tensor([[0.3 + u_hat[0] * a, -1.0 + u_hat[1] * a]]))
    assert log_det.item() == pytest.approx(math.log(abs(1 + (1 - a * a) * u_hat[0])), rel=1e-5)


def test_planar_flow_log_det_equals_autograd_jacobian():
    torch.manual_seed(1)
    flow = PlanarFlow(dim=3, layers=5, init_std=1.0).double()  # far from identity
    z = torch.randn(4, 3, dtype=torch.float64)
    _, log_det = flow(z)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v)[0], z[i])
        assert log_det[i].item() == pytest.approx(torch.linalg.slogdet(jac)[1].item(), rel=1e-10)


def test_planar_flow_stays_invertible_where_u_opposes_w():
    """Without the u_hat trick w.u = -3 would give det 1 - 3 (1 - tanh^2) = 0 near w.z + b = 0."""
    flow = PlanarFlow(dim=2, layers=1)
    with torch.no_grad():
        flow.w.copy_(torch.tensor([[1.0, 0.0]]))
        flow.u.copy_(torch.tensor([[-3.0, 0.0]]))
        flow.b.zero_()
    assert (flow.w * flow.u_hat()).sum().item() > -1
    _, log_det = flow(torch.linspace(-2, 2, 41).unsqueeze(-1) * torch.tensor([1.0, 0.0]))
    assert torch.isfinite(log_det).all()


def test_planar_flow_initialisation_is_the_reference():
    torch.manual_seed(0)
    flow = PlanarFlow(dim=3, layers=2000)
    assert flow.w.std().item() == pytest.approx(0.01, rel=0.05)
    assert flow.u.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.equal(flow.b, torch.zeros(2000))


# --------------------------------------------------------------------------- state-space prior
def test_state_space_prior_by_hand_for_two_steps():
    # Var(s_1) = 1, Var(s_2) = 2, Cov = 1; plus observation noise 1: S = [[2, 1], [1, 3]]
    prior = StateSpacePrior(length=2)
    torch.testing.assert_close(prior.covariance(), torch.tensor([[2.0, 1.0], [1.0, 3.0]]))
    got = prior.log_prob_steps(torch.tensor([[[1.0], [2.0]]]))[0]
    c = 0.5 * math.log(2 * math.pi)
    step1 = -0.5 * 1.0 / 2.0 - 0.5 * math.log(2.0) - c  # z_1 ~ N(0, 2)
    step2 = -0.5 * 1.5**2 / 2.5 - 0.5 * math.log(2.5) - c  # z_2 | z_1 ~ N(0.5, 3 - 1/2)
    torch.testing.assert_close(got, torch.tensor([step1, step2]))


def _kalman_log_likelihoods(z, a, q, r, q0):
    """Scalar Kalman filter of s_1 ~ N(0, q0^2), s_t = a s_{t-1} + N(0, q^2), z_t = s_t +
    N(0, r^2): one-step predictive log-densities, step by step."""
    mean, var, out = 0.0, q0**2, []
    for t, zt in enumerate(z):
        if t:
            mean, var = a * mean, a * a * var + q * q
        s = var + r * r
        out.append(-0.5 * (zt - mean) ** 2 / s - 0.5 * math.log(2 * math.pi * s))
        gain = var / s
        mean, var = mean + gain * (zt - mean), (1 - gain) * var
    return out


@pytest.mark.parametrize("a,q,r,q0", [(1.0, 1.0, 1.0, 1.0), (0.8, 0.5, 0.3, 2.0)])
def test_state_space_prior_steps_are_the_kalman_filter_and_sum_to_the_joint_density(a, q, r, q0):
    T, K = 30, 2
    prior = StateSpacePrior(T, transition=a, transition_std=q, observation_std=r, initial_std=q0)
    z = torch.randn(3, T, K, generator=torch.Generator().manual_seed(0))
    got = prior.log_prob_steps(z)
    expected = [
        [
            sum(_kalman_log_likelihoods(z[b, :, k].tolist(), a, q, r, q0)[t] for k in range(K))
            for t in range(T)
        ]
        for b in range(3)
    ]
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-4, atol=1e-4)
    # the joint density of the state-space model, covariance written out directly
    i = torch.arange(T, dtype=torch.float64)
    var = torch.tensor(
        [q0**2 * a ** (2 * t) + q * q * sum(a ** (2 * j) for j in range(t)) for t in range(T)],
        dtype=torch.float64,
    )
    lag = (i[:, None] - i[None, :]).abs()
    cov = a**lag * var[torch.minimum(i[:, None], i[None, :]).long()] + r * r * torch.eye(T)
    mvn = torch.distributions.MultivariateNormal(torch.zeros(T, dtype=torch.float64), cov)
    joint = mvn.log_prob(z.double().transpose(1, 2)).sum(-1)
    torch.testing.assert_close(got.sum(-1).double(), joint, rtol=1e-5, atol=1e-4)


def test_state_space_prior_of_a_shorter_sequence_is_its_leading_block():
    z = torch.randn(2, 7, 3)
    torch.testing.assert_close(
        StateSpacePrior(20).log_prob_steps(z), StateSpacePrior(7).log_prob_steps(z)
    )


# ------------------------------------------------------------------------------ ELBO, score
def test_posterior_sample_follows_the_connected_recursion():
    bb = _backbone()
    x = torch.randn(2, 12, C)
    noise = torch.randn(2, 12, 3)
    out = bb(x, noise=noise)
    e = out.z  # the encoder tap is e_t
    z_prev = torch.zeros(2, 3)
    for t in range(12):
        h = bb.q_from_e(e[:, t]) + bb.q_from_z(z_prev)
        mu, std = h[:, :3], torch.nn.functional.softplus(h[:, 3:]) + 1e-4
        z_prev = mu + std * noise[:, t]
        torch.testing.assert_close(out.aux["z0"][:, t], z_prev)
    torch.testing.assert_close(
        out.aux["log_q0"],
        gaussian_log_prob(out.aux["z0"], out.aux["z_mean"], out.aux["z_std"]).sum(-1),
    )


def test_loss_is_the_negative_elbo_per_step():
    bb = _backbone()
    x = torch.randn(4, 12, C)
    out = bb(x)
    normal = torch.distributions.Normal(out.aux["x_mean"], out.aux["x_std"])
    log_px = normal.log_prob(x).sum(-1)
    log_pz = StateSpacePrior(12).log_prob_steps(out.aux["z"])
    log_q = out.aux["log_q0"] - bb.flow(out.aux["z0"])[1]
    assert bb.loss(x, out).item() == pytest.approx(
        -(log_px + log_pz - log_q).mean().item(), rel=1e-5
    )


def test_score_is_the_negative_reconstruction_log_probability_summed_over_channels():
    bb = _backbone().eval()
    x = torch.randn(4, 12, C)
    out = bb(x)
    expected = -torch.distributions.Normal(out.aux["x_mean"], out.aux["x_std"]).log_prob(x).sum(-1)
    torch.testing.assert_close(bb.score(x, out), expected)
    # a value far from the predicted mean scores higher at its step only (and later ones)
    far = x.clone()
    noise = torch.randn(4, 12, 3)
    far[:, 6] += 50.0
    s, s_far = bb.score(x, bb(x, noise=noise)), bb.score(far, bb(far, noise=noise))
    assert (s_far[:, 6] > s[:, 6] + 10).all()
    torch.testing.assert_close(s_far[:, :6], s[:, :6])  # causal: earlier steps unchanged


def test_point_score_is_the_window_ending_at_the_point():
    bb = _backbone().eval()
    det = Detector(bb, None)
    values = np.random.default_rng(0).normal(size=(30, C)).astype(np.float32)
    split = SeriesSplit.concat([("e", values, None)])
    torch.manual_seed(5)
    got = score_split(
        det, split, stride=1, batch_size=64, aggregate="mean", device=torch.device("cpu")
    )["backbone"]
    windows = torch.from_numpy(values).unfold(0, 12, 1).transpose(1, 2)  # [19, 12, C]
    torch.manual_seed(5)  # the same draws as the single scoring batch
    with torch.no_grad():
        s = bb.score(windows, bb(windows))
    np.testing.assert_allclose(got[11:], s[:, -1].numpy(), rtol=1e-5)
    np.testing.assert_allclose(got[:11], s[0, :11].numpy(), rtol=1e-5)  # shorter context


# ---------------------------------------------------------------- reference init and clipping
def test_gru_and_dense_initialisation_follow_tensorflow_defaults():
    bb = _backbone("backbone.rnn_hidden=200", "backbone.dense_dim=300")
    h, n_in = 200, C
    gate, cand = bb.q_rnn.weight_hh_l0[: 2 * h], bb.q_rnn.weight_hh_l0[2 * h :]
    assert gate.abs().max() <= math.sqrt(6 / (n_in + h + 2 * h))
    assert gate.abs().max() > 0.95 * math.sqrt(6 / (n_in + h + 2 * h))
    assert cand.abs().max() <= math.sqrt(6 / (n_in + h + h))
    assert torch.equal(bb.q_rnn.bias_ih_l0[: 2 * h], torch.ones(2 * h))
    assert not bb.q_rnn.bias_ih_l0[2 * h :].any() and not bb.q_rnn.bias_hh_l0.any()
    dense = bb.q_dense[1]
    limit = math.sqrt(6 / (300 + 300))
    assert limit * 0.95 < dense.weight.abs().max() <= limit and not dense.bias.any()


def test_gradients_are_clipped_per_tensor_by_norm():
    bb = _backbone()
    x = torch.randn(4, 12, C)
    (1e6 * bb.loss(x, bb(x))).backward()
    norms = [p.grad.norm().item() for p in bb.parameters() if p.grad is not None]
    assert max(norms) == pytest.approx(10.0, rel=1e-5)
    bb = _backbone("backbone.grad_clip_norm=null")
    (1e6 * bb.loss(x, bb(x))).backward()
    assert max(p.grad.norm().item() for p in bb.parameters()) > 1e3


def test_clipping_leaves_small_gradients_alone():
    a, b = _backbone(), _backbone("backbone.grad_clip_norm=null")
    x, noise = torch.randn(4, 12, C), torch.randn(4, 12, 3)
    (1e-3 * a.loss(x, a(x, noise=noise))).backward()
    (1e-3 * b.loss(x, b(x, noise=noise))).backward()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


@pytest.mark.parametrize(
    "key,value", [("z_dim", 0), ("nf_layers", -1), ("std_epsilon", 0), ("grad_clip_norm", -1)]
)
def test_bad_settings_are_named(key, value):
    with pytest.raises(ValueError, match=f"backbone.{key}={value}"):
        _backbone(f"backbone.{key}={value}")


def test_taps_have_their_widths():
    for tap, width in [("encoder", 6), ("latent", 3), ("decoder", 6)]:
        bb = _backbone(f"backbone.embed_tap={tap}")
        assert bb.embed_dim == width and bb(torch.randn(2, 12, C)).z.shape == (2, 12, width)
    assert _backbone("backbone.dense_layers=0").embed_dim == 8  # the GRU width
