"""The k = 1 paper objective as one autograd op on CPU: the forward is one call into the
compiled loops of :mod:`madcluster_exp.madcluster.fast.kernels`, the backward another. Same
values and gradients as the readable composition in :mod:`madcluster_exp.madcluster.losses`
(tested to 1e-10 in float64, gradcheck included). Where it runs is decided in one place,
:func:`madcluster_exp.madcluster.fast.use_fast_path`.

Why it exists: on a small backbone the composition's ~120 small-tensor dispatches per step cost
more than its arithmetic, and they run cold inside a training step (see :mod:`.kernels`).
"""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import torch

from madcluster_exp.madcluster.fast.memory_order import (
    distinct_steps,
    step_axes_in_index_order,
    step_axes_in_memory_order,
)

_KERNELS = None  # the kernels module once imported, False if numba cannot be imported


def kernels():
    """The compiled kernels, imported on first use (numba's import takes ~0.2 s); None, with
    one warning, where numba is not importable."""
    global _KERNELS
    if _KERNELS is None:
        try:
            _KERNELS = importlib.import_module("madcluster_exp.madcluster.fast.kernels")
        except ImportError as err:  # numba is a declared dependency; say what it costs
            warnings.warn(
                f"numba is not importable ({err}); MADCluster falls back to its "
                "composed loss, several times slower per step on small backbones",
                RuntimeWarning,
                stacklevel=2,
            )
            _KERNELS = False
    return _KERNELS or None


def _host(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's memory as a numpy array (no copy)."""
    return t.detach().numpy()


# Placeholders for outputs a call does not ask for: one dtype and rank per argument keep the
# kernels' compiled signatures few.
_NONE = {
    dt: {rank: np.empty((0,) * rank, dtype=dt) for rank in (0, 1, 2, 3)}
    for dt in (np.float32, np.float64)
}


def _none(t: torch.Tensor, rank: int) -> np.ndarray:
    return _NONE[np.float32 if t.dtype == torch.float32 else np.float64][rank]


def _term_weight(from_total, from_mean, inv_b: float):
    """d(outputs)/d(one step's term): each of the B*T terms enters a batch mean with 1/B."""
    parts = [g for g in (from_total, from_mean) if g is not None]
    if not parts:
        return None
    return sum(parts) * inv_b


class _PaperLoss(torch.autograd.Function):
    """The k = 1 paper plug-in's training loss from z [B, T, f], the center c and the
    threshold's raw parameter theta: total = log(mean_b sum_t (mapping_t + cluster_t) + 1e-8),
    with the batch means of the mapping and cluster sums, and (with ``distances``) the per-step
    squared distances [B, T] the radius is fitted from. A broadcast z (a per-window code such as
    USAD's) is computed once per window."""

    @staticmethod
    def forward(
        ctx,
        z,
        c,
        theta,
        r2,
        tau: float,
        margin: float,
        nu_r: float,
        use_mapping: bool,
        use_cluster: bool,
        distances: bool,
    ):
        u, reps = distinct_steps(z)
        un, swap = step_axes_in_memory_order(_host(u))
        cn, th = _host(c), theta.item()
        soft = r2 is not None
        r2 = float(r2) if soft else 0.0
        out = torch.empty(3, dtype=z.dtype)
        dist = torch.empty(un.shape[:2], dtype=z.dtype) if distances else None
        denom, work = kernels().loss_forward(
            un,
            cn,
            th,
            margin,
            tau,
            soft,
            r2,
            nu_r,
            use_mapping,
            use_cluster,
            reps / z.shape[0],
            out.numpy(),
            _none(z, 2) if dist is None else dist.numpy(),
        )
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(z, c, theta)  # for autograd's check that none changed since
        ctx.un, ctx.cn, ctx.work, ctx.swap, ctx.z_shape = un, cn, work, swap, z.shape
        ctx.args = (th, margin, tau, soft, r2, nu_r)
        ctx.use, ctx.denom, ctx.reps = (use_mapping, use_cluster), denom, reps
        if dist is not None:
            dist = step_axes_in_index_order(dist, swap)
            if reps > 1:
                dist = dist.expand(z.shape[:2])
            ctx.mark_non_differentiable(dist)
        return (*out.unbind(), dist)

    @staticmethod
    def backward(ctx, g_total, g_mapping, g_cluster, _g_dist2):
        z, c, theta = ctx.saved_tensors
        need_z, need_c, need_theta = ctx.needs_input_grad[:3]
        inv_b = 1.0 / ctx.z_shape[0]
        scale = None if g_total is None else g_total.item() / ctx.denom  # d log(used)/d used
        use_mapping, use_cluster = ctx.use
        a_d = _term_weight(
            scale if use_mapping else None, None if g_mapping is None else g_mapping.item(), inv_b
        )
        a_l = _term_weight(
            scale if use_cluster else None, None if g_cluster is None else g_cluster.item(), inv_b
        )
        need_theta = need_theta and a_l is not None  # only the OD loss depends on theta
        if a_d is None and a_l is None:
            return (None,) * 10
        # grad_u in the kernel's (memory) order, so it has z's layout once ordered back
        grad_u = torch.empty(ctx.un.shape, dtype=z.dtype) if need_z else None
        grad_c = torch.empty(c.shape, dtype=c.dtype) if need_c else None
        grad_theta = torch.empty((), dtype=theta.dtype) if need_theta else None
        kernels().loss_backward(
            ctx.un,
            ctx.cn,
            ctx.work,
            *ctx.args,
            a_d is not None,
            a_d or 0.0,
            a_l is not None,
            a_l or 0.0,
            float(ctx.reps),
            need_z,
            need_c,
            need_theta,
            _none(z, 3) if grad_u is None else grad_u.numpy(),
            _none(c, 1) if grad_c is None else grad_c.numpy(),
            _none(theta, 0) if grad_theta is None else grad_theta.numpy(),
        )
        if grad_u is not None:
            grad_u = step_axes_in_index_order(grad_u, ctx.swap)
            if ctx.reps > 1:
                grad_u = grad_u.expand(ctx.z_shape)
        return grad_u, grad_c, grad_theta, None, None, None, None, None, None, None


def paper_loss(
    z: torch.Tensor,
    c: torch.Tensor,
    theta: torch.Tensor,
    tau: float,
    margin: float,
    r2=None,
    nu_r: float = 1.0,
    use_mapping: bool = True,
    use_cluster: bool = True,
    distances: bool = False,
):
    """(total, batch mean of the mapping sums, batch mean of the cluster sums, per-step squared
    distances [B, T] or None without ``distances``) for the k = 1 paper variant; see
    :class:`_PaperLoss`. Only where :func:`~madcluster_exp.madcluster.fast.use_fast_path` holds."""
    return _PaperLoss.apply(z, c, theta, r2, tau, margin, nu_r, use_mapping, use_cluster, distances)


@torch.no_grad()
def paper_terms(z: torch.Tensor, c: torch.Tensor, theta: torch.Tensor, tau: float, margin: float):
    """(|z - c|^2, OD loss) per step [B, T] for the paper variant, without gradients (scoring,
    validation). Only where :func:`~madcluster_exp.madcluster.fast.use_fast_path` holds."""
    u, reps = distinct_steps(z)
    un, swap = step_axes_in_memory_order(_host(u))
    dist = torch.empty(un.shape[:2], dtype=z.dtype)
    loss = torch.empty(un.shape[:2], dtype=z.dtype)
    kernels().step_terms(un, _host(c), theta.item(), margin, tau, dist.numpy(), loss.numpy())
    dist, loss = step_axes_in_index_order(dist, swap), step_axes_in_index_order(loss, swap)
    if reps > 1:
        return dist.expand(z.shape[:2]), loss.expand(z.shape[:2])
    return dist, loss
