"""LSTM encoder-decoder (Malhotra et al., 2016): reconstruct the window, score by its error.

The encoder reads the window; the decoder starts from the encoder's final state and is fed the
encoder's last output at every step (no teacher forcing, so it cannot copy the input); a linear
head maps decoder states back to the channels. Score = per-step mean squared error.
"""

from __future__ import annotations

import torch
from torch import nn

from madcluster_exp.backbones.base import Backbone, BackboneOutput
from madcluster_exp.config.schema import BackboneConfig


class LSTMAE(Backbone):
    name = "lstm_ae"
    family = "reconstruction"
    embed_taps = ("encoder", "decoder")

    def __init__(self, n_channels: int, cfg: BackboneConfig):
        super().__init__(n_channels, cfg)
        self.encoder = nn.LSTM(n_channels, cfg.hidden, cfg.layers, batch_first=True)
        self.decoder = nn.LSTM(cfg.hidden, cfg.hidden, cfg.layers, batch_first=True)
        self.head = nn.Linear(cfg.hidden, n_channels)
        self.embed_dim = int(cfg.hidden)

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        enc, state = self.encoder(x)
        dec_in = enc[:, -1:, :].expand(-1, x.shape[1], -1)
        dec, _ = self.decoder(dec_in, state)
        x_hat = self.head(dec)
        z = enc if self.embed_tap == "encoder" else dec
        return BackboneOutput(z=z, aux={"x_hat": x_hat})

    def loss(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        return ((out.aux["x_hat"] - x) ** 2).mean()

    def score(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        return ((out.aux["x_hat"] - x) ** 2).mean(dim=-1)
