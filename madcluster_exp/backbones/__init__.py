"""Backbones behind one contract; ``BACKBONES`` maps the config name to the class."""

from typing import Dict, Type

from omegaconf import DictConfig

from madcluster_exp.backbones.anomaly_transformer import AnomalyTransformer
from madcluster_exp.backbones.base import Backbone, BackboneOutput, StepContext
from madcluster_exp.backbones.beatgan import BeatGAN
from madcluster_exp.backbones.dcdetector import DCdetector
from madcluster_exp.backbones.deepsvdd import DeepSVDD
from madcluster_exp.backbones.lstm_ae import LSTMAE
from madcluster_exp.backbones.omnianomaly import OmniAnomaly
from madcluster_exp.backbones.slmr import SLMR
from madcluster_exp.backbones.thoc import THOC
from madcluster_exp.backbones.usad import USAD

BACKBONES: Dict[str, Type[Backbone]] = {
    "deepsvdd": DeepSVDD,
    "lstm_ae": LSTMAE,
    "usad": USAD,
    "anomaly_transformer": AnomalyTransformer,
    "dcdetector": DCdetector,
    "slmr": SLMR,
    "thoc": THOC,
    "omnianomaly": OmniAnomaly,
    "beatgan": BeatGAN,
}


def backbone_class(name: str) -> Type[Backbone]:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"backbone.name={name!r}: unknown; known: {sorted(BACKBONES)}") from None


def build_backbone(n_channels: int, cfg: DictConfig) -> Backbone:
    return backbone_class(cfg.name)(n_channels, cfg)


__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneOutput",
    "StepContext",
    "backbone_class",
    "build_backbone",
]
