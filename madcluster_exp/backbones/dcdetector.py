"""DCdetector (Yang et al., KDD 2023): dual-attention contrastive representation learning.

Per patch size p (T = N p): RevIN (non-affine, as the original: its affine weights are
constant ones and zeros, never trained), channel independence, two views of each channel's window,
"patch-wise" (N tokens of p values) and "in-patch" (p tokens of N values, the reference's
``(p n)`` split), each embedded and attended with Q/K projections shared between the views.
The N x N patch-wise map is up-sampled to T x T by repeating every entry in a p x p block, the
p x p in-patch map by tiling it N x N times; both are averaged over channels, the in-patch map is
row-normalised (it then equals tile / N). Loss = prior_loss - series_loss with stop-gradients,
no reconstruction. Score per position: softmax over time of -(KL(S, P) + KL(P, S)) * temperature
(the original per-position score, not the constant 1/T of the MADCluster copy).

Cost. Two exact rewrites make training many times faster than the reference's way and far
smaller in memory (figures: docs/benchmarks.md, ``make bench``), with the same loss values and
gradients (tested; |delta| < 1e-6 at the reference configuration):

1. Scores without d-wide tokens. The reference's layers all read the same embeddings (no
   stacking), and an embedding is linear in its patch: X = u W + pos with u the circularly
   unfolded patch values (3 x token width: 6 to 150 here, against d = 256). So
   Q K^T = (u G + H) u^T + u F + Z with G, F, H, Z built once per step from the weights
   (``DualAttentionLayer.attend_factored``): O(L F (F + L)) per sequence instead of O(L d^2).
   Embedding dropout would break this, so with ``dropout > 0`` training takes the direct path.
2. No T x T maps. The reference materialises them, per layer and patch size. Both maps are
   block-structured, so each row's KL factorises:
     KL(S_up || P_up)[i] = p sum_m A[a,m] log(A[a,m]+e) - (sum_m A[a,m]) sum_s log(P[r,s]+e)
     KL(P_up || S_up)[i] = N sum_s P[r,s] log(P[r,s]+e) - (sum_s P[r,s]) sum_m log(A[a,m]+e)
   with a = i // p, r = i % p: O(N^2 + p^2) per row block instead of O(T^2) per row, with
   identical values (tested against the materialised form).

The reference's way (d-wide projections, T x T maps) is ``MaterialisedDCdetector`` in
``madcluster_exp.bench.dcdetector_baseline``: the benchmark's baseline and the tests' oracle; it
overrides the three hooks ``factored``, ``keep_maps`` and ``pair_kl``. The MADCluster tap is
skipped when nothing consumes it (MADCluster off).
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from einops import rearrange, reduce, repeat
from torch import nn

from madcluster_exp.backbones.base import Backbone, BackboneOutput
from madcluster_exp.backbones.layers import KL_EPS, DataEmbedding, RevIN, circular_unfold
from madcluster_exp.config.schema import BackboneConfig


def factorised_kl(
    a: torch.Tensor, b: torch.Tensor, p: int, n: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row-wise KL(S_up || P_up) and KL(P_up || S_up), each [B, T] (mean over heads), where
    S_up = block-repeat(a) and P_up = tile(b) / n, without building either T x T map.

    a: [B, H, N, N] patch-wise attention (rows sum to 1), b: [B, H, p, p] in-patch attention.
    """
    bn = b / n  # the tiled map's row-normalisation
    a_log = torch.log(a + KL_EPS)
    b_log = torch.log(bn + KL_EPS)
    a_rows = a.sum(-1)  # [B, H, N]
    b_rows = bn.sum(-1)  # [B, H, p]
    kl_sp = p * (a * a_log).sum(-1).unsqueeze(-1) - a_rows.unsqueeze(-1) * b_log.sum(-1).unsqueeze(
        -2
    )
    kl_ps = n * (bn * b_log).sum(-1).unsqueeze(-2) - b_rows.unsqueeze(-2) * a_log.sum(-1).unsqueeze(
        -1
    )
    # [B, H, N, p] -> [B, H, T] with i = a * p + r, then mean over heads.
    flat = lambda t: rearrange(t, "b h a r -> b h (a r)").mean(dim=1)  # noqa: E731
    return flat(kl_sp), flat(kl_ps)


def spread_add(z, ctx: torch.Tensor, p: int) -> torch.Tensor:
    """z + ctx with each of ctx's N patch rows spread over its p steps ([B, N, d] -> [B, N p, d]);
    z = None starts the sum. The add broadcasts over p, so the spread copy is never built, and
    its backward is one sum over p (a stack of spread copies and a mean cost ~3x the passes
    over the [B, T, d] tap on DCdetector's reference configuration)."""
    b, n, d = ctx.shape
    if z is None:
        return repeat(ctx, "b n d -> b (n p) d", p=p)
    return (z.view(b, n, p, d) + ctx.unsqueeze(2)).view(b, n * p, d)


def narrow_matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x @ y, computed as (y^T x^T)^T when the result has fewer columns than rows.

    Batched products whose result is only a few columns wide (the tap's [N, F] contexts:
    F = 6 against N = 50 at the reference configuration) run 2-4x slower in torch's CPU bmm
    than the transposed product, whose rows are long; the values are the same. Returns a
    transposed view in that case (autograd and matmul accept it)."""
    if y.shape[-1] < x.shape[-2]:
        return (y.transpose(-1, -2) @ x.transpose(-1, -2)).transpose(-1, -2)
    return x @ y


class ChannelMeans(torch.autograd.Function):
    """(mean_c a, mean_c (mean_h a) @ u) for per-channel maps a [(B C), H, N, N] and per-channel
    token features u [(B C), N, F]: the map the loss sees and the patch-attention tap's context.

    Autograd's own backward would write a's gradient twice (once per use) and add the two;
    here both uses share one pass: grad_a = (g_mean + g_ctx u^T / H) / C, written once. On the
    reference configuration that is the difference between a tap that costs a few percent of
    the step and one that costs ten.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # train.amp: float32 here
    def forward(ctx, a: torch.Tensor, u: torch.Tensor, c: int):
        s, h, n, m = a.shape
        head_mean = a.view(s, n, m) if h == 1 else a.mean(dim=1)
        ctx.save_for_backward(a, u)
        ctx.c = c
        return (
            a.view(s // c, c, h, n, m).mean(dim=1),
            narrow_matmul(head_mean, u).view(s // c, c, n, -1).mean(dim=1),
        )

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g_mean: torch.Tensor, g_ctx: torch.Tensor):
        a, u = ctx.saved_tensors
        c = ctx.c
        s, h, n, m = a.shape
        b = s // c
        grad_a = grad_u = None
        if ctx.needs_input_grad[0]:
            # [B, 1, N, F] @ [B, C, F, M] -> [B, C, N, M], then the map gradient added in place
            grad = (g_ctx / (c * h)).unsqueeze(1) @ u.view(b, c, m, -1).transpose(-1, -2)
            grad = (
                grad.unsqueeze(2) + (g_mean / c).unsqueeze(1)
                if h > 1
                else grad.add_(g_mean / c).unsqueeze(2)
            )
            grad_a = grad.reshape(s, h, n, m)
        if ctx.needs_input_grad[1]:
            head_mean = a.view(b, c, n, m) if h == 1 else a.view(b, c, h, n, m).mean(dim=2)
            grad_u = narrow_matmul(head_mean.transpose(-1, -2), (g_ctx / c).unsqueeze(1)).reshape(
                s, m, -1
            )
        return grad_a, grad_u, None


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

    def attend_factored(
        self, u: torch.Tensor, w_e: torch.Tensor, pos: torch.Tensor
    ) -> torch.Tensor:
        """The maps of ``attend(u @ w_e + pos)`` without the d-wide tokens.

        u: [B', L, F] circularly unfolded inputs (F = 3 x token width, 6 to 150 here, against
        d = 256), w_e: [F, d] the token convolution, pos: [L, d] the position encoding. With
        Q = u U_q + R_q and K = u U_k + R_k (U = w_e W^T, R = pos W^T + b), per head
            Q K^T = (u G + H) u^T + u F + Z,  G = U_q U_k^T, F = U_q R_k^T, H = R_q U_k^T,
        Z = R_q R_k^T, all four built once per step from the weights. Per sequence that costs
        O(L F (F + L)) instead of O(L d^2) for the projections; the values are the same up to
        float rounding (tested against ``attend``).
        """
        h, dk = self.n_heads, self.d_k
        scale = 1.0 / math.sqrt(dk)

        def factors(lin: nn.Linear):
            w = rearrange(lin.weight, "(h k) d -> h k d", h=h)
            u_w = torch.einsum("fd,hkd->hfk", w_e, w)  # [H, F, dk]
            r = rearrange(pos @ lin.weight.T + lin.bias, "l (h k) -> h l k", h=h)  # [H, L, dk]
            return u_w, r

        uq, rq = factors(self.query)
        uk, rk = factors(self.key)
        g = uq @ uk.transpose(-1, -2) * scale  # [H, F, F]
        f = uq @ rk.transpose(-1, -2) * scale  # [H, F, L]
        hq = rq @ uk.transpose(-1, -2) * scale  # [H, L, F]
        z = rq @ rk.transpose(-1, -2) * scale  # [H, L, L]
        if h == 1:  # 2-D right operands: one large GEMM each instead of a batched one
            left = u @ g[0] + hq[0]
            scores = (left @ u.transpose(-1, -2) + u @ f[0] + z[0]).unsqueeze(1)
        else:
            us = u.unsqueeze(1)
            scores = (us @ g + hq) @ us.transpose(-1, -2) + us @ f + z
        return self.dropout(torch.softmax(scores, dim=-1))


class DCdetector(Backbone):
    name = "dcdetector"
    family = "transformer"
    embed_taps = ("patch_attention", "input_embedding")
    # The reference's EarlyStopping saves the model when the validation loss ties the best; its
    # loss is 0 in value every epoch, so it keeps the last epoch (solver.py, EarlyStopping).
    keep_latest_on_tie = True

    def __init__(self, n_channels: int, cfg: BackboneConfig):
        super().__init__(n_channels, cfg)
        self.patch_sizes = [int(p) for p in cfg.patch_sizes]
        bad = [p for p in self.patch_sizes if p < 1 or self.window % p]
        if bad:
            raise ValueError(
                f"backbone.patch_sizes={self.patch_sizes}: {bad} do not divide "
                f"backbone.window={self.window}; every patch size must"
            )
        if cfg.d_model % cfg.n_heads:
            raise ValueError(
                f"backbone.d_model={cfg.d_model} must be divisible by "
                f"backbone.n_heads={cfg.n_heads}"
            )
        d = int(cfg.d_model)
        self.revin = RevIN() if cfg.revin else None
        self.embed_size = nn.ModuleList(DataEmbedding(p, d, cfg.dropout) for p in self.patch_sizes)
        self.embed_num = nn.ModuleList(
            DataEmbedding(self.window // p, d, cfg.dropout) for p in self.patch_sizes
        )
        self.layers = nn.ModuleList(
            DualAttentionLayer(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.layers)
        )
        # Only built when tapped: it feeds nothing else, so it would be dead weight otherwise.
        self.embed_window = (
            DataEmbedding(n_channels, d, cfg.dropout)
            if self.embed_tap == "input_embedding"
            else None
        )
        self.temperature = float(cfg.temperature)
        self.embed_dim = d
        self.dropout_p = float(cfg.dropout)

    # -- the three steps the reference's way does differently (bench/dcdetector_baseline.py) --
    def factored(self) -> bool:
        """Attention scores from the factored form (no d-wide tokens). Embedding dropout would
        break the factorisation (it masks the d-wide tokens), so a model trained with
        dropout > 0 takes the direct path while training."""
        return self.dropout_p == 0.0 or not self.training

    def keep_maps(
        self, a: torch.Tensor, a_mean: torch.Tensor, pr: torch.Tensor, p: int, n: int, c: int
    ) -> tuple:
        """What the loss and score need of one layer's maps: the channel means of the patch-wise
        map ``a`` [(B C), H, N, N] (given: ``a_mean``) and of the in-patch map ``pr``."""
        return a_mean, reduce(pr, "(b c) h m k -> b h m k", "mean", c=c), p, n

    @staticmethod
    def pair_kl(a: torch.Tensor, pr: torch.Tensor, p: int, n: int):
        """(KL(S_up || P_up), KL(P_up || S_up)) per position for one kept pair of maps."""
        return factorised_kl(a, pr, p, n)

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        b, t, c = x.shape
        if self.revin is not None:
            x = self.revin(x)
        factored = self.factored()
        maps = []  # keep_maps() per patch size and layer: (A [B,H,N,N], P [B,H,p,p], p, N)
        z = None  # the patch-attention tap, accumulated over patch sizes
        for i, p in enumerate(self.patch_sizes):
            n = t // p
            seq_size = rearrange(x, "b (n p) c -> (b c) n p", p=p)
            seq_num = rearrange(x, "b (p n) c -> (b c) p n", p=p)
            emb_size, emb_num = self.embed_size[i], self.embed_num[i]
            if factored:
                u_size, u_num = circular_unfold(seq_size), circular_unfold(seq_num)
                w_size, w_num = emb_size.token_matrix(), emb_num.token_matrix()
            else:
                x_size, x_num = emb_size(seq_size), emb_num(seq_num)
            for layer in self.layers:
                if factored:
                    a = layer.attend_factored(u_size, w_size, emb_size.pe[:n])
                    pr = layer.attend_factored(u_num, w_num, emb_num.pe[:p])
                else:
                    a, pr = layer(x_size, x_num)
                tap_here = (
                    layer is self.layers[-1]
                    and self.tap_needed
                    and self.embed_tap == "patch_attention"
                )
                if tap_here and factored:
                    # Patch-attention tap (last layer): mean_c(A (u W + pos)), each patch spread
                    # back over its p steps. Linear in the tokens, so it equals
                    # mean_c(A u) W + mean_c(A) pos: neither the [B, C, T, d] tensor nor the
                    # d-wide tokens are built.
                    a_mean, au = ChannelMeans.apply(a, u_size, c)
                    ctx = au @ w_size + a_mean.mean(dim=1) @ emb_size.pe[:n]
                else:
                    a_mean = reduce(a, "(b c) h m k -> b h m k", "mean", c=c)
                    if tap_here:  # the direct form of the same tap
                        ctx = reduce(a.mean(dim=1) @ x_size, "(b c) n d -> b n d", "mean", c=c)
                if tap_here:
                    z = spread_add(z, ctx / len(self.patch_sizes), p)
                maps.append(self.keep_maps(a, a_mean, pr, p, n, c))
        if self.tap_needed and self.embed_tap == "input_embedding":
            z = self.embed_window(x)
        return BackboneOutput(z=z, aux={"maps": maps})

    def discrepancies(self, out: BackboneOutput):
        """(series_loss, prior_loss), averaged over maps, stop-gradients as the reference:
        series_loss trains the patch-wise view against a fixed in-patch view, prior_loss the
        reverse. Their values are equal (a symmetric KL); their gradients are not."""
        series_loss = prior_loss = 0.0
        for a, pr, p, n in out.aux["maps"]:
            s_to_fixed_p, fixed_p_to_s = self.pair_kl(a, pr.detach(), p, n)
            fixed_s_to_p, p_to_fixed_s = self.pair_kl(a.detach(), pr, p, n)
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
            kl_sp, kl_ps = self.pair_kl(a, pr, p, n)
            dis = dis + (kl_sp + kl_ps) * self.temperature
        return torch.softmax(-dis, dim=-1)
