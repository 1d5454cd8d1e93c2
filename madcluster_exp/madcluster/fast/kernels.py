"""MADCluster's k = 1 paper objective on CPU as compiled loops (numba): one call for the
training loss, one for its backward, one for the per-step scores.

Why compiled loops: after the two dot products per step (z.c and |z|^2), the objective is a
chain of ~25 elementwise operations on [B, T] numbers (B numbers for USAD's per-window code),
and its backward as many again. Inside a training step each array call there costs 5 to 15 us,
however small the array: the backbone's work has evicted the interpreter's, numpy's and the
dispatcher's code and data from the caches by the time the plug-in runs (measured: the same
numpy chain takes 8x longer in a USAD step than in a tight loop). As ~80 calls that was ~7 % of
a USAD step; as one call per direction the kernels take ~20 us of it. The loops also read z once
per direction, where the array chain re-reads [B, T] temporaries ~50 times.

Everything is computed in float64 whatever z's dtype (float32 or float64), and stored back in
z's dtype. Each function mirrors the readable composition in
:mod:`madcluster_exp.madcluster.losses` term by term; the tests hold them to it (1e-10 in
float64, gradcheck, every layout, objective and component set).

``fastmath`` allows re-association and contraction only, so LLVM can vectorise the dot
products (docs/performance-notes.md); nothing assumes away NaN or infinity, so a NaN embedding still
gives a NaN loss, which the training loop's guard reports.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from madcluster_exp.madcluster.losses import Q_EPS

_JIT = dict(cache=True, nogil=True, fastmath={"reassoc", "contract"})


@numba.njit(**_JIT)
def _sigmoid(x):
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@numba.njit(**_JIT)
def threshold(theta, margin):
    """(nu, 1 - nu, f1's slope, d slope/d nu - d slope/d(1 - nu), d nu/d theta) from the
    threshold's raw parameter: nu = m + (1 - 2m) sigmoid(theta), 1 - nu computed apart (it
    rounds to 0 long before nu reaches 1), slope = (1 - nu^(1-nu)) / (1 - nu) via expm1."""
    span = 1.0 - 2.0 * margin
    s_pos = _sigmoid(theta)
    s_neg = _sigmoid(-theta)
    nu = margin + span * s_pos
    omn = margin + span * s_neg
    log_nu = math.log(nu)
    e = math.expm1(omn * log_nu)  # nu^(1-nu) - 1
    slope = -e / omn
    dslope_dnu = -(e + 1.0) / nu
    dslope_domn = -((e + 1.0) * log_nu * omn - e) / (omn * omn)
    dnu_dtheta = span * s_pos * s_neg  # not (nu - m)(1 - nu - m) / span: nu - m cancels
    return nu, omn, slope, dslope_dnu - dslope_domn, dnu_dtheta


@numba.njit(**_JIT)
def _clamp_min(x, lo):
    # NaN passes through, as in torch.clamp_min: a NaN embedding must give a NaN loss.
    return lo if x < lo else x


@numba.njit(**_JIT)
def _squared_norm(c):
    s = 0.0
    for k in range(c.shape[0]):
        s += float(c[k]) * float(c[k])
    return s


@numba.njit(**_JIT)
def _dots(u, c, zc, zz):
    """z.c and |z|^2 of every step of u [R0, R1, f] into zc and zz [R0 R1], in u's index order
    (the caller hands u over in memory order, so this is one sweep through memory)."""
    n = 0
    for i in range(u.shape[0]):
        for j in range(u.shape[1]):
            a = 0.0
            s = 0.0
            for k in range(u.shape[2]):
                v = float(u[i, j, k])
                a += v * float(c[k])
                s += v * v
            zc[n] = a
            zz[n] = s
            n += 1


@numba.njit(**_JIT)
def _cosine_q(zc, zz, cc, slope, q, a1):
    """q = (1 + cos)/2 clamped to [Q_EPS, 1] (``cosine_from_dot``) and f1(q) = 1 + slope (q - 1)
    per step. No loop-carried work, so LLVM may vectorise it."""
    for n in range(zc.shape[0]):
        pc = _clamp_min(zz[n] * cc, 1e-16)
        qn = _clamp_min(zc[n] / math.sqrt(pc) * 0.5 + 0.5, Q_EPS)
        qn = 1.0 if qn > 1.0 else qn
        q[n] = qn
        a1[n] = (qn - 1.0) * slope + 1.0


@numba.njit(**_JIT)
def _logs(x, out):
    # A loop of its own: scalar libm calls pipeline well when nothing else waits on them.
    for n in range(x.shape[0]):
        out[n] = math.log(x[n])


@numba.njit(**_JIT)
def _mapping(d, soft, r2, nu_r):
    """Distance mapping of one clamped squared distance (``losses.distance_mapping``)."""
    if soft:
        return r2 + _clamp_min(d - r2, 0.0) / nu_r
    return d


@numba.njit(**_JIT)
def _distance(zc, zz, cc):
    """|z - c|^2 from the dot products, clamped at 0 (``distance_from_dot``)."""
    return _clamp_min(zz - 2.0 * zc + cc, 0.0)


@numba.njit(**_JIT)
def _od_loss(q, log_q, log_a1, nu, omn, tau):
    """One step's OD loss from q, log q and log f1(q) (``od_loss_terms``)."""
    ps = 1.0 - tau if q >= nu else tau
    log_f2 = log_q * omn
    return -(log_f2 + ps * (log_a1 - log_f2))


@numba.njit(**_JIT)
def _prepare(u, c, theta, margin):
    """Per-step pieces the loss and the scores need, as float64 rows [5, N]: z.c, |z|^2, q,
    log q, log f1(q); with |c|^2, nu and 1 - nu."""
    nu, omn, slope, _, _ = threshold(theta, margin)
    cc = _squared_norm(c)
    n = u.shape[0] * u.shape[1]
    work = np.empty((5, n))
    zc, zz, q, log_q, log_a1 = work[0], work[1], work[2], work[3], work[4]
    _dots(u, c, zc, zz)
    _cosine_q(zc, zz, cc, slope, q, log_a1)  # f1(q) for now, its log below
    _logs(q, log_q)
    _logs(log_a1, log_a1)
    return work, cc, nu, omn


@numba.njit(**_JIT)
def loss_forward(
    u, c, theta, margin, tau, soft, r2, nu_r, use_mapping, use_cluster, weight, out, dist
):
    """u [R0, R1, f]: the distinct steps of z, in memory order. Writes out[0] =
    log(used + 1e-8), out[1] the mapping and out[2] the cluster term, each a sum over u's steps
    times ``weight`` (copies per step / B, so a batch mean of per-window sums); fills dist
    [R0, R1] with |z - c|^2 unless it is empty. Returns used + 1e-8 and the per-step rows the
    backward reuses."""
    work, cc, nu, omn = _prepare(u, c, theta, margin)
    zc, zz, q, log_q, log_a1 = work[0], work[1], work[2], work[3], work[4]
    want = dist.size > 0
    r1 = u.shape[1]
    msum = 0.0
    lsum = 0.0
    for n in range(zc.shape[0]):
        d = _distance(zc[n], zz[n], cc)
        if want:
            dist[n // r1, n % r1] = d
        msum += _mapping(d, soft, r2, nu_r)
        lsum += _od_loss(q[n], log_q[n], log_a1[n], nu, omn, tau)
    mapping = msum * weight
    cluster = lsum * weight
    used = 0.0
    if use_mapping:
        used += mapping
    if use_cluster:
        used += cluster
    denom = used + 1e-8
    out[0] = math.log(denom)
    out[1] = mapping
    out[2] = cluster
    return denom, work


@numba.njit(**_JIT)
def loss_backward(
    u,
    c,
    work,
    theta,
    margin,
    tau,
    soft,
    r2,
    nu_r,
    use_d,
    a_d,
    use_l,
    a_l,
    reps,
    need_z,
    need_c,
    need_theta,
    grad_u,
    grad_c,
    grad_theta,
):
    """Gradients of the loss whose steps' mapping terms carry weight ``a_d`` and OD losses
    ``a_l`` (``use_d``/``use_l`` False: no gradient flows there), from the forward's ``work``
    rows. Writes, as asked, grad_u [R0, R1, f] (dz = g_zc c + 2 g_zz z per step), grad_c [f]
    (reps times the sum over steps of g_zc z + 2 g_cc c) and the 0-d grad_theta (only with
    ``use_l``)."""
    nu, omn, slope, dslope, dnu_dtheta = threshold(theta, margin)
    cc = _squared_norm(c)
    zc, zz, log_q = work[0], work[1], work[3]
    n_steps = zc.shape[0]
    if use_d and soft:
        a_d = a_d / nu_r
    g_zc = np.zeros(n_steps)  # d/d(z.c) per step
    g_zz = np.zeros(n_steps)  # d/d|z|^2 per step
    gcc_sum = 0.0
    theta_sum = 0.0
    # One loop per term, branch-free (selects, not ifs). The mapping's runs faster with g_zc and
    # g_zz as arrays of their own than as rows of one; the OD loss's, with its divisions and
    # square root, does not (measured: docs/performance-notes.md).
    if use_d:
        for n in range(n_steps):
            d_raw = zz[n] - 2.0 * zc[n] + cc
            # the clamp of |z - c|^2 at 0; soft-boundary: only distances beyond R move it
            keep = d_raw >= 0.0 and (not soft or d_raw >= r2)
            w = a_d if keep else 0.0
            g_zz[n] = w
            g_zc[n] = -2.0 * w
            gcc_sum += w
    if use_l:
        for n in range(n_steps):
            prod = zz[n] * cc
            pc = _clamp_min(prod, 1e-16)
            root = math.sqrt(pc)
            cos = zc[n] / root
            q_raw = cos * 0.5 + 0.5
            q = _clamp_min(q_raw, Q_EPS)
            q = 1.0 if q > 1.0 else q
            ps = 1.0 - tau if q >= nu else tau
            inv_a1 = 1.0 / ((q - 1.0) * slope + 1.0)
            # -d loss/d q = ps slope / f1(q) + (1 - ps)(1 - nu) / q, through q's clamp
            m = omn / q
            m = m + ps * (inv_a1 * slope - m)
            g_cos = m * (a_l * -0.5) if q == q_raw else 0.0
            # cos = zc / sqrt(max(zz cc, 1e-16)), through that clamp
            g_prod = g_cos * cos / pc * -0.5 if prod == pc else 0.0
            g_zc[n] += g_cos / root
            g_zz[n] += g_prod * cc
            gcc_sum += g_prod * zz[n]
            # theta moves f1's slope and 1 - nu: d loss/d theta = dnu/dtheta *
            # [(1 - ps) log q - ps (q - 1) / f1(q) (dslope/dnu - dslope/d(1 - nu))]
            theta_sum += log_q[n] + ps * ((q - 1.0) * inv_a1 * -dslope - log_q[n])
    f = u.shape[2]
    acc = np.zeros(f)  # float64 sums for grad_c
    n = 0
    for i in range(u.shape[0]):  # one sweep through z for both gradients
        for j in range(u.shape[1]):
            a = g_zc[n]
            b2 = 2.0 * g_zz[n]
            if need_z and need_c:
                for k in range(f):
                    v = float(u[i, j, k])
                    grad_u[i, j, k] = a * float(c[k]) + b2 * v
                    acc[k] += a * v
            elif need_z:
                for k in range(f):
                    grad_u[i, j, k] = a * float(c[k]) + b2 * float(u[i, j, k])
            elif need_c:
                for k in range(f):
                    acc[k] += a * float(u[i, j, k])
            n += 1
    if need_c:
        for k in range(f):
            grad_c[k] = reps * (acc[k] + 2.0 * gcc_sum * float(c[k]))
    if need_theta:
        grad_theta[()] = theta_sum * a_l * reps * dnu_dtheta


@numba.njit(**_JIT)
def step_terms(u, c, theta, margin, tau, dist, loss):
    """Per-step |z - c|^2 and OD loss of u [R0, R1, f] (memory order) into dist and loss
    [R0, R1] (scoring and validation: no gradients)."""
    work, cc, nu, omn = _prepare(u, c, theta, margin)
    zc, zz, q, log_q, log_a1 = work[0], work[1], work[2], work[3], work[4]
    r1 = u.shape[1]
    for n in range(zc.shape[0]):
        i = n // r1
        j = n % r1
        dist[i, j] = _distance(zc[n], zz[n], cc)
        loss[i, j] = _od_loss(q[n], log_q[n], log_a1[n], nu, omn, tau)
