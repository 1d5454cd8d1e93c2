"""Small torch helpers shared by backbones and the plug-in (no model code imports here)."""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch


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
