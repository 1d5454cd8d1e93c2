"""MADCluster's fast path: the k = 1 paper objective as one op over compiled loops (:mod:`.fused`,
numba kernels in :mod:`.kernels`) and the memory-order helpers (:mod:`.memory_order`).

The readable reference is :mod:`madcluster_exp.madcluster.losses`; everything here gives its
values and gradients (tests/test_fused.py) and exists only for speed. Whether a call takes the
fast path is decided by :func:`use_fast_path` alone, which every plug-in path asks (training
loss, per-step terms for validation, score).
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

from madcluster_exp.madcluster.fast import fused
from madcluster_exp.madcluster.fast.fused import paper_loss, paper_terms
from madcluster_exp.madcluster.fast.memory_order import distinct_steps, dot_and_squared_norm

__all__ = [
    "use_fast_path",
    "composition_only",
    "paper_loss",
    "paper_terms",
    "distinct_steps",
    "dot_and_squared_norm",
]

# Set inside composition_only(); a context variable, so it holds per thread and per asyncio task.
_COMPOSITION_ONLY = contextvars.ContextVar("madcluster_composition_only", default=False)


@contextlib.contextmanager
def composition_only():
    """Within this block every plug-in path takes the composition of torch ops.

    For code that observes the plug-in through torch's dispatcher: the MAC counter
    (:func:`~madcluster_exp.detector.complexity.count_macs`, a ``FlopCounterMode``) sees torch
    ops only,
    and the compiled loops are not torch ops, so it counts inside this block. (torch offers no
    public way to ask whether a dispatch mode is active; a flag of our own, set where such a
    mode is entered, says it without one.)
    """
    token = _COMPOSITION_ONLY.set(True)
    try:
        yield
    finally:
        _COMPOSITION_ONLY.reset(token)


def use_fast_path(z: torch.Tensor, variant: str, k: int = 1) -> bool:
    """Whether the plug-in computes its objective for embedding z through the compiled op.

    All must hold: the paper variant with k = 1 (the op implements that objective only); z a
    plain tensor (not a subclass such as torch.compile's fake tensors: the loops read its
    memory) of shape [B, T, f] on the CPU, in float32 or float64; not inside
    :func:`composition_only` (the MAC counter); numba importable (otherwise one warning, and the
    composition from then on). Everywhere else, e.g. on GPUs, in bfloat16, for the reference
    variant or k > 1, the plug-in composes :mod:`~madcluster_exp.madcluster.losses`.
    """
    return (
        variant == "paper"
        and k == 1
        and type(z) is torch.Tensor
        and z.device.type == "cpu"
        and z.dtype in (torch.float32, torch.float64)
        and z.dim() == 3
        and not _COMPOSITION_ONLY.get()
        and fused.kernels() is not None
    )
