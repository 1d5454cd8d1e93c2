"""The Backbone contract every detector body implements, so MADCluster plugs into any of them.

A backbone maps a window x [B, T, C] to a per-step embedding z [B, T, f] (the tap MADCluster
uses), has its own objective (``loss``) and its own per-step anomaly score (``score``, higher =
more anomalous). Backbones with a special schedule (two-phase adversarial training, minimax)
override :meth:`training_step`; the training loop never branches on the backbone's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from madcluster_exp.config.schema import BackboneConfig


@dataclass
class BackboneOutput:
    z: torch.Tensor  # [B, T, f] per-step embedding at the configured tap
    aux: Dict[str, torch.Tensor] = field(default_factory=dict)


def combine_losses(
    backbone_loss: torch.Tensor, plugin: Optional[dict], uses_own_objective: bool
) -> torch.Tensor:
    """Total loss: the backbone's objective (if it keeps one) plus the plug-in's term."""
    if plugin is None:
        return backbone_loss
    if not uses_own_objective:
        return plugin["total"]
    return backbone_loss + plugin["total"]


def loss_logs(
    total: torch.Tensor, backbone: torch.Tensor, plugin: Optional[dict], **extra: torch.Tensor
) -> Dict[str, float]:
    """The loss components a step reports (floats): total, backbone, any extras, and the
    plug-in's mapping and cluster terms when it is on. One device-to-host copy for all of
    them: each ``.item()`` would be a separate CUDA synchronisation."""
    logs = {"loss": total, "loss_backbone": backbone, **extra}
    if plugin is not None:
        logs.update(loss_mapping=plugin["mapping"], loss_cluster=plugin["cluster"])
    with torch.no_grad():  # one stack of the 0-d losses, not three calls per value
        values = torch.stack(list(logs.values())).float().tolist()
    return dict(zip(logs, values))


class StepContext:
    """What a training step may use: the plug-in's loss on an embedding and the optimizer step.

    ``plugin_loss(z)`` returns ``None`` with MADCluster off, else a dict with ``mapping``,
    ``cluster`` and ``total`` (the term added to the backbone loss). ``optimize(loss, group)``
    zeroes every gradient, back-propagates, clips if configured and steps the optimizer of
    ``group`` (a key of the backbone's ``optimizer_groups``; None = all). The plug-in's center
    and nu step with the backbone's first group, so add the plug-in term to that group's loss.
    """

    def __init__(
        self,
        epoch: int,
        plugin_loss: Callable[[torch.Tensor], Optional[dict]],
        optimize: Callable[..., None],
        uses_own_objective: bool,
    ):
        self.epoch = epoch
        self.plugin_loss = plugin_loss
        self.optimize = optimize
        self.uses_own_objective = uses_own_objective

    def combine(self, backbone_loss: torch.Tensor, plugin: Optional[dict]) -> torch.Tensor:
        return combine_losses(backbone_loss, plugin, self.uses_own_objective)


class Backbone(nn.Module):
    """Base class: subclasses set ``family``, ``embed_taps`` and implement forward/loss/score."""

    #: The option that picks it (``backbone=<name>``); the registry finds backbones by it.
    name: ClassVar[str]
    family: ClassVar[str] = "unknown"
    #: Per-step representations MADCluster can tap; ``cfg.embed_tap`` picks one.
    embed_taps: ClassVar[Tuple[str, ...]] = ()
    #: False where MADCluster's learnable center *replaces* the backbone's own objective and
    #: score (Deep SVDD: two centers would fight; method.md section 4). True everywhere else.
    keeps_objective_with_plugin: ClassVar[bool] = True
    #: How this backbone's per-step scores fold into point scores; None = ``scoring.aggregate``.
    #: SLMR uses "sum" over sparse per-step scores to reproduce its reference point score.
    score_aggregate: ClassVar[Optional[str]] = None
    #: Early stopping's tie rule, as the backbone's reference code: True = a validation loss
    #: equal to the best so far (within ``train.min_delta``) counts as an improvement, so the
    #: latest such epoch is kept and patience restarts (the EarlyStopping class of the
    #: DCdetector and Anomaly Transformer code); False = only a strictly lower loss does.
    keep_latest_on_tie: ClassVar[bool] = False

    def __init__(self, n_channels: int, cfg: BackboneConfig):
        super().__init__()
        if self.embed_taps and cfg.embed_tap not in self.embed_taps:
            raise ValueError(
                f"backbone.embed_tap={cfg.embed_tap!r} is not a tap of "
                f"{cfg.name}; expected one of {', '.join(self.embed_taps)}"
            )
        self.n_channels = n_channels
        self.window = int(cfg.window)
        self.embed_tap = cfg.embed_tap
        self.embed_dim: int = 0  # set by subclasses
        #: False when nothing consumes ``BackboneOutput.z`` (MADCluster off; set by Detector):
        #: a backbone whose tap costs extra work (DCdetector's patch attention) may then skip
        #: it and return z=None. Backbones whose own objective uses z ignore it.
        self.tap_needed = True

    # -- the three required pieces -------------------------------------------------------
    def forward(self, x: torch.Tensor) -> BackboneOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def score(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    # -- hooks with sensible defaults ----------------------------------------------------
    @classmethod
    def data_window(cls, window: int) -> int:
        """Length of the data windows consumed for ``backbone.window`` (SLMR: lookback + 1
        forecast target). A classmethod: the data pipeline needs it before the model exists."""
        return window

    @property
    def input_length(self) -> int:
        return self.data_window(self.window)

    def optimizer_groups(self) -> Dict[str, List[nn.Parameter]]:
        """Named parameter groups, one optimizer each (USAD: one per autoencoder)."""
        return {"main": [p for p in self.parameters() if p.requires_grad]}

    def optimizer_options(self) -> Dict[str, object]:
        """Extra keyword arguments for every Adam of this backbone's groups (BeatGAN: its
        reference's betas (0.5, 0.999)); {} = torch's defaults."""
        return {}

    def extra_log_params(self) -> Dict[str, object]:
        """Backbone-specific facts to log as MLflow params (e.g. the effective tap)."""
        return {}

    def on_fit_start(
        self, train_batches: Callable[[], Iterable[torch.Tensor]], uses_own_objective: bool
    ) -> None:
        """Called once before the first epoch with a factory of training batches."""

    def training_step(self, x: torch.Tensor, ctx: StepContext) -> Dict[str, float]:
        """One optimisation step; returns the loss components to log (floats)."""
        out = self(x)
        own = self.loss(x, out) if ctx.uses_own_objective else x.new_zeros(())
        plugin = ctx.plugin_loss(out.z)
        total = ctx.combine(own, plugin)
        ctx.optimize(total)
        return loss_logs(total, own, plugin)

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        """Called after every training epoch; returns values to log (e.g. a fitted radius)."""
        return {}
