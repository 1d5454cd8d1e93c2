"""OmniAnomaly (Su et al., KDD 2019, "Robust Anomaly Detection for Multivariate Time Series
through Stochastic Recurrent Neural Network"); reference code github.com/NetManAIOps/OmniAnomaly
(TensorFlow 1 + tfsnippet, commit 7fb0e0a: ``omni_anomaly/model.py``, ``wrapper.py``,
``recurrent_distribution.py``, ``main.py``; planar flow from tfsnippet v0.2.0-alpha1
``layers/flows/planar_nf.py``).

A stochastic recurrent VAE over a window x_1..x_T:

- q-net: e_t = Dense(Dense(GRU(x)_t)) (two linear layers without activation, as in the code);
  z0_t ~ N(mu_t, sigma_t) with [mu_t, pre_t] = Linear([e_t, z0_{t-1}]), sigma_t =
  softplus(pre_t) + eps, z0_0 = 0 (the "stochastic variable connection"); then ``nf_layers``
  planar normalizing flows map z0_t to z_t (shared across steps), so
  log q(z_t) = log q0(z0_t) - sum_k log|det J_k|.
- prior p(z_1..z_T): a linear-Gaussian state-space model per latent dimension, as in the code:
  s_1 ~ N(0, 1), s_t = s_{t-1} + N(0, 1), z_t = s_t + N(0, 1) (identity transition and
  observation, unit noises); its per-step predictive log-densities log p(z_t | z_<t) (the Kalman
  filter's, as tfp's ``forward_filter`` returns) come from one Cholesky factor of the T x T
  covariance.
- p-net: d_t = Dense(Dense(GRU(z)_t)); x_t ~ N(mu_x, softplus(.) + eps).
- loss: the negative single-sample ELBO per step, -(log p(x_t|z_<=t) + log p(z_t|z_<t) -
  log q(z_t)), averaged over batch and steps (the code's ``sgvb`` on [B, T] terms).
- score: the negative reconstruction log-probability -log p(x_t | z_<=t) summed over channels
  (the code's ``get_score`` with ``get_score_on_dim=False``, negated so that higher = more
  anomalous), with one z sample as the code's ``test_n_z = 1``. Both GRUs are causal, so the
  score of step t only uses x_<=t; the point score is that of the window in which the point is
  last (``score_aggregate = "last"``), i.e. the code's ``last_point_only=True``; the first T - 1
  points of a series, which end no window, keep their score from the first window.

MADCluster taps (``embed_tap``): ``encoder`` (default) = e_t, the q-net's deterministic per-step
representation of x_<=t on which the posterior is conditioned: it is learned through the ELBO,
has ``dense_dim`` features and no sampling noise, so the plug-in's distance and cosine are
properties of the input, not of a random draw. ``latent`` = the sampled z_t after the flow (the
paper's "robust representation", but only ``z_dim`` = 3 features and stochastic); ``decoder`` =
d_t, the p-net's hidden state.

Deviations from the reference code (and why):
- Gradients reach the q-net. The code samples z0 and evaluates log q0 inside ``tf.scan(...,
  back_prop=False)``, so the q-net's GRU, dense layers and posterior heads receive no gradient
  and stay at their initialisation (only the flow and the p-net learn); that contradicts the
  paper's SGVB training, which this module follows.
- log q0 is the density of the sampled z0 under the distribution it was drawn from. The code's
  ``log_prob_step`` conditions step t on z0_t itself (not z0_{t-1}) and concatenates in the
  other order, so its log q0 is not the sampler's density.
- The reparameterisation noise is N(0, 1) (paper); the code draws ``tf.truncated_normal``
  (|eps| < 2) while scoring it as N(0, 1).
- torch's GRU applies the reset gate after the recurrent matmul (cuDNN form); TF's GRUCell
  before it. Initialisation follows TF's defaults otherwise (Glorot-uniform kernels, zero
  biases, GRU gate biases 1).
- Gradient clipping: per tensor by norm ``grad_clip_norm`` = 10 as the code's
  ``tf.clip_by_norm`` per gradient (parameter hooks), not ``train.grad_clip``'s global norm.
- Training schedule of the framework, not the code's: validation = ``dataset.val_fraction`` of
  the training tail checked once per epoch with ``train.patience`` (code: last 30 %, every 100
  steps, best weights kept). The code's learning-rate halving every 40 epochs never fires within
  its 10 epochs, and its ``l2_reg = 1e-4`` is attached to no layer (the regularisation loss is 0),
  so lr 1e-3 constant and weight decay 0 are the code's effective settings.
- Width: the schema's GRU and dense widths are 64, not the code's 500, so that the default
  synthetic run takes about two CPU minutes (GRU work grows with the width squared: 500 units
  cost ~40x more of it). Window 100, z_dim 3, 20 flows, batch 50, lr 1e-3 and the clip are the
  code's. The MADCluster paper's OmniAnomaly is not the code's width either: its appendix
  Table 2 counts 350.72 K parameters on MSL, where 500 units give 2.65 M here. ``setup=paper``
  sets both widths to 172 (conf/setup/backbone/paper_omnianomaly.yaml; docs/method.md).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from madcluster_exp.backbones.base import Backbone, BackboneOutput
from madcluster_exp.config.schema import BackboneConfig
from madcluster_exp.utils.nn import keep_own_init

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _glorot_(weight: torch.Tensor, fan_in: int, fan_out: int) -> None:
    """TF's default Glorot-uniform kernel init for a (possibly partial) kernel block."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(weight, -limit, limit)


def _dense(n_in: int, n_out: int, bias: bool = True, fans=None) -> nn.Linear:
    """TF's dense layer init; ``fans`` = (fan_in, fan_out) of the code's kernel when this layer
    is a block of it. Marked as the backbone's own init, which ``train.init=he`` keeps."""
    layer = nn.Linear(n_in, n_out, bias=bias)
    _glorot_(layer.weight, *(fans or (n_in, n_out)))
    if bias:
        nn.init.zeros_(layer.bias)
    return keep_own_init(layer)


def _tf_gru(n_in: int, hidden: int) -> nn.GRU:
    """A GRU initialised as TF's GRUCell: Glorot over the [input + hidden, 2 hidden] gate kernel
    and the [input + hidden, hidden] candidate kernel, gate biases 1, candidate bias 0."""
    gru = nn.GRU(n_in, hidden, batch_first=True)
    with torch.no_grad():
        for w in (gru.weight_ih_l0, gru.weight_hh_l0):  # rows: reset, update, candidate
            _glorot_(w[: 2 * hidden], n_in + hidden, 2 * hidden)
            _glorot_(w[2 * hidden :], n_in + hidden, hidden)
        gru.bias_ih_l0.zero_()
        gru.bias_hh_l0.zero_()
        gru.bias_ih_l0[: 2 * hidden] = 1.0
    return gru


def _clip_by_norm(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """tf.clip_by_norm: grad * max_norm / max(||grad||, max_norm)."""
    return grad * (max_norm / grad.norm().clamp(min=max_norm))


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, std^2)."""
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - LOG_SQRT_2PI


class PlanarFlow(nn.Module):
    """``layers`` planar flows y = z + u_hat tanh(w.z + b) over the last axis, with the
    invertibility trick u_hat = u + (softplus(w.u) - 1 - w.u) w / |w|^2 (Rezende & Mohamed
    2015), so w.u_hat > -1 and every layer is invertible. Init as tfsnippet: w, u ~ N(0, 0.01^2),
    b = 0. Returns the transformed z and sum_k log|det dy/dz| per vector."""

    def __init__(self, dim: int, layers: int, init_std: float = 0.01):
        super().__init__()
        self.w = nn.Parameter(torch.randn(layers, dim) * init_std)
        self.u = nn.Parameter(torch.randn(layers, dim) * init_std)
        self.b = nn.Parameter(torch.zeros(layers))

    def u_hat(self) -> torch.Tensor:
        wu = (self.w * self.u).sum(-1, keepdim=True)
        return self.u + (F.softplus(wu) - 1 - wu) * self.w / self.w.square().sum(-1, keepdim=True)

    def forward(self, z: torch.Tensor):
        u_hat = self.u_hat()
        w_dot_u_hat = (self.w * u_hat).sum(-1)  # [layers]
        log_det = z.new_zeros(z.shape[:-1])
        for k in range(self.w.shape[0]):
            a = torch.tanh(z @ self.w[k] + self.b[k])
            # det(I + u_hat psi^T) = 1 + psi.u_hat, psi = (1 - tanh^2) w
            log_det = log_det + torch.log(torch.abs(1 + (1 - a * a) * w_dot_u_hat[k]))
            z = z + a.unsqueeze(-1) * u_hat[k]
        return z, log_det


class StateSpacePrior(nn.Module):
    """Linear-Gaussian state-space prior per latent dimension (all dimensions alike):
    s_1 ~ N(0, initial_std^2), s_t = transition * s_{t-1} + N(0, transition_std^2),
    z_t = s_t + N(0, observation_std^2). The defaults are the reference code's (identity
    matrices, unit noises). z_1..z_T is then Gaussian with covariance S = L L^T; the
    standardised innovations u = L^-1 z give the Kalman filter's one-step predictive densities
    log p(z_t | z_<t) = -u_t^2 / 2 - log L_tt - log sqrt(2 pi), whose sum is log p(z)."""

    def __init__(
        self,
        length: int,
        transition: float = 1.0,
        transition_std: float = 1.0,
        observation_std: float = 1.0,
        initial_std: float = 1.0,
    ):
        super().__init__()
        var = torch.empty(length, dtype=torch.float64)  # Var(s_t)
        var[0] = initial_std**2
        for t in range(1, length):
            var[t] = transition**2 * var[t - 1] + transition_std**2
        i = torch.arange(length)
        lag = (i[:, None] - i[None, :]).abs()
        cov = transition ** lag.double() * var[torch.minimum(i[:, None], i[None, :])]
        cov += observation_std**2 * torch.eye(length, dtype=torch.float64)
        self.register_buffer("chol", torch.linalg.cholesky(cov).float(), persistent=False)

    def covariance(self) -> torch.Tensor:
        return self.chol @ self.chol.T

    def log_prob_steps(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, T, K] (T <= length) -> [B, T]: sum over K of log p(z_t | z_<t)."""
        t = z.shape[-2]
        chol = self.chol[:t, :t]  # Cholesky of a leading block = leading block of the Cholesky
        # float32 even under bf16 autocast: the solve has no low-precision kernel
        u = torch.linalg.solve_triangular(chol, z.to(chol.dtype), upper=False)
        log_diag = torch.log(torch.diagonal(chol)).unsqueeze(-1)
        return (-0.5 * u * u - log_diag - LOG_SQRT_2PI).sum(-1)


class OmniAnomaly(Backbone):
    name = "omnianomaly"
    family = "reconstruction"
    embed_taps = ("encoder", "latent", "decoder")
    score_aggregate = "last"

    def __init__(self, n_channels: int, cfg: BackboneConfig):
        super().__init__(n_channels, cfg)
        for key in ("z_dim", "rnn_hidden", "dense_dim"):
            if int(getattr(cfg, key)) < 1:
                raise ValueError(f"backbone.{key}={getattr(cfg, key)}: expected a positive integer")
        for key in ("dense_layers", "nf_layers"):
            if int(getattr(cfg, key)) < 0:
                raise ValueError(f"backbone.{key}={getattr(cfg, key)}: expected an integer >= 0")
        if not cfg.std_epsilon > 0:
            raise ValueError(
                f"backbone.std_epsilon={cfg.std_epsilon}: expected a value > 0 "
                "(the floor of every predicted standard deviation)"
            )
        if cfg.grad_clip_norm is not None and not cfg.grad_clip_norm > 0:
            raise ValueError(
                f"backbone.grad_clip_norm={cfg.grad_clip_norm}: expected a value > 0 or null"
            )
        k, h, d = int(cfg.z_dim), int(cfg.rnn_hidden), int(cfg.dense_dim)
        self.z_dim, self.eps = k, float(cfg.std_epsilon)
        feat = d if cfg.dense_layers else h
        self.q_rnn, self.q_dense = _tf_gru(n_channels, h), self._dense_stack(h, d, cfg.dense_layers)
        # Linear([e_t, z_{t-1}]) -> [mu, pre-softplus std]: the e_t and z_{t-1} blocks of the
        # code's two dense heads (fan-in feat + k each, one head = k outputs).
        self.q_from_e = _dense(feat, 2 * k, fans=(feat + k, k))
        self.q_from_z = _dense(k, 2 * k, bias=False, fans=(feat + k, k))
        self.flow = PlanarFlow(k, int(cfg.nf_layers))
        self.prior = StateSpacePrior(self.window)
        self.p_rnn, self.p_dense = _tf_gru(k, h), self._dense_stack(h, d, cfg.dense_layers)
        # [mean, pre-softplus std]: the code's two heads, fan (feat, channels) each
        self.p_head = _dense(feat, 2 * n_channels, fans=(feat, n_channels))
        self.embed_dim = k if self.embed_tap == "latent" else feat
        if cfg.grad_clip_norm is not None:
            for p in self.parameters():
                p.register_hook(partial(_clip_by_norm, max_norm=float(cfg.grad_clip_norm)))

    @staticmethod
    def _dense_stack(n_in: int, width: int, layers: int) -> nn.Sequential:
        """The code's ``hidden_dense`` layers after each GRU: linear, no activation."""
        return nn.Sequential(*[_dense(n_in if i == 0 else width, width) for i in range(layers)])

    def sample_posterior(self, e: torch.Tensor, noise: torch.Tensor):
        """z0_t = mu_t + sigma_t * noise_t with (mu_t, sigma_t) from [e_t, z0_{t-1}], z0_0 = 0.
        Returns z0, mu, sigma, each [B, T, K]."""
        k = self.z_dim
        proj = self.q_from_e(e)  # the e_t part of every step at once; the loop adds z0_{t-1}
        w_z = self.q_from_z.weight.T
        z_prev = e.new_zeros(e.shape[0], k)
        zs, mus, stds = [], [], []
        for t in range(e.shape[1]):
            mu, pre = (proj[:, t] + z_prev @ w_z).split(k, dim=-1)
            std = F.softplus(pre) + self.eps
            z_prev = mu + std * noise[:, t]
            zs.append(z_prev)
            mus.append(mu)
            stds.append(std)
        return torch.stack(zs, 1), torch.stack(mus, 1), torch.stack(stds, 1)

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None) -> BackboneOutput:
        """``noise`` [B, T, z_dim]: the reparameterisation draws (default: fresh N(0, 1))."""
        e = self.q_dense(self.q_rnn(x)[0])
        if noise is None:
            noise = torch.randn(x.shape[0], x.shape[1], self.z_dim, device=x.device, dtype=e.dtype)
        z0, mu, std = self.sample_posterior(e, noise)
        z, log_det = self.flow(z0)
        d = self.p_dense(self.p_rnn(z)[0])
        x_mean, pre = self.p_head(d).chunk(2, dim=-1)
        taps = {"encoder": e, "latent": z, "decoder": d}
        aux: Dict[str, torch.Tensor] = {
            "z0": z0,
            "z_mean": mu,
            "z_std": std,
            "z": z,
            "log_det": log_det,
            "x_mean": x_mean,
            "x_std": F.softplus(pre) + self.eps,
            # log q0(z0) summed over K: (z0 - mu) / sigma is the noise itself
            "log_q0": (-0.5 * noise * noise - torch.log(std) - LOG_SQRT_2PI).sum(-1),
        }
        return BackboneOutput(z=taps[self.embed_tap], aux=aux)

    def reconstruction_log_prob(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        """log p(x_t | z_<=t) summed over channels, [B, T]."""
        return gaussian_log_prob(x, out.aux["x_mean"], out.aux["x_std"]).sum(-1)

    def elbo_steps(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        """Per-step single-sample ELBO terms [B, T]: log p(x_t|.) + log p(z_t|z_<t) - log q(z_t)."""
        log_q = out.aux["log_q0"] - out.aux["log_det"]
        return (
            self.reconstruction_log_prob(x, out) + self.prior.log_prob_steps(out.aux["z"]) - log_q
        )

    def loss(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        return -self.elbo_steps(x, out).mean()

    def score(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        return -self.reconstruction_log_prob(x, out)
