"""DCdetector computed the reference's way: the benchmark's baseline and the tests' oracle.

The reference (github.com/DAMO-DI-ML/KDD2023-DCdetector, model/attn.py) projects d-wide tokens
to queries and keys, up-samples every channel's patch-wise map to T x T by repeating each entry
in a p x p block and the in-patch map by tiling it N x N times, averages the T x T maps over
channels and takes the row-wise KL of those. :class:`MaterialisedDCdetector` does exactly that
with the production model's weights and layers, so its loss terms, tap and gradients are what the
fast path must reproduce; its cost (T^2 memory per map) is what ``make bench`` compares against.
Only the benchmark and the tests import this module.
"""

from __future__ import annotations

from typing import Tuple

import torch
from einops import reduce, repeat

from madcluster_exp.backbones.dcdetector import DCdetector
from madcluster_exp.backbones.layers import association_kl


def materialised_kl(
    a: torch.Tensor, b: torch.Tensor, p: int, n: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row-wise KL(S_up || P_up) and KL(P_up || S_up), [B, T] each, with both T x T maps built:
    S_up = block-repeat(a [B, H, N, N]), P_up = tile(b [B, H, p, p]) row-normalised."""
    s_up = repeat(a, "b h m k -> b h (m r1) (k r2)", r1=p, r2=p)
    p_up = b.repeat(1, 1, n, n)
    p_up = p_up / p_up.sum(dim=-1, keepdim=True)
    return association_kl(s_up, p_up), association_kl(p_up, s_up)


class MaterialisedDCdetector(DCdetector):
    """DCdetector with d-wide Q/K projections and per-channel T x T maps, as the reference."""

    def factored(self) -> bool:
        return False

    def keep_maps(
        self, a: torch.Tensor, a_mean: torch.Tensor, pr: torch.Tensor, p: int, n: int, c: int
    ) -> tuple:
        """Up-sample every channel's maps to T x T first, then average over channels."""
        s_up = repeat(a, "bc h m k -> bc h (m r1) (k r2)", r1=p, r2=p)
        p_up = reduce(pr.repeat(1, 1, n, n), "(b c) h i j -> b h i j", "mean", c=c)
        return (
            reduce(s_up, "(b c) h i j -> b h i j", "mean", c=c),
            p_up / p_up.sum(dim=-1, keepdim=True),
            p,
            n,
        )

    @staticmethod
    def pair_kl(a: torch.Tensor, pr: torch.Tensor, p: int, n: int):
        """The maps are T x T already: the plain row-wise KL."""
        return association_kl(a, pr), association_kl(pr, a)
