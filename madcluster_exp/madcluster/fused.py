"""The k = 1 paper objective as one op: the same values and gradients as the readable
composition in :mod:`madcluster_exp.madcluster.losses` (tested to 1e-10 in float64, gradcheck
included), at a fraction of its cost per training step.

Why it exists: after the two reductions over z (z.c and |z|^2, BLAS work that scales with the
embedding), everything MADCluster computes is elementwise arithmetic on [B, T] numbers, or on B
numbers for a per-window code such as USAD's. On CPU such small tensors cost per call, not per
number: ~1.1 us per torch op in a tight loop and four to six times that inside a real
training step, where the backbone's work has evicted the interpreter's and the dispatcher's
code and data from the caches (measured; see the README's benchmark notes). The composition dispatches ~120 ops and records
~45 autograd nodes per step; on USAD that was 10 % of the step.

So the elementwise chain and its hand-derived backward are written once, against two small
array namespaces: numpy on CPU (~0.3 us per call, float32 stays float32) and torch elsewhere
(0-d tensors throughout, so nothing waits for the device). The threshold's scalars follow the
same split: Python floats from one read of theta on CPU, 0-d tensors on an accelerator.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from madcluster_exp.madcluster.losses import (Q_EPS, _dot_and_norm, _dot_and_norm_grads,
                                              bounded_nu, cosine_from_dot, distance_from_dot,
                                              distance_mapping, distinct_steps, od_loss_terms)


class _NumpyMath:
    """Arrays on the host: torch CPU tensors viewed as numpy arrays (no copies)."""

    host = True
    sqrt = staticmethod(np.sqrt)
    reciprocal = staticmethod(np.reciprocal)
    log = staticmethod(np.log)
    maximum = staticmethod(np.maximum)
    scalar_log = staticmethod(math.log)

    @staticmethod
    def select(cond, a, b, like):
        """a where cond else b, in like's dtype (a and b arrays or Python floats)."""
        t = like.dtype.type
        return np.where(cond, t(a) if isinstance(a, float) else a,
                        t(b) if isinstance(b, float) else b)

    @staticmethod
    def array(t: torch.Tensor):
        return t.numpy()

    @staticmethod
    def scalar(x) -> float:
        # Python floats, so numpy 1.x's scalar promotion cannot turn float32 into float64.
        return float(x)

    @staticmethod
    def tensor(x, like: torch.Tensor) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            return torch.from_numpy(x)
        return torch.tensor(x, dtype=like.dtype)


class _TorchMath:
    """Tensors on any device; scalars stay 0-d tensors (no host synchronisation)."""

    host = False
    sqrt = staticmethod(torch.sqrt)
    reciprocal = staticmethod(torch.reciprocal)
    log = staticmethod(torch.log)
    maximum = staticmethod(torch.clamp_min)
    scalar_log = staticmethod(torch.log)

    @staticmethod
    def select(cond, a, b, like):
        """a where cond else b, in like's dtype (a and b tensors, 0-d tensors or floats)."""
        if isinstance(a, float) and isinstance(b, float):
            return cond.to(like.dtype) * (a - b) + b
        return torch.where(cond, a, b)

    @staticmethod
    def array(t):
        return t

    @staticmethod
    def scalar(x):
        return x

    @staticmethod
    def tensor(x, like):
        return x


def _math_for(t: torch.Tensor):
    """numpy for CPU float32/float64 tensors; torch for anything else."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        return _NumpyMath
    return _TorchMath


class _Threshold(NamedTuple):
    """nu and what f1 needs from it: 1 - nu, f1's slope (1 - nu^(1-nu)) / (1 - nu), and for the
    backward d slope/d nu - d slope/d(1 - nu) and d nu/d theta."""
    nu: object
    omn: object
    slope: object
    dslope: object
    dnu_dtheta: object


def threshold_constants(theta: torch.Tensor, margin: float, host: bool) -> _Threshold:
    """The threshold's scalars from its raw parameter theta: Python floats from one read of
    theta when ``host`` (as 0-d tensors they would take ~15 ops, each a dispatch for one
    multiplication), else 0-d tensors (a read would wait for the device)."""
    t = theta.item() if host else theta
    log, expm1 = (math.log, math.expm1) if host else (torch.log, torch.expm1)
    nu, omn = bounded_nu(t, margin)
    log_nu = log(nu)
    e = expm1(omn * log_nu)  # nu^(1-nu) - 1
    slope = -e / omn
    # nu and 1 - nu are computed apart (precision), so the slope has a partial for each.
    dslope_dnu = -(e + 1.0) / nu
    dslope_domn = -((e + 1.0) * log_nu * omn - e) / (omn * omn)
    # d nu / d theta = span sigmoid(theta) sigmoid(-theta) = (nu - m)(1 - nu - m) / span
    dnu_dtheta = (nu - margin) * (omn - margin) / (1.0 - 2.0 * margin)
    return _Threshold(nu, omn, slope, dslope_dnu - dslope_domn, dnu_dtheta)


class _StepTerms(NamedTuple):
    """Per-step pieces of the paper objective; the backward reuses them."""
    prod: object  # |z|^2 |c|^2
    pc: object  # prod clamped away from 0
    root: object  # sqrt(pc)
    cos: object
    q_raw: object  # (1 + cos) / 2 before its clamp to [Q_EPS, 1]
    q: object
    ps: object  # the smoothed hard target
    qm1: object  # q - 1
    a1: object  # f1(q) = 1 + slope (q - 1)
    log_q: object
    neg_loss: object  # minus the OD loss per step: ps log f1(q) + (1 - ps) log f2(q)
    d_raw: object  # |z|^2 - 2 z.c + |c|^2, before its clamp at 0
    dist2: object  # |z - c|^2


def _step_terms(xp, zc, zz, cc, th: _Threshold, tau: float) -> _StepTerms:
    """|z - c|^2 and the OD loss per step: the values of ``cosine_from_dot`` +
    ``od_loss_terms`` (tested equal), in as few array calls as the maths allows."""
    prod = zz * cc
    pc = xp.maximum(prod, 1e-16)
    root = xp.sqrt(pc)
    cos = zc / root
    q_raw = cos * 0.5 + 0.5
    q = q_raw.clip(Q_EPS, 1.0)
    ps = xp.select(q >= th.nu, 1.0 - tau, tau, q)
    qm1 = q - 1.0
    a1 = qm1 * th.slope + 1.0
    log_q = xp.log(q)
    log_f2 = log_q * th.omn
    neg_loss = log_f2 + ps * (xp.log(a1) - log_f2)
    d_raw = zz - 2.0 * zc + cc
    return _StepTerms(prod, pc, root, cos, q_raw, q, ps, qm1, a1, log_q, neg_loss, d_raw,
                      d_raw.clip(0.0))


def _step_grads(xp, s: _StepTerms, zz, cc, th: _Threshold, a_d, a_l, r2, nu_r: float,
                need_theta: bool):
    """Backward of the per-step terms, each step's mapping weighted by ``a_d`` and its OD loss
    by ``a_l`` (None = no gradient flows there): the gradients w.r.t. z.c and |z|^2 per step,
    the sum of the |c|^2 gradients, and the sum whose multiple is theta's gradient."""
    g_zc = g_zz = g_cc = theta_sum = None
    if a_d is not None:
        keep = s.d_raw >= 0.0  # the clamp of |z - c|^2 at 0
        if r2 is not None:  # soft-boundary: only distances beyond R move the mapping
            keep = keep & (s.dist2 >= r2)
            a_d = a_d / nu_r
        g_zz = g_cc = xp.select(keep, a_d, 0.0, s.d_raw)
        g_zc = g_zz * -2.0
    if a_l is not None:
        inv_a1 = xp.reciprocal(s.a1)
        # -d loss/d q = ps slope / f1(q) + (1 - ps)(1 - nu) / q, through q's clamp
        m = th.omn / s.q
        m = m + s.ps * (inv_a1 * th.slope - m)
        g_cos = xp.select(s.q == s.q_raw, m * (a_l * -0.5), 0.0, m)
        # cos = zc / sqrt(max(zz cc, 1e-16))
        g_prod = xp.select(s.prod == s.pc, g_cos * s.cos / s.pc * -0.5, 0.0, m)
        g_zc = g_cos / s.root if g_zc is None else g_zc + g_cos / s.root
        g_zz = g_prod * cc if g_zz is None else g_zz + g_prod * cc
        g_cc = g_prod * zz if g_cc is None else g_cc + g_prod * zz
        if need_theta:
            # theta moves f1's slope and 1 - nu: d loss/d theta = dnu/dtheta *
            # [(1 - ps) log q - ps (q - 1) / f1(q) (dslope/dnu - dslope/d(1 - nu))]
            t = s.qm1 * inv_a1 * -th.dslope
            theta_sum = (s.log_q + s.ps * (t - s.log_q)).sum()
    return g_zc, g_zz, (None if g_cc is None else g_cc.sum()), theta_sum


def _term_weight(from_total, from_mean, inv_b: float):
    """d(outputs)/d(one step's term): each of the B*T terms enters a batch mean with 1/B."""
    parts = [g for g in (from_total, from_mean) if g is not None]
    if not parts:
        return None
    return (parts[0] if len(parts) == 1 else parts[0] + parts[1]) * inv_b


class _Steps:
    """The distinct steps of an embedding z [B, T, f] and the two reductions the objective needs
    from them (z.c and |z|^2) with their backward.

    Where the steps fill one dense block with features innermost (contiguous, an LSTM's
    time-major output, a broadcast code narrowed to its distinct steps), they are one 2-D
    [N, f] view in memory order and each reduction and gradient is a single BLAS-backed op;
    other layouts go through the general, layout-aware :func:`losses._dot_and_norm`.
    """

    def __init__(self, z: torch.Tensor):
        self.z = z
        self.u, self.reps = distinct_steps(z)
        self.rows = self._dense_rows(self.u)

    @staticmethod
    def _dense_rows(u: torch.Tensor):
        f = u.shape[-1]
        if u.stride(-1) != 1 and f > 1:
            return None
        lead = sorted((d for d in range(u.dim() - 1) if u.shape[d] > 1),
                      key=lambda d: -u.stride(d))
        size = f
        for d in reversed(lead):
            if u.stride(d) != size:
                return None
            size *= u.shape[d]
        return u.as_strided((size // f, f), (f, 1))

    def _as_lead(self, v: torch.Tensor) -> torch.Tensor:
        """A per-step vector in memory order as a view shaped like u without its features."""
        f = self.u.shape[-1]
        return v.as_strided(self.u.shape[:-1], [st // f for st in self.u.stride()[:-1]])

    def reductions(self, c: torch.Tensor):
        if self.rows is None:
            return _dot_and_norm(self.u, c)
        return torch.mv(self.rows, c), torch.linalg.vecdot(self.rows, self.rows)

    def per_step(self, v: torch.Tensor) -> torch.Tensor:
        """A per-distinct-step tensor from :meth:`reductions`' layout to z's [B, T]."""
        if self.rows is not None:
            v = self._as_lead(v)
        return v.expand(self.z.shape[:-1]) if self.reps > 1 else v

    def grads(self, c, g_zc, g_zz, g_cc, need_z: bool, need_c: bool, host: bool):
        """dz (the per-copy gradient, broadcast over z's copies) and dc, from the gradients
        w.r.t. each distinct step's z.c and |z|^2 and the summed one w.r.t. |c|^2."""
        reps, grad_z, grad_c = self.reps, None, None
        if self.rows is None:
            grad_u, grad_c = _dot_and_norm_grads(self.u, c, g_zc, g_zz, need_z, need_c)
        elif need_z:  # dz = g_zc c + 2 g_zz z, row by row, laid out as u is
            grad_rows = torch.addcmul(torch.outer(g_zc, c), g_zz.unsqueeze(1), self.rows,
                                      value=2.0)
            grad_u = grad_rows.as_strided(self.u.shape, self.u.stride(), 0)
        if need_c:  # dc = reps (sum of g_zc z + 2 g_cc c)
            if self.rows is not None and host:  # all of it in one GEMV
                grad_c = torch.addmv(c, self.rows.T, g_zc, beta=2.0 * g_cc * reps, alpha=reps)
            else:
                if self.rows is not None:
                    grad_c = self.rows.T @ g_zc
                grad_c = (torch.add(grad_c, c, alpha=2.0 * g_cc) if host
                          else torch.addcmul(grad_c, c, g_cc, value=2.0))
                if reps > 1:
                    grad_c = grad_c.mul_(reps)
        if need_z:
            grad_z = grad_u.expand(self.z.shape) if reps > 1 else grad_u
        return grad_z, grad_c


class _PaperLoss(torch.autograd.Function):
    """The k = 1 paper plug-in's training loss from z [B, T, f], the center c and the
    threshold's raw parameter theta: total = log(mean_b sum_t (mapping_t + cluster_t) + 1e-8),
    with the batch means of the mapping and cluster sums, and (with ``distances``) the per-step
    squared distances [B, T] the radius is fitted from alongside. A broadcast z (a per-window
    code) is computed once per window."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, z, c, theta, r2, tau: float, margin: float, nu_r: float, use_mapping: bool,
                use_cluster: bool, distances: bool):
        steps = _Steps(z)
        zc, zz = steps.reductions(c)
        xp = _math_for(zc)
        cc = xp.scalar(torch.dot(c, c))
        r2 = None if r2 is None else xp.scalar(r2)
        th = threshold_constants(theta, margin, xp.host)
        zz_a = xp.array(zz)
        s = _step_terms(xp, xp.array(zc), zz_a, cc, th, tau)
        per_window = steps.reps / z.shape[0]  # sums over distinct steps -> means over the batch
        mapping = xp.scalar(distance_mapping(s.dist2, r2, nu_r).sum()) * per_window
        cluster = -xp.scalar(s.neg_loss.sum()) * per_window
        used = (mapping + cluster if use_mapping and use_cluster
                else mapping if use_mapping else cluster)
        denom = used + 1e-8
        outputs = tuple(xp.tensor(v, like=z) for v in (xp.scalar_log(denom), mapping, cluster))
        dist2 = steps.per_step(xp.tensor(s.dist2, like=z)) if distances else None
        if distances:
            ctx.mark_non_differentiable(dist2)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(c)
        ctx.steps, ctx.xp, ctx.s, ctx.th, ctx.zz, ctx.cc, ctx.r2 = steps, xp, s, th, zz_a, cc, r2
        ctx.denom, ctx.nu_r, ctx.inv_b = denom, nu_r, 1.0 / z.shape[0]
        ctx.use_mapping, ctx.use_cluster = use_mapping, use_cluster
        return (*outputs, dist2)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g_total, g_mapping, g_cluster, _g_dist2):
        (c,) = ctx.saved_tensors
        xp, steps = ctx.xp, ctx.steps
        need_z, need_c, need_theta = ctx.needs_input_grad[:3]
        g_total, g_mapping, g_cluster = (None if g is None else xp.scalar(g)
                                         for g in (g_total, g_mapping, g_cluster))
        scale = None if g_total is None else g_total / ctx.denom  # d log(used) / d used
        a_d = _term_weight(scale if ctx.use_mapping else None, g_mapping, ctx.inv_b)
        a_l = _term_weight(scale if ctx.use_cluster else None, g_cluster, ctx.inv_b)
        g_zc, g_zz, g_cc, theta_sum = _step_grads(xp, ctx.s, ctx.zz, ctx.cc, ctx.th, a_d, a_l,
                                                  ctx.r2, ctx.nu_r, need_theta)
        grad_theta = grad_z = grad_c = None
        if theta_sum is not None:
            g = xp.scalar(theta_sum) * (a_l * (steps.reps * ctx.th.dnu_dtheta))
            grad_theta = xp.tensor(g, like=c)
        if g_zc is not None and (need_z or need_c):
            grad_z, grad_c = steps.grads(c, xp.tensor(g_zc, like=c), xp.tensor(g_zz, like=c),
                                         xp.scalar(g_cc), need_z, need_c, xp.host)
        return grad_z, grad_c, grad_theta, None, None, None, None, None, None, None


def paper_loss(z: torch.Tensor, c: torch.Tensor, theta: torch.Tensor, tau: float, margin: float,
               r2=None, nu_r: float = 1.0, use_mapping: bool = True, use_cluster: bool = True,
               distances: bool = False):
    """(total, batch mean of the mapping sums, batch mean of the cluster sums, per-step squared
    distances [B, T] or None without ``distances``) for the k = 1 paper variant; see
    :class:`_PaperLoss`."""
    return _PaperLoss.apply(z, c, theta, r2, tau, margin, nu_r, use_mapping, use_cluster,
                            distances)


def paper_terms(zc: torch.Tensor, zz: torch.Tensor, cc: torch.Tensor, theta: torch.Tensor,
                tau: float, margin: float):
    """(|z - c|^2, OD loss) per step for the paper variant. With gradients through the readable
    composition; without (scoring, validation) through the fused forward."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (zc, zz, cc, theta)):
        nu, omn = bounded_nu(theta, margin)
        return (distance_from_dot(zc, zz, cc),
                od_loss_terms(cosine_from_dot(zc, zz, cc), nu, omn, tau))
    xp = _math_for(zc)
    s = _step_terms(xp, xp.array(zc), xp.array(zz), xp.scalar(cc),
                    threshold_constants(theta, margin, xp.host), tau)
    return xp.tensor(s.dist2, like=zc), xp.tensor(-s.neg_loss, like=zc)
