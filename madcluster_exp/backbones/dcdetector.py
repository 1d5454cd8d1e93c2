"""DCdetector (Yang et al., KDD 2023): dual-attention contrastive representation learning.

Per patch size p (T = N p): RevIN, channel independence, two views of each channel's window,
"patch-wise" (N tokens of p values) and "in-patch" (p tokens of N values, the reference's
``(p n)`` split), each embedded and attended with Q/K projections shared between the views.
The N x N patch-wise map is up-sampled to T x T by repeating every entry in a p x p block, the
p x p in-patch map by tiling it N x N times; both are averaged over channels, the in-patch map is
row-normalised (it then equals tile / N). Loss = prior_loss - series_loss with stop-gradients,
no reconstruction. Score per position: softmax over time of -(KL(S, P) + KL(P, S)) * temperature
(the original per-position score, not the constant 1/T of the MADCluster copy).

Cost: the reference materialises the T x T maps, per layer and patch size. Both maps are
block-structured, so each row's KL factorises:
  KL(S_up || P_up)[i] = p * sum_m A[a,m] log(A[a,m]+e) - (sum_m A[a,m]) * sum_s log(P[r,s]+e)
  KL(P_up || S_up)[i] = N * sum_s P[r,s] log(P[r,s]+e) - (sum_s P[r,s]) * sum_m log(A[a,m]+e)
with a = i // p, r = i % p. That is O(N^2 + p^2) per row block instead of O(T^2) per row, with
identical values (tested against the materialised form).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from einops import rearrange, reduce, repeat
from omegaconf import DictConfig
from torch import nn

from madcluster_exp.backbones.base import Backbone, BackboneOutput
from madcluster_exp.backbones.layers import KL_EPS, DataEmbedding, RevIN, association_kl


def factorised_kl(a: torch.Tensor, b: torch.Tensor, p: int, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row-wise KL(S_up || P_up) and KL(P_up || S_up), each [B, T] (mean over heads), where
    S_up = block-repeat(a) and P_up = tile(b) / n, without building either T x T map.

    a: [B, H, N, N] patch-wise attention (rows sum to 1), b: [B, H, p, p] in-patch attention.
    """
    bn = b / n  # the tiled map's row-normalisation
    a_log = torch.log(a + KL_EPS)
    b_log = torch.log(bn + KL_EPS)
    a_rows = a.sum(-1)  # [B, H, N]
    b_rows = bn.sum(-1)  # [B, H, p]
    kl_sp = p * (a * a_log).sum(-1).unsqueeze(-1) - a_rows.unsqueeze(-1) * b_log.sum(-1).unsqueeze(-2)
    kl_ps = n * (bn * b_log).sum(-1).unsqueeze(-2) - b_rows.unsqueeze(-2) * a_log.sum(-1).unsqueeze(-1)
    # [B, H, N, p] -> [B, H, T] with i = a * p + r, then mean over heads.
    flat = lambda t: rearrange(t, "b h a r -> b h (a r)").mean(dim=1)  # noqa: E731
    return flat(kl_sp), flat(kl_ps)


def materialised_kl(a: torch.Tensor, b: torch.Tensor, p: int, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The reference's way: build both T x T maps, then the row-wise KL. For tests and the
    benchmark baseline only."""
    s_up = repeat(a, "b h m k -> b h (m r1) (k r2)", r1=p, r2=p)
    p_up = b.repeat(1, 1, n, n)
    p_up = p_up / p_up.sum(dim=-1, keepdim=True)
    return association_kl(s_up, p_up), association_kl(p_up, s_up)


def pair_kl(a: torch.Tensor, pr: torch.Tensor, p: int, n: int):
    """(KL(S||P), KL(P||S)) per position for one map pair; p == 0 marks maps that are already
    up-sampled and normalised (the materialising baseline)."""
    if p == 0:
        return association_kl(a, pr), association_kl(pr, a)
    return factorised_kl(a, pr, p, n)


class DualAttentionLayer(nn.Module):
    """Q and K projections shared by the patch-wise and the in-patch view."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.d_k = d_model // n_heads
        self.query = nn.Linear(d_model, self.d_k * n_heads)
        self.key = nn.Linear(d_model, self.d_k * n_heads)
        self.dropout = nn.Dropout(dropout)

    def attend(self, x: torch.Tensor) -> torch.Tensor:  # [B', L, d] -> [B', H, L, L]
        q = rearrange(self.query(x), "b l (h d) -> b h l d", h=self.n_heads)
        k = rearrange(self.key(x), "b l (h d) -> b h l d", h=self.n_heads)
        return self.dropout(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d_k), dim=-1))

    def forward(self, x_size: torch.Tensor, x_num: torch.Tensor):
        return self.attend(x_size), self.attend(x_num)


class DCdetector(Backbone):
    family = "transformer"
    embed_taps = ("patch_attention", "input_embedding")

    def __init__(self, n_channels: int, cfg: DictConfig):
        super().__init__(n_channels, cfg)
        self.patch_sizes = [int(p) for p in cfg.patch_sizes]
        bad = [p for p in self.patch_sizes if p < 1 or self.window % p]
        if bad:
            raise ValueError(f"backbone.patch_sizes={self.patch_sizes}: {bad} do not divide "
                             f"backbone.window={self.window}; every patch size must")
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"backbone.d_model={cfg.d_model} must be divisible by "
                             f"backbone.n_heads={cfg.n_heads}")
        d = int(cfg.d_model)
        self.revin = RevIN(n_channels) if cfg.revin else None
        self.embed_size = nn.ModuleList(DataEmbedding(p, d, cfg.dropout) for p in self.patch_sizes)
        self.embed_num = nn.ModuleList(DataEmbedding(self.window // p, d, cfg.dropout)
                                       for p in self.patch_sizes)
        self.layers = nn.ModuleList(DualAttentionLayer(d, cfg.n_heads, cfg.dropout)
                                    for _ in range(cfg.layers))
        # Only built when tapped: it feeds nothing else, so it would be dead weight otherwise.
        self.embed_window = (DataEmbedding(n_channels, d, cfg.dropout)
                             if self.embed_tap == "input_embedding" else None)
        self.temperature = float(cfg.temperature)
        self.embed_dim = d
        self.materialise = bool(cfg.materialise)

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        b, t, c = x.shape
        if self.revin is not None:
            x = self.revin(x)
        maps = []  # (A [B,H,N,N], P [B,H,p,p], p, N) per patch size and layer
        taps = []
        for i, p in enumerate(self.patch_sizes):
            n = t // p
            x_size = self.embed_size[i](rearrange(x, "b (n p) c -> (b c) n p", p=p))
            x_num = self.embed_num[i](rearrange(x, "b (p n) c -> (b c) p n", p=p))
            for layer in self.layers:
                a, pr = layer(x_size, x_num)
                if self.materialise:
                    # Benchmark baseline: what the reference does, up-sample every channel's
                    # maps to T x T first, then average over channels (same values, T^2 memory).
                    s_up = repeat(a, "bc h m k -> bc h (m r1) (k r2)", r1=p, r2=p)
                    p_up = pr.repeat(1, 1, n, n)
                    p_up = reduce(p_up, "(b c) h i j -> b h i j", "mean", c=c)
                    maps.append((reduce(s_up, "(b c) h i j -> b h i j", "mean", c=c),
                                 p_up / p_up.sum(dim=-1, keepdim=True), 0, 0))
                    continue
                maps.append((reduce(a, "(b c) h m k -> b h m k", "mean", c=c),
                             reduce(pr, "(b c) h m k -> b h m k", "mean", c=c), p, n))
            if self.embed_tap == "patch_attention":
                # Last layer's patch-wise attention applied to the patch embeddings, each patch
                # spread back over its p steps, averaged over channels.
                # Average over channels before spreading patches over steps (both linear, so
                # the order is free): never builds the [B, C, T, d] tensor.
                ctx = reduce(a.mean(dim=1) @ x_size, "(b c) n d -> b n d", "mean", c=c)
                taps.append(repeat(ctx, "b n d -> b (n p) d", p=p))
        z = torch.stack(taps).mean(0) if taps else self.embed_window(x)
        return BackboneOutput(z=z, aux={"maps": maps})

    def discrepancies(self, out: BackboneOutput):
        """(series_loss, prior_loss), averaged over maps, stop-gradients as the reference:
        series_loss trains the patch-wise view against a fixed in-patch view, prior_loss the
        reverse. Their values are equal (a symmetric KL); their gradients are not."""
        series_loss = prior_loss = 0.0
        for a, pr, p, n in out.aux["maps"]:
            s_to_fixed_p, fixed_p_to_s = pair_kl(a, pr.detach(), p, n)
            fixed_s_to_p, p_to_fixed_s = pair_kl(a.detach(), pr, p, n)
            series_loss = series_loss + s_to_fixed_p.mean() + fixed_p_to_s.mean()
            prior_loss = prior_loss + fixed_s_to_p.mean() + p_to_fixed_s.mean()
        k = len(out.aux["maps"])
        return series_loss / k, prior_loss / k

    def loss(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        """prior_loss - series_loss (zero in value, a minimax in gradient)."""
        series_loss, prior_loss = self.discrepancies(out)
        return prior_loss - series_loss

    def score(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        dis = 0.0
        for a, pr, p, n in out.aux["maps"]:
            kl_sp, kl_ps = pair_kl(a, pr, p, n)
            dis = dis + (kl_sp + kl_ps) * self.temperature
        return torch.softmax(-dis, dim=-1)
