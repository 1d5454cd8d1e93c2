"""SLMR (Miao et al., ICONIP 2022): short- and long-term mask representation.

Pipeline (method.md section 3; official code github.com/qiumiao30/SLMR, se_in_gru_zhiqian.py),
lookback L (even), input windows of L + 1 steps (the last is the forecast target):
1. training-only geometric mask per feature (two-state Markov chain, masked fraction r, mean
   run length l_m; masked values set to 0);
2. split of the lookback into steps 0, 2, 4, ... and steps 1, 3, 5, ...;
3. one Res2Net-style block shared by both branches: bias-free 1x1 conv to groups*width
   channels, MaxPool(3,1,1), BN, ReLU; ``scales`` chunks, chunk 0 identity, chunks 1.. through
   bias-free grouped convs with kernels 1/3/5/7 cascaded (each adds the previous chunk's
   output), BN, ReLU; input - concat; bias-free 1x1 conv back to the feature count. The branch of
   steps 0, 2, 4, ... (the reference's "odd" steps, counted from 1) max-pools after each cascade
   conv, the other does not, as in the reference;
4. cross residual (each branch's output + the other branch's input), then one shared MaxPool,
   BN, ReLU; interleave back to length L;
5. SE feature attention (reduction 16, kernel-3 convs with bias, sigmoid gate);
6. GRU; its last state feeds a forecast MLP (x_{L+1}) and a GRU decoder reconstructing the window.
Parameters as the reference's model (414,138 at 38 features, every channel modelled), less its
``downsample`` branch, which is built but never called.

Target channels (``backbone.target_channels``): the forecast and reconstruction heads model
these columns only; the encoder always reads every channel. The reference models column 0 on
MSL and SMAP (``utils.get_target_dims``: in the telemanom data, column 0 is the telemetry
value and the other columns are one-hot command flags) and every column on SMD, PSM and the
rest; the schema's default reproduces that per ``dataset.name``.

Loss RMSE(forecast) + RMSE(reconstruction) over the modelled channels. Point score
|y_hat - x| + gamma |x_hat - x|, mean over the modelled channels (on MSL and SMAP by default:
channel 0 alone): a point's forecast error comes from the window it ends, its reconstruction
error from the window whose lookback it ends; the per-step score carries each term at that
position and the point scores are their sum (``score_aggregate = "sum"``, stride 1), which is
exactly that.
Not copied from the reference: hard-coded CUDA, a file written on every forward pass, the
scrambled reconstruction repeat, "best model" selection that always keeps the last epoch, the
unused ``downsample`` branch, and an SE bottleneck of 0 channels below 16 features (here at
least 1).
"""

from __future__ import annotations

from typing import List, Optional

import torch
from einops import rearrange
from torch import nn

from madcluster_exp.backbones.base import Backbone, BackboneOutput
from madcluster_exp.config.schema import BackboneConfig


def geometric_mask(
    shape, ratio: float, mean_run: float, generator=None, device=None
) -> torch.Tensor:
    """Boolean keep-mask [B, L, C]: False where masked. Per (window, feature) a two-state Markov
    chain with P(masked -> unmasked) = 1 / mean_run and P(unmasked -> masked) =
    ratio / (1 - ratio) / mean_run, started from its stationary distribution, so the expected
    masked fraction is ``ratio`` and masked runs last ``mean_run`` steps on average."""
    b, length, c = shape
    p_end = 1.0 / mean_run
    p_start = p_end * ratio / (1.0 - ratio)
    u = torch.rand((b, length, c), generator=generator, device=device)
    masked = torch.empty((b, length, c), dtype=torch.bool, device=device)
    state = u[:, 0] < ratio
    masked[:, 0] = state
    for t in range(1, length):
        state = torch.where(state, u[:, t] >= p_end, u[:, t] < p_start)
        masked[:, t] = state
    return ~masked


def interleave(even: torch.Tensor, odd: torch.Tensor) -> torch.Tensor:
    """Inverse of ``x[..., 0::2], x[..., 1::2]`` for equal halves: [B, C, L/2] x 2 -> [B, C, L]."""
    return torch.stack([even, odd], dim=-1).flatten(-2)


class Res2NetBlock(nn.Module):
    """The multi-scale block, one instance for both branches (the reference's conv1/bn1, conv2/bn2
    and conv3 serve its even and odd split alike). Convolutions are bias-free, as the
    reference's ``conv1x1`` and ``conv3x3`` helpers; ``pool_cascade`` adds its MaxPool(3, 1, 1)
    after every cascade convolution, which the reference does for one branch only."""

    def __init__(
        self,
        n_features: int,
        groups: int,
        width: int,
        scales: int,
        kernels: List[int],
        dilation: int,
    ):
        super().__init__()
        channels = groups * width
        if channels % scales:
            raise ValueError(f"SLMR: groups*width={channels} must be divisible by scales={scales}")
        chunk = channels // scales
        if len(kernels) != scales - 1:
            raise ValueError(f"SLMR: {scales} scales need {scales - 1} kernels, got {kernels}")
        if chunk % groups:
            raise ValueError(f"SLMR: chunk width {chunk} must be divisible by groups={groups}")
        self.scales = scales
        self.expand = nn.Conv1d(n_features, channels, 1, bias=False)
        self.pool = nn.MaxPool1d(3, 1, 1)
        self.bn_in = nn.BatchNorm1d(channels)
        self.convs = nn.ModuleList(
            nn.Conv1d(
                chunk,
                chunk,
                k,
                padding=dilation * (k - 1) // 2,
                dilation=dilation,
                groups=groups,
                bias=False,
            )
            for k in kernels
        )
        self.bns = nn.ModuleList(nn.BatchNorm1d(chunk) for _ in kernels)
        self.project = nn.Conv1d(channels, n_features, 1, bias=False)

    def forward(self, x: torch.Tensor, pool_cascade: bool = False) -> torch.Tensor:
        """[B, C, L'] -> [B, C, L']."""
        h = torch.relu(self.bn_in(self.pool(self.expand(x))))
        chunks = torch.chunk(h, self.scales, dim=1)
        outs, prev = [chunks[0]], None
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            y = conv(chunks[i + 1] if prev is None else chunks[i + 1] + prev)
            prev = torch.relu(bn(self.pool(y) if pool_cascade else y))
            outs.append(prev)
        return self.project(h - torch.cat(outs, dim=1))


class SEAttention(nn.Module):
    """Squeeze over time, two kernel-3 convs (reduction r), sigmoid gate per feature."""

    def __init__(self, n_features: int, reduction: int):
        super().__init__()
        hidden = max(1, n_features // reduction)
        self.fc = nn.Sequential(
            nn.Conv1d(n_features, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(hidden, n_features, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, L]
        return x * self.fc(x.mean(dim=-1, keepdim=True))


class SLMR(Backbone):
    name = "slmr"
    family = "hybrid"
    embed_taps = ("se", "gru")
    score_aggregate = "sum"

    def __init__(self, n_channels: int, cfg: BackboneConfig):
        super().__init__(n_channels, cfg)
        if self.window % 2:
            raise ValueError(
                f"backbone.window={self.window}: SLMR splits its lookback into even "
                "and odd steps, so the window must be even (reference: 10)"
            )
        if not 0.0 <= cfg.mask_ratio < 1.0 or cfg.mask_mean_run < 1.0:
            raise ValueError(
                f"backbone.mask_ratio={cfg.mask_ratio} must be in [0, 1) and "
                f"backbone.mask_mean_run={cfg.mask_mean_run} at least 1"
            )
        self.targets = target_channels(cfg.target_channels, n_channels)
        n_out = n_channels if self.targets is None else len(self.targets)
        self.block = Res2NetBlock(
            n_channels, cfg.groups, cfg.width, cfg.scales, list(cfg.kernels), cfg.dilation
        )
        self.cross = nn.Sequential(nn.MaxPool1d(3, 1, 1), nn.BatchNorm1d(n_channels), nn.ReLU())
        self.se = SEAttention(n_channels, cfg.se_reduction)
        h = int(cfg.gru_hidden)
        self.gru = nn.GRU(n_channels, h, batch_first=True)
        self.forecast = nn.Sequential(
            nn.Linear(h, h), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(h, n_out)
        )
        self.rec_gru = nn.GRU(h, h, batch_first=True)
        self.rec_out = nn.Linear(h, n_out)
        self.gamma = float(cfg.gamma)
        self.mask_ratio, self.mask_mean_run = float(cfg.mask_ratio), float(cfg.mask_mean_run)
        self.embed_dim = n_channels if self.embed_tap == "se" else h

    @classmethod
    def data_window(cls, window: int) -> int:
        return window + 1  # lookback + the forecast target

    def modelled(self, x: torch.Tensor) -> torch.Tensor:
        """The channels the heads forecast and reconstruct: [..., C] -> [..., C_out]."""
        return x if self.targets is None else x[..., self.targets]

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        look, length = x[:, :-1], x.shape[1] - 1
        if self.training and self.mask_ratio > 0:
            look = look * geometric_mask(
                look.shape, self.mask_ratio, self.mask_mean_run, device=look.device
            )
        h = rearrange(look, "b l c -> b c l")
        # Steps 0, 2, 4, ... (the reference's 1-based "odd" steps, whose branch pools after its
        # cascade convolutions) and steps 1, 3, 5, ...; each branch adds the other's input.
        first, second = h[:, :, 0::2], h[:, :, 1::2]
        a = self.cross(self.block(first, pool_cascade=True) + second)
        b = self.cross(self.block(second) + first)
        seq = rearrange(self.se(interleave(a, b)), "b c l -> b l c")
        gru_out, last = self.gru(seq)
        y_hat = self.forecast(last[-1])
        dec, _ = self.rec_gru(last[-1].unsqueeze(1).expand(-1, length, -1).contiguous())
        x_hat = self.rec_out(dec)
        z = seq if self.embed_tap == "se" else gru_out
        # The plug-in scores every input step: the target step shares the last lookback state.
        z = torch.cat([z, z[:, -1:]], dim=1)
        return BackboneOutput(z=z, aux={"y_hat": y_hat, "x_hat": x_hat})

    def loss(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        x = self.modelled(x)
        forecast = torch.sqrt(((out.aux["y_hat"] - x[:, -1]) ** 2).mean())
        recon = torch.sqrt(((out.aux["x_hat"] - x[:, :-1]) ** 2).mean())
        return forecast + recon

    def score(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        s = x.new_zeros(x.shape[:2])
        x = self.modelled(x)
        s[:, -1] = (out.aux["y_hat"] - x[:, -1]).abs().mean(dim=-1)
        s[:, -2] = self.gamma * (out.aux["x_hat"][:, -1] - x[:, -2]).abs().mean(dim=-1)
        return s


def target_channels(value, n_channels: int) -> Optional[List[int]]:
    """``backbone.target_channels`` checked against the data: None (every channel) or distinct
    column indices in [0, n_channels)."""
    if value is None:
        return None
    targets = [int(c) for c in value]
    if (
        not targets
        or len(set(targets)) != len(targets)
        or not all(0 <= c < n_channels for c in targets)
    ):
        raise ValueError(
            f"backbone.target_channels={targets}: expected null (every channel) or "
            f"distinct column indices in [0, {n_channels}) for these "
            f"{n_channels}-channel data"
        )
    return targets
