"""Small torch helpers shared by backbones and the plug-in (no model code imports here)."""

from __future__ import annotations

import random
from typing import List, Optional

import numpy as np
import torch
from torch import nn

#: Layers ``init_weights(kind="he")`` re-initialises (see ``train.init`` in config.py): the list
#: of the MADCluster reference's ``he_init_normal``, which has no Conv1d.
HE_LAYERS = (nn.Linear, nn.Conv2d, nn.Conv3d)
#: Attribute that marks a layer whose backbone initialises it as its own reference does.
OWN_INIT = "keeps_own_init"


def keep_own_init(layer: nn.Module) -> nn.Module:
    """Mark ``layer`` as initialised by its backbone, after its reference (e.g. OmniAnomaly's
    TF Glorot kernels): ``init_weights`` leaves it as it is. Returns the layer."""
    setattr(layer, OWN_INIT, True)
    return layer


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (a model's init depends on it alone)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def radius_due(epoch: int, warmup_epochs: int) -> bool:
    """Whether a soft-boundary radius is fitted at the end of (0-based) ``epoch``: from epoch
    index ``warmup_epochs`` on, i.e. after ``warmup_epochs`` complete epochs trained without
    it, as Deep SVDD's reference code (``epoch >= warm_up_n_epochs``). The one warm-up rule of
    Deep SVDD's radius (``backbone.radius_warmup_epochs``) and the plug-in's
    (``madcluster.radius_warmup_epochs``)."""
    return epoch >= warmup_epochs


def init_weights(module: nn.Module, kind: str) -> int:
    """Re-initialise ``module``'s layers as ``train.init`` says; returns how many were touched.

    ``default`` leaves PyTorch's per-layer init. ``he``: He-normal weights (Kaiming, fan_in, ReLU
    gain, std sqrt(2 / fan_in)) and zero biases on every Linear, Conv2d and Conv3d layer, as the
    MADCluster reference applies ``he_init_normal`` to its whole model; every other layer, and
    any layer marked by :func:`keep_own_init`, keeps the init its backbone gave it (BeatGAN's
    Xavier convs, OmniAnomaly's Glorot dense layers, RNNs, norms, 1-D convs). Draws from the
    global RNG, so it is seeded like the backbone's own construction (the same for MADCluster
    on/off).
    """
    if kind == "default":
        return 0
    if kind != "he":
        raise ValueError(f"train.init={kind!r}: expected default or he")
    touched = 0
    for m in module.modules():
        if isinstance(m, HE_LAYERS) and not getattr(m, OWN_INIT, False):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
            touched += 1
    return touched


class QuantileSample:
    """Keeps an evenly spaced, RNG-free subsample of values seen during an epoch.

    Radii are quantiles of training distances; keeping every value of an SMD-sized epoch would
    cost gigabytes, and drawing a random subsample would consume the global RNG (changing, e.g.,
    dropout masks between MADCluster on and off). Even spacing does neither.
    """

    def __init__(self, per_batch: int = 2048):
        self.per_batch = per_batch
        self._chunks: List[torch.Tensor] = []

    def add(self, values: torch.Tensor) -> None:
        flat = values.detach().reshape(-1)
        step = max(1, flat.numel() // self.per_batch)
        # Stays on the values' device: a copy to the host here would stall every CUDA step
        # until the GPU caught up. It moves once per epoch, in quantile().
        self._chunks.append(flat[::step].float())

    def quantile(self, q: float) -> Optional[float]:
        """The q-quantile of everything added since the last reset (None if nothing)."""
        if not self._chunks:
            return None
        # numpy: torch.quantile refuses inputs above 2**24 elements.
        return float(np.quantile(torch.cat(self._chunks).cpu().numpy(), q))

    def reset(self) -> None:
        self._chunks.clear()
