"""USAD (Audibert et al., KDD 2020): one encoder, two decoders, two-phase adversarial training.

Phase 1 (encoder + decoder 1): 1/n ||W - AE1(W)||^2 + (1 - 1/n) ||W - AE2(AE1(W))||^2
Phase 2 (encoder + decoder 2): 1/n ||W - AE2(W)||^2 - (1 - 1/n) ||W - AE2(AE1(W))||^2
with n the epoch number (1-based). Each phase has its own optimizer, as in the reference; the
schedule lives in :meth:`USAD.training_step`, not in the training loop. With MADCluster on, its
term joins phase 1 (whose optimizer also carries the plug-in's center).
Score per step: alpha ||W - AE1(W)||^2 + beta ||W - AE2(AE1(W))||^2 (mean over channels).

Sizes as the reference notebook (github.com/manigalati/usad, USAD.ipynb and usad.py): the
flattened window W of T * C values goes through linear layers of T C / 2 and T C / 4 units to a
latent code of T * hidden units (``z_size = window_size * hidden_size``, hidden 100: 1,200 at
window 12, wider than the input for fewer than 100 channels); both decoders mirror that and end
in a sigmoid. Deviations: the notebook trains 100 epochs in batches of 7,919 windows, here the
framework's batch size and epoch count apply; the notebook scores a window by its mean error,
here each step gets its own error and the point score aggregates the windows covering it
(``scoring.aggregate``).
"""

from __future__ import annotations

from typing import Dict, List

import torch
from einops import rearrange
from torch import nn

from madcluster_exp.backbones.base import Backbone, BackboneOutput, StepContext, loss_logs
from madcluster_exp.config.schema import BackboneConfig


def _mlp(sizes: List[int], last: nn.Module) -> nn.Sequential:
    layers: List[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        layers.append(nn.ReLU() if i < len(sizes) - 2 else last)
    return nn.Sequential(*layers)


class USAD(Backbone):
    name = "usad"
    family = "reconstruction"
    embed_taps = ("latent",)

    def __init__(self, n_channels: int, cfg: BackboneConfig):
        super().__init__(n_channels, cfg)
        w = self.window * n_channels
        latent = self.window * int(cfg.hidden)  # the notebook's z_size = window_size * hidden_size
        sizes = [w, max(1, w // 2), max(1, w // 4), latent]
        self.encoder = _mlp(sizes, nn.ReLU())
        self.decoder1 = _mlp(sizes[::-1], nn.Sigmoid())
        self.decoder2 = _mlp(sizes[::-1], nn.Sigmoid())
        self.alpha, self.beta = float(cfg.alpha), float(cfg.beta)
        self.embed_dim = latent

    def optimizer_groups(self) -> Dict[str, List[nn.Parameter]]:
        enc = list(self.encoder.parameters())
        return {
            "ae1": enc + list(self.decoder1.parameters()),
            "ae2": enc + list(self.decoder2.parameters()),
        }

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        t = x.shape[1]
        flat = rearrange(x, "b t c -> b (t c)")
        z = self.encoder(flat)
        w1 = self.decoder1(z)
        w2 = self.decoder2(z)
        w3 = self.decoder2(self.encoder(w1))
        unflat = lambda v: rearrange(v, "b (t c) -> b t c", t=t)  # noqa: E731
        return BackboneOutput(
            z=z.unsqueeze(1).expand(-1, t, -1),
            aux={"w1": unflat(w1), "w2": unflat(w2), "w3": unflat(w3)},
        )

    @staticmethod
    def _phase_weight(epoch: int) -> float:
        return 1.0 / (epoch + 1)

    def loss(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        """Validation objective: reconstruction error of both autoencoders. (Training uses the
        two adversarial phases of :meth:`training_step`, whose sum cancels the AE2(AE1) term.)"""
        return ((x - out.aux["w1"]) ** 2).mean() + ((x - out.aux["w2"]) ** 2).mean()

    def score(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        e1 = ((x - out.aux["w1"]) ** 2).mean(dim=-1)
        e3 = ((x - out.aux["w3"]) ** 2).mean(dim=-1)
        return self.alpha * e1 + self.beta * e3

    def training_step(self, x: torch.Tensor, ctx: StepContext) -> Dict[str, float]:
        w = self._phase_weight(max(ctx.epoch, 0))
        # Phase 1: encoder + decoder 1 (+ the plug-in on the latent code).
        out = self(x)
        loss1 = w * ((x - out.aux["w1"]) ** 2).mean() + (1 - w) * ((x - out.aux["w3"]) ** 2).mean()
        plugin = ctx.plugin_loss(out.z)
        total1 = ctx.combine(loss1, plugin)
        ctx.optimize(total1, "ae1")
        # Phase 2: encoder + decoder 2, on a fresh forward pass with the updated encoder.
        out = self(x)
        loss2 = w * ((x - out.aux["w2"]) ** 2).mean() - (1 - w) * ((x - out.aux["w3"]) ** 2).mean()
        ctx.optimize(loss2, "ae2")
        return loss_logs(total1 + loss2, loss1 + loss2, plugin, loss_ae1=loss1, loss_ae2=loss2)
