"""The pure functions of MADCluster's clustering objective (method.md section 1): the readable
reference, plain torch compositions only.

Everything works per time step on tensors shaped [B, T] (assignments) or [B, T, f]
(embeddings), so the plug-in can score every point and knows nothing of the backbone. The k = 1
paper objective also exists as one compiled op (:mod:`madcluster_exp.madcluster.fast`), held
equal to these functions by tests/test_fused.py: a change to the loss is one edit here and one
in ``fast/kernels.py``.
"""

from __future__ import annotations

import torch

# q = (1 + cos)/2 reaches 0 only for exactly opposite vectors; log(0) would be -inf.
Q_EPS = 1e-6


def distance_from_dot(zc: torch.Tensor, zz: torch.Tensor, cc: torch.Tensor) -> torch.Tensor:
    """|z - c|^2 = |z|^2 - 2 z.c + |c|^2 from the dot products already at hand, clamped at 0
    (rounding can take it a hair below)."""
    return (zz - 2.0 * zc + cc).clamp_min(0.0)


def cosine_from_dot(zc: torch.Tensor, zz: torch.Tensor, cc: torch.Tensor) -> torch.Tensor:
    """q = (1 + cos)/2 from z.c, |z|^2 and |c|^2 (already at hand for the distance), in
    [Q_EPS, 1]; equal to (1 + F.cosine_similarity(z, c))/2 without a second pass over z."""
    # max(|z||c|, 1e-8) as cosine_similarity, clamped before the root: sqrt(0) has an infinite
    # gradient, and an all-zero embedding row (e.g. after ReLU) must not turn the loss into NaN.
    cos = zc * torch.rsqrt((zz * cc).clamp_min(1e-16))
    return ((1.0 + cos) / 2.0).clamp(Q_EPS, 1.0)


def f1_slope(nu: torch.Tensor, one_minus_nu: torch.Tensor) -> torch.Tensor:
    """Slope of f1, (1 - nu^(1-nu)) / (1 - nu), computed without cancellation near nu = 1.

    ``one_minus_nu`` is passed separately because 1 - nu rounds to 0 in float32 long before
    nu reaches 1 when nu comes from a saturated sigmoid.
    """
    return -torch.expm1(one_minus_nu * torch.log(nu)) / one_minus_nu


def od_loss_terms(
    q: torch.Tensor, nu: torch.Tensor, one_minus_nu: torch.Tensor, tau: float
) -> torch.Tensor:
    """Per-step One-directed Adaptive loss (paper): [B, T].

    p = 1[q >= nu] (a hard target, no gradient), smoothed p~ = p(1 - tau) + (1 - p) tau;
    f2(q) = q^(1-nu) below nu, f1(q) the line from (nu, nu^(1-nu)) to (1, 1) above it;
    loss_t = -[p~ log f1(q_t) + (1 - p~) log f2(q_t)].
    """
    p = (q >= nu).to(q.dtype).detach()
    p_smooth = p * (1.0 - tau) + (1.0 - p) * tau
    log_f1 = torch.log(f1_slope(nu, one_minus_nu) * (q - 1.0) + 1.0)
    log_f2 = one_minus_nu * torch.log(q)
    return -(p_smooth * log_f1 + (1.0 - p_smooth) * log_f2)


def reference_loss_terms(q: torch.Tensor, nu: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-step loss of the official code with k = 1 (method.md section 2, item 1).

    Its DEC-style target on one cluster is p = 1 everywhere, so f1 applies to every q and an
    extra -log q appears: -log q - (1 - tau) log f1(q) - tau (1 - nu) log q. ``nu`` is the raw,
    unconstrained parameter, exactly as there (it can leave (0, 1) and produce NaN).
    """
    log_q = torch.log(q)
    one_minus_nu = 1.0 - nu
    slope = (1.0 - torch.pow(nu, one_minus_nu)) / one_minus_nu
    log_f1 = torch.log(slope * (q - 1.0) + 1.0)
    return -log_q - (1.0 - tau) * log_f1 - tau * one_minus_nu * log_q


def squared_distance(z: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """||h_t - c_j||^2 for every step and center: z [B, T, f], centers [k, f] -> [B, T, k]."""
    diff = z.unsqueeze(-2) - centers
    return (diff * diff).sum(dim=-1)


def student_t_assignment(dist2: torch.Tensor) -> torch.Tensor:
    """DEC soft assignment q_tj = (1 + d_tj)^-1 / sum_j' (1 + d_tj')^-1; dist2 [B, T, k]."""
    inv = 1.0 / (1.0 + dist2)
    return inv / inv.sum(dim=-1, keepdim=True)


def dec_target(q: torch.Tensor, over_batch: bool = False, detach: bool = True) -> torch.Tensor:
    """DEC target p_tj = (q_tj^2 / f_j) / sum_j' (q_tj'^2 / f_j'); q [B, T, k].

    Cluster frequencies f_j = sum_t q_tj over each window's steps (appendix eq. 26), or, with
    ``over_batch``, over every step of every window in the batch, as the official code
    (``q.sum(dim=(0, 1))``). ``detach``: the target is a fixed point to move toward (DEC), not
    something to optimise; the official code leaves it attached (``detach=False``).
    """
    if detach:
        q = q.detach()
    weight = q * q / q.sum(dim=(0, 1) if over_batch else 1, keepdim=True)
    return weight / weight.sum(dim=-1, keepdim=True)


def kl_terms(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-step KL(P || Q) = sum_j p log(p / q): [B, T, k] -> [B, T]."""
    return (p * (torch.log(p.clamp_min(1e-12)) - torch.log(q.clamp_min(1e-12)))).sum(dim=-1)


def bounded_nu(theta: torch.Tensor, margin: float):
    """(nu, 1 - nu) = m + (1 - 2m) sigmoid(+-theta): nu inside [m, 1 - m] whatever theta does,
    each computed directly so neither loses precision near the bounds. The one definition of
    the paper variant's nu (the fused loss's kernels compute the same, tested)."""
    span = 1.0 - 2.0 * margin
    return margin + span * torch.sigmoid(theta), margin + span * torch.sigmoid(-theta)


def distance_mapping(dist2, r2, nu_r: float):
    """Per-step distance mapping from squared distances: one-class (``r2`` None) |h - c|^2,
    soft-boundary R^2 + max(0, |h - c|^2 - R^2) / nu_R. With k centers, ``dist2`` [B, T, k]
    and ``r2`` [k] (one radius per center) broadcast."""
    if r2 is None:
        return dist2
    return r2 + (dist2 - r2).clip(0.0) / nu_r
