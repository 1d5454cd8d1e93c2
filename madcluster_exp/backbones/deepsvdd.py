"""Deep SVDD (Ruff et al., 2018) applied per time step.

A bias-free temporal conv encoder maps each window to per-step embeddings; the hypersphere
center is fixed from an initial forward pass (components with |c_i| < eps pushed to +-eps, so
the trivial all-zero solution is not the center). Bias terms and a learnable center would let
the network collapse every input onto the center, which is why neither exists here.

Objectives: ``one-class`` mean ||phi - c||^2; ``soft-boundary`` R^2 + 1/nu * mean(max(0,
||phi - c||^2 - R^2)) with R the (1 - nu)-quantile of training distances, refitted at the end of
each epoch once ``radius_warmup_epochs`` epochs have passed (``utils.nn.radius_due``). With
MADCluster on, its learnable center replaces this one (never both).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable

import torch
from einops import rearrange
from torch import nn

from madcluster_exp.backbones.base import Backbone, BackboneOutput
from madcluster_exp.config.schema import BackboneConfig
from madcluster_exp.utils.nn import QuantileSample, radius_due

CENTER_EPS = 0.1


class DeepSVDD(Backbone):
    name = "deepsvdd"
    family = "one_class"
    embed_taps = ("encoder",)
    keeps_objective_with_plugin = False

    def __init__(self, n_channels: int, cfg: BackboneConfig):
        super().__init__(n_channels, cfg)
        if cfg.objective not in ("one-class", "soft-boundary"):
            raise ValueError(
                f"backbone.objective={cfg.objective!r}: expected one-class or soft-boundary"
            )
        if not 0.0 < cfg.nu <= 1.0:
            raise ValueError(f"backbone.nu={cfg.nu}: expected a value in (0, 1]")
        if cfg.kernel_size % 2 != 1:
            raise ValueError(
                f"backbone.kernel_size={cfg.kernel_size}: expected an odd number so "
                "the embedding keeps one step per input step"
            )
        layers, ch = [], n_channels
        for _ in range(cfg.layers):
            layers += [
                nn.Conv1d(
                    ch, cfg.hidden, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=False
                ),
                nn.LeakyReLU(0.1),
            ]
            ch = cfg.hidden
        layers.append(nn.Conv1d(ch, cfg.embed_dim, 1, bias=False))
        self.encoder = nn.Sequential(*layers)
        self.embed_dim = int(cfg.embed_dim)
        self.objective = cfg.objective
        self.nu = float(cfg.nu)
        self.radius_warmup_epochs = int(cfg.radius_warmup_epochs)
        self.register_buffer("center", torch.zeros(self.embed_dim))
        self.register_buffer("radius", torch.zeros(()))
        self._dist_sample = QuantileSample()

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        z = self.encoder(rearrange(x, "b t c -> b c t"))
        # Contiguous [B, T, f]: every per-step reduction over f (its own distance, the
        # plug-in's dot products) then walks memory in order.
        return BackboneOutput(z=rearrange(z, "b f t -> b t f").contiguous())

    def distance(self, out: BackboneOutput) -> torch.Tensor:
        return ((out.z - self.center) ** 2).sum(dim=-1)  # [B, T]

    def loss(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        dist = self.distance(out)
        if self.training and self.objective == "soft-boundary":  # only R needs the sample
            self._dist_sample.add(dist.sqrt())
        if self.objective == "one-class":
            return dist.mean()
        r2 = self.radius**2
        return r2 + torch.clamp(dist - r2, min=0).mean() / self.nu

    def score(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        dist = self.distance(out)
        return dist - self.radius**2 if self.objective == "soft-boundary" else dist

    @torch.no_grad()
    def on_fit_start(
        self, train_batches: Callable[[], Iterable[torch.Tensor]], uses_own_objective: bool
    ) -> None:
        if not uses_own_objective:
            return  # MADCluster's learnable center takes over; no initial pass needed.
        total, count = torch.zeros(self.embed_dim, dtype=torch.float64), 0
        was_training = self.training
        self.eval()
        for x in train_batches():
            z = self(x).z
            total += z.sum(dim=(0, 1)).double()
            count += z.shape[0] * z.shape[1]
        self.train(was_training)
        c = (total / max(count, 1)).float()
        c[(c.abs() < CENTER_EPS) & (c < 0)] = -CENTER_EPS
        c[(c.abs() < CENTER_EPS) & (c >= 0)] = CENTER_EPS
        self.center.copy_(c)

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        logs = {}
        if self.objective == "soft-boundary" and radius_due(epoch, self.radius_warmup_epochs):
            r = self._dist_sample.quantile(1.0 - self.nu)
            if r is not None:
                self.radius.fill_(r)
            logs["backbone/radius"] = float(self.radius)
        self._dist_sample.reset()
        return logs
