"""Building blocks shared by the transformer backbones: embeddings, RevIN, association KL."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """[length, d_model] fixed sinusoidal position encoding (Vaswani et al., 2017)."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model)
    )
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: d_model // 2])
    return pe


class DataEmbedding(nn.Module):
    """Token embedding (Conv1d k=3, circular padding, no bias) + sinusoidal positions."""

    def __init__(self, c_in: int, d_model: int, dropout: float = 0.0, max_len: int = 5000):
        super().__init__()
        self.token = nn.Conv1d(c_in, d_model, 3, padding=1, padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.token.weight, mode="fan_in", nonlinearity="leaky_relu")
        self.register_buffer("pe", sinusoidal_positions(max_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, c_in] -> [B, L, d_model]
        tokens = rearrange(self.token(rearrange(x, "b l c -> b c l")), "b d l -> b l d")
        return self.dropout(tokens + self.pe[: x.shape[1]])

    def token_matrix(self) -> torch.Tensor:
        """The token convolution as a [3 c_in, d_model] matrix acting on ``circular_unfold(x)``:
        without dropout, forward(x) == circular_unfold(x) @ token_matrix() + pe[:L]."""
        w = self.token.weight  # [d, c_in, 3]; tap k reads x[l + k - 1]
        return rearrange(w, "d c k -> (k c) d")


def circular_unfold(x: torch.Tensor) -> torch.Tensor:
    """[B, L, c] -> [B, L, 3c]: each token beside its circular neighbours (x[l-1], x[l], x[l+1]),
    the input a kernel-3 circular convolution reads."""
    return torch.cat([torch.roll(x, 1, dims=1), x, torch.roll(x, -1, dims=1)], dim=-1)


class RevIN(nn.Module):
    """Reversible instance normalisation (Kim et al., ICLR 2022) per window and channel, without
    the affine part: DCdetector's original builds its RevIN inside every forward pass with
    constant (never trained) weights 1 and biases 0, and never de-normalises."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, C]
        mean = x.mean(dim=1, keepdim=True).detach()
        std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps).detach()
        return (x - mean) / std


KL_EPS = 1e-4  # the reference implementations add 1e-4 inside both logs


def association_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Row-wise KL as in the Anomaly Transformer / DCdetector code:
    sum_j p (log(p + 1e-4) - log(q + 1e-4)), then mean over heads: [B, H, L, L] -> [B, L]."""
    res = p * (torch.log(p + KL_EPS) - torch.log(q + KL_EPS))
    return res.sum(dim=-1).mean(dim=1)
