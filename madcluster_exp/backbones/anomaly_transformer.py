"""Anomaly Transformer (Xu et al., ICLR 2022).

Each layer's anomaly attention yields a *series association* (softmax attention) and a *prior
association* (a Gaussian kernel over |i - j| with a learned, per-position width sigma). The
association discrepancy is their symmetric KL. Training is a minimax game expressed with
stop-gradients, exactly as the reference's two backward passes before one optimizer step:
  loss1 = rec - k * (KL(S, P.detach) + KL(P.detach, S))
  loss2 = rec + k * (KL(P, S.detach) + KL(S.detach, P))
and the gradient of loss1 + loss2 is what one step applies, so :meth:`loss` returns that sum.
Score per step: softmax over time of -(AssDis * temperature), times the reconstruction error.

Encoder layers as the reference (github.com/thuml/Anomaly-Transformer, model/AnomalyTransformer.py):
attention, residual, LayerNorm, a position-wise feed-forward of two kernel-1 convolutions with
GELU between them (the model's ``activation='gelu'`` default, which solver.py keeps), residual,
LayerNorm.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch
from einops import rearrange
from torch import nn

from madcluster_exp.backbones.base import Backbone, BackboneOutput
from madcluster_exp.backbones.layers import DataEmbedding, association_kl
from madcluster_exp.config.schema import BackboneConfig


class AnomalyAttention(nn.Module):
    def __init__(self, window: int, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.d_k = d_model // n_heads
        self.query = nn.Linear(d_model, self.d_k * n_heads)
        self.key = nn.Linear(d_model, self.d_k * n_heads)
        self.value = nn.Linear(d_model, self.d_k * n_heads)
        self.sigma = nn.Linear(d_model, n_heads)
        self.out = nn.Linear(self.d_k * n_heads, d_model)
        self.dropout = nn.Dropout(dropout)
        idx = torch.arange(window, dtype=torch.float32)
        self.register_buffer("distances", (idx[:, None] - idx[None, :]).abs(), persistent=False)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.n_heads
        q = rearrange(self.query(x), "b l (h d) -> b h l d", h=h)
        k = rearrange(self.key(x), "b l (h d) -> b h l d", h=h)
        v = rearrange(self.value(x), "b l (h d) -> b h l d", h=h)
        series = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d_k), dim=-1)
        # sigma as in the reference: sigmoid(5 s) + 1e-5, then 3^sigma - 1
        sigma = torch.sigmoid(rearrange(self.sigma(x), "b l h -> b h l") * 5) + 1e-5
        sigma = (torch.pow(3.0, sigma) - 1).unsqueeze(-1)  # [B, H, L, 1]
        dist = self.distances[: x.shape[1], : x.shape[1]]
        prior = torch.exp(-(dist**2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
        out = rearrange(self.dropout(series) @ v, "b h l d -> b l (h d)")
        return self.out(out), series, prior


class EncoderLayer(nn.Module):
    def __init__(self, window: int, d_model: int, n_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.attention = AnomalyAttention(window, d_model, n_heads, dropout)
        self.conv1 = nn.Conv1d(d_model, d_ff, 1)
        self.conv2 = nn.Conv1d(d_ff, d_model, 1)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor):
        attn, series, prior = self.attention(x)
        x = self.norm1(x + self.dropout(attn))
        y = self.dropout(nn.functional.gelu(self.conv1(x.transpose(1, 2))))
        y = self.dropout(self.conv2(y).transpose(1, 2))
        return self.norm2(x + y), series, prior


class AnomalyTransformer(Backbone):
    name = "anomaly_transformer"
    family = "transformer"
    embed_taps = ("encoder", "embedding")
    # The reference's EarlyStopping counts a tie with the best validation loss as an
    # improvement (saves the model, resets patience): solver.py, EarlyStopping.
    keep_latest_on_tie = True

    def __init__(self, n_channels: int, cfg: BackboneConfig):
        super().__init__(n_channels, cfg)
        if cfg.d_model % cfg.n_heads:
            raise ValueError(
                f"backbone.d_model={cfg.d_model} must be divisible by "
                f"backbone.n_heads={cfg.n_heads}"
            )
        self.embedding = DataEmbedding(n_channels, cfg.d_model, cfg.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(self.window, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout)
            for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        self.projection = nn.Linear(cfg.d_model, n_channels)
        self.k = float(cfg.k)
        self.temperature = float(cfg.temperature)
        self.embed_dim = int(cfg.d_model)

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        emb = self.embedding(x)
        h = emb
        series: List[torch.Tensor] = []
        priors: List[torch.Tensor] = []
        for layer in self.layers:
            h, s, p = layer(h)
            series.append(s)
            priors.append(p / p.sum(dim=-1, keepdim=True))  # rows normalised, as the reference
        h = self.norm(h)
        z = h if self.embed_tap == "encoder" else emb
        return BackboneOutput(
            z=z, aux={"x_hat": self.projection(h), "series": series, "prior": priors}
        )

    def discrepancies(self, out: BackboneOutput):
        """(series_loss, prior_loss) per step [B, T], summed over layers, stop-gradients placed
        as in the reference: series_loss trains S toward a fixed P, prior_loss trains P."""
        series_loss = prior_loss = 0.0
        for s, p in zip(out.aux["series"], out.aux["prior"]):
            series_loss = (
                series_loss + association_kl(s, p.detach()) + association_kl(p.detach(), s)
            )
            prior_loss = prior_loss + association_kl(p, s.detach()) + association_kl(s.detach(), p)
        n = len(out.aux["series"])
        return series_loss / n, prior_loss / n

    def loss(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        rec = ((out.aux["x_hat"] - x) ** 2).mean()
        series_loss, prior_loss = self.discrepancies(out)
        loss1 = rec - self.k * series_loss.mean()  # minimise: S moves away from P ...
        loss2 = rec + self.k * prior_loss.mean()  # ... while P moves toward S
        return loss1 + loss2

    def score(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        dis = 0.0
        for s, p in zip(out.aux["series"], out.aux["prior"]):
            dis = (
                dis
                + association_kl(s, p) * self.temperature
                + association_kl(p, s) * self.temperature
            )
        weight = torch.softmax(-dis, dim=-1)
        return weight * ((out.aux["x_hat"] - x) ** 2).mean(dim=-1)
