"""Backbones behind one contract; ``BACKBONES`` maps the config name to the class."""
from typing import Dict, Type

from omegaconf import DictConfig

from madcluster_exp.backbones.base import Backbone, BackboneOutput, StepContext
from madcluster_exp.backbones.deepsvdd import DeepSVDD

BACKBONES: Dict[str, Type[Backbone]] = {
    "deepsvdd": DeepSVDD,
}


def build_backbone(n_channels: int, cfg: DictConfig) -> Backbone:
    try:
        cls = BACKBONES[cfg.name]
    except KeyError:
        raise ValueError(f"backbone.name={cfg.name!r}: unknown; known: {sorted(BACKBONES)}") from None
    return cls(n_channels, cfg)


__all__ = ["BACKBONES", "Backbone", "BackboneOutput", "StepContext", "build_backbone"]
