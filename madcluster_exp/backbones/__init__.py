"""Backbones behind one contract; ``BACKBONES`` maps the config name to the class (found by
the ``name`` each class declares: a new backbone is a new module here)."""

from typing import Dict, Type

from madcluster_exp.backbones.base import Backbone, BackboneOutput, StepContext
from madcluster_exp.config.schema import BackboneConfig
from madcluster_exp.utils.registry import named_subclasses

#: Every backbone of this package, by the ``name`` its class declares.
BACKBONES: Dict[str, Type[Backbone]] = named_subclasses(__name__, Backbone)


def backbone_class(name: str) -> Type[Backbone]:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"backbone.name={name!r}: unknown; known: {sorted(BACKBONES)}") from None


def build_backbone(n_channels: int, cfg: BackboneConfig) -> Backbone:
    return backbone_class(cfg.name)(n_channels, cfg)


__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneOutput",
    "StepContext",
    "backbone_class",
    "build_backbone",
]
