"""Detector = backbone + optional MADCluster plug-in, behind one code path for on and off.

The loop only ever calls ``training_step``, ``evaluate_loss``, ``score_components`` and
``on_epoch_end``; whether the plug-in exists changes what those do, never which are called.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

import torch
from torch import nn

from madcluster_exp.backbones import backbone_class
from madcluster_exp.backbones.base import Backbone, StepContext, combine_losses, loss_logs
from madcluster_exp.config.schema import Config
from madcluster_exp.madcluster import build_plugin
from madcluster_exp.utils.nn import init_weights

NU_GROUP = "madcluster_nu"


def count_parameters(module: Optional[nn.Module]) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class Detector(nn.Module):
    def __init__(self, backbone: Backbone, plugin: Optional[nn.Module] = None):
        super().__init__()
        self.backbone = backbone
        self.plugin = plugin
        # Deep SVDD-like backbones hand their objective over to MADCluster's center.
        self.uses_own_objective = plugin is None or backbone.keeps_objective_with_plugin
        backbone.tap_needed = plugin is not None
        self.optimizers: Dict[str, torch.optim.Optimizer] = {}
        self.host_group = "main"
        self.grad_clip: Optional[float] = None
        self._optimized: list = []

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(
        self,
        lr: float,
        weight_decay: float,
        nu_lr: Optional[float],
        grad_clip: Optional[float] = None,
        fused: bool = True,
        amsgrad: bool = False,
    ) -> None:
        """One Adam per backbone parameter group; the plug-in's centers join the first group
        (same optimizer as the backbone, as in the reference); nu gets its own parameter group
        in that optimizer, AMSGrad without weight decay, so its dynamics are not pulled toward
        zero (a group rather than a second optimizer: one optimizer call less per step, ~1/3
        of the plug-in's remaining overhead on USAD, measured). ``fused``: Adam's
        fused kernel, one op per step for all of an optimizer's parameters instead of ~8 per
        parameter (measured: USAD steps ~10 % faster on CPU). ``amsgrad``: AMSGrad on the
        backbone's groups (``train.amsgrad``; the MADCluster reference sets it)."""
        groups = self.backbone.optimizer_groups()
        self.host_group = next(iter(groups))
        self.optimizers: Dict[str, torch.optim.Optimizer] = {}
        for i, (name, params) in enumerate(groups.items()):
            params = list(params)
            if i == 0 and self.plugin is not None:
                params += list(self.plugin.center_parameters())
            self.optimizers[name] = torch.optim.Adam(
                params,
                lr=lr,
                weight_decay=weight_decay,
                amsgrad=amsgrad,
                fused=fused,
                **self.backbone.optimizer_options(),
            )
        nu_params = list(self.plugin.nu_parameters()) if self.plugin is not None else []
        if nu_params:
            # A parameter group of the host optimizer: its own learning rate, AMSGrad, no
            # weight decay and torch's default betas (whatever the backbone's), stepped with the
            # host group without a second optimizer call.
            self.optimizers[self.host_group].add_param_group(
                {
                    "params": nu_params,
                    "lr": nu_lr or lr,
                    "amsgrad": True,
                    "weight_decay": 0.0,
                    "betas": (0.9, 0.999),
                    "name": NU_GROUP,
                }
            )
        for opt in self.optimizers.values():
            for g in opt.param_groups:
                g["initial_lr"] = g["lr"]  # what set_epoch_lr scales (torch's schedulers' key)
        self.grad_clip = grad_clip
        # Every optimized parameter once: zeroing them directly costs one attribute write each,
        # where each optimizer's zero_grad() pays its own hooks and profiler scope per call.
        seen = {}
        for opt in self.optimizers.values():
            for g in opt.param_groups:
                seen.update((id(p), p) for p in g["params"])
        self._optimized = list(seen.values())

    def set_epoch_lr(self, epoch: int, decay: Optional[float], delay: int = 0) -> float:
        """Learning rate of (0-based) ``epoch``: initial * decay ** max(0, epoch - delay) on every
        backbone group (``backbone.lr_decay``); nu's group keeps its own constant rate, as its
        scheduler-free optimizer in the reference. A pure function of the epoch, so a resumed
        run continues on the same schedule. Returns the host group's rate (for the logs)."""
        factor = 1.0 if decay is None else float(decay) ** max(0, epoch - int(delay))
        for opt in self.optimizers.values():
            for g in opt.param_groups:
                if g.get("name") != NU_GROUP:
                    g["lr"] = g["initial_lr"] * factor
        return float(self.optimizers[self.host_group].param_groups[0]["lr"])

    def _optimize(self, loss: torch.Tensor, group: Optional[str] = None) -> None:
        for p in self._optimized:
            p.grad = None
        loss.backward()
        if group is None:
            chosen = list(self.optimizers.values())
        else:
            if group not in self.optimizers:
                raise KeyError(f"no optimizer group {group!r}; have {sorted(self.optimizers)}")
            chosen = [self.optimizers[group]]
        if self.grad_clip is not None:
            params = [p for opt in chosen for g in opt.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, self.grad_clip)
        for opt in chosen:
            opt.step()

    def _plugin_loss(self, z: torch.Tensor) -> Optional[Dict[str, torch.Tensor]]:
        return None if self.plugin is None else self.plugin.loss(z)

    # -- the four calls the loop makes ------------------------------------------------------
    def training_step(self, x: torch.Tensor, epoch: int) -> Dict[str, float]:
        ctx = StepContext(epoch, self._plugin_loss, self._optimize, self.uses_own_objective)
        return self.backbone.training_step(x, ctx)

    @torch.no_grad()
    def evaluate_loss(self, x: torch.Tensor, reference_criterion: bool = False) -> Dict[str, float]:
        """The training objective on held-out windows (validation), without any update.
        ``reference_criterion``: also ``criterion_reference``, this batch's term of the
        MADCluster reference solver's validation loss (``train.stop_criterion=reference``):
        the backbone's loss (when it keeps its objective) + the plug-in's mapping mean and
        cluster sum (:meth:`~madcluster_exp.madcluster.plugin._PluginBase.reference_criterion`)."""
        out = self.backbone(x)
        own = self.backbone.loss(x, out) if self.uses_own_objective else x.new_zeros(())
        plugin = self._plugin_loss(out.z)
        total = combine_losses(own, plugin, self.uses_own_objective)
        if not reference_criterion:
            return loss_logs(total, own, plugin)
        criterion = own if plugin is None else own + self.plugin.reference_criterion(plugin, out.z)
        return loss_logs(total, own, plugin, criterion_reference=criterion)

    @torch.no_grad()
    def score_components(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per-step scores [B, T] of each part: ``backbone`` and/or ``madcluster``."""
        out = self.backbone(x)
        comps = {}
        if self.uses_own_objective:
            comps["backbone"] = self.backbone.score(x, out)
        if self.plugin is not None:
            comps["madcluster"] = self.plugin.score(out.z)
        return comps

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        logs = self.backbone.on_epoch_end(epoch)
        if self.plugin is not None:
            logs.update(self.plugin.on_epoch_end(epoch))
        return logs


def build_detector(
    cfg: Config, n_channels: int, backbone_cls: Optional[Type[Backbone]] = None
) -> Detector:
    """The detector for a composed config, as a run builds it: the backbone ``backbone.name``
    names (or ``backbone_cls``, a variant of it such as the benchmark's baseline) over
    ``n_channels`` channels, with MADCluster per ``madcluster`` (none when disabled). The
    weights are drawn here: seed the RNGs first."""
    cls = backbone_cls or backbone_class(cfg.backbone.name)
    backbone = cls(n_channels, cfg.backbone)
    init_weights(backbone, cfg.train.init)
    return Detector(backbone, build_plugin(backbone.embed_dim, cfg.madcluster, int(cfg.seed)))


def optimizer_options(cfg: Config) -> Dict[str, object]:
    """:meth:`Detector.configure_optimizers`' arguments from a composed config."""
    return {
        "lr": float(cfg.backbone.lr),
        "weight_decay": float(cfg.backbone.weight_decay),
        "nu_lr": cfg.madcluster.nu_lr,
        "grad_clip": cfg.train.grad_clip,
        "fused": bool(cfg.train.fused_optimizer),
        "amsgrad": bool(cfg.train.amsgrad),
    }
