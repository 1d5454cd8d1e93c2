"""Memory-order helpers for the plug-in's hot paths: work on an embedding in the order its memory
runs, and on its distinct steps only.

Backbones hand over views, not contiguous [B, T, f] tensors: an LSTM's batch-first output is
time-major in memory, a Conv1d's features are not innermost, a per-window code (USAD's) is
broadcast over time with stride 0. Each helper here gives the same numbers as the plain form on
any such layout (tests/test_madcluster.py, tests/test_fused.py) and only changes the walk.
"""

from __future__ import annotations

import numpy as np
import torch


class _MemoryOrder:
    """z's axes permuted into memory order. Backbones hand over views (an LSTM's batch-first
    output is time-major in memory, a Conv1d's features are not innermost); reductions over the
    feature axis of such a view run three to four times slower than on the same memory walked
    in order, and einsum on them copies z outright."""

    def __init__(self, z: torch.Tensor):
        self.order = sorted(range(z.dim()), key=lambda d: -z.stride(d))
        self.zm = z.permute(self.order)
        self.f = self.order.index(z.dim() - 1)  # where the feature axis went
        self.lead = [d for d in self.order if d != z.dim() - 1]

    def feature_shaped(self, c: torch.Tensor) -> torch.Tensor:
        """c [f] shaped to broadcast along the feature axis of zm."""
        shape = [1] * self.zm.dim()
        shape[self.f] = -1
        return c.view(shape)

    def to_memory(self, g: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like z without its feature axis, in zm's order, feature axis kept
        as size 1."""
        return g.permute(self.lead).unsqueeze(self.f)

    def back(self, t: torch.Tensor, with_feature: bool) -> torch.Tensor:
        """zm-ordered tensor back to z's axis order (a view)."""
        order = self.order if with_feature else self.lead
        ranks = sorted(range(len(order)), key=lambda i: order[i])
        return t.permute(ranks)


def distinct_steps(z: torch.Tensor):
    """(u, reps): z with its broadcast axes (stride 0, e.g. USAD's per-window code expanded over
    time) narrowed to one entry, and how many entries of z each entry of u stands for. Work on
    u is the same work on z without the copies."""
    u, reps = z, 1
    shape, strides = z.shape, z.stride()  # read once: each call is a trip into torch
    for d in range(len(shape) - 1):
        if strides[d] == 0 and shape[d] > 1:
            reps *= shape[d]
            u = u.narrow(d, 0, 1)
    return u, reps


class _DotAndSquaredNorm(torch.autograd.Function):
    """(z . c, |z|^2) over the last axis in one op; backward is one fused pass,
    dz = g_zc c + 2 g_zz z, instead of three separate broadcast multiplies."""

    # Under CUDA autocast (train.amp) the plug-in's distances run in float32, and backward
    # sees the same dtypes as forward.
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, z, c):
        ctx.save_for_backward(z, c)
        m = _MemoryOrder(z)
        last = m.zm.dim() - 1
        if m.f == last:  # a GEMV over rows (and counted as MACs by the FLOP counter)
            zc = m.zm @ c
        elif m.f == last - 1:  # features one axis out (a Conv1d's output): a batched GEMV
            zc = c @ m.zm
        else:
            zc = torch.linalg.vecdot(m.zm, m.feature_shaped(c), dim=m.f)
        zz = torch.linalg.vecdot(m.zm, m.zm, dim=m.f)
        return m.back(zc, False), m.back(zz, False)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g_zc, g_zz):
        z, c = ctx.saved_tensors
        m = _MemoryOrder(z)
        gc = m.to_memory(g_zc)
        grad_z = grad_c = None
        if ctx.needs_input_grad[0]:
            grad = torch.addcmul(gc * m.feature_shaped(c), m.to_memory(g_zz), m.zm, value=2.0)
            grad_z = m.back(grad, True)
        if ctx.needs_input_grad[1]:
            last = m.zm.dim() - 1
            if m.f == last and m.zm.is_contiguous():  # rows of zm weighted by g: one GEMV
                grad_c = m.zm.reshape(-1, m.zm.shape[-1]).T @ gc.reshape(-1)
            elif m.f != last:  # reduce the innermost axis first, where the memory runs
                grad_c = torch.linalg.vecdot(m.zm, gc, dim=last)
                grad_c = grad_c.sum(dim=[d for d in range(last) if d != m.f])
            else:  # overlapping or gapped strides: the plain form
                grad_c = (m.zm * gc).sum(dim=list(range(last)))
        return grad_z, grad_c


def dot_and_squared_norm(z: torch.Tensor, c: torch.Tensor):
    """(z . c [...], |z|^2 [...]) for z [..., f] and c [f]."""
    return _DotAndSquaredNorm.apply(z, c)


def step_axes_in_memory_order(u: np.ndarray):
    """(u [B', T', f] with its two step axes in memory order, whether they were swapped): an
    LSTM's batch-first output is time-major in memory, and the compiled kernels sweep their
    first two axes in index order."""
    swap = u.shape[0] > 1 and u.shape[1] > 1 and u.strides[0] < u.strides[1]
    return (u.transpose(1, 0, 2) if swap else u), swap


def step_axes_in_index_order(t: torch.Tensor, swap: bool) -> torch.Tensor:
    """A per-step result [B', T'] of the kernels back in z's axis order (a view)."""
    return t.transpose(0, 1) if swap else t
