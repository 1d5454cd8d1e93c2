"""Atomic per-epoch checkpoints: everything needed to continue a run as if never interrupted.

A checkpoint holds the detector (backbone + plug-in, buffers such as centers and radii), every
optimizer, the early-stopping state and the best weights so far, the history, and the RNG
states (torch, numpy, Python, and the generator that orders the batches), so a resumed run
reaches the same final metrics as an uninterrupted one. It is written to a temporary file and
renamed over the previous one, so a kill at any moment leaves either the old or the new
checkpoint, never half of one. Loading uses ``torch.load(weights_only=True)``: a checkpoint can
hold tensors and plain containers only, never arbitrary pickled objects.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from madcluster_exp.config.identity import MAY_GROW, resume_conflicts
from madcluster_exp.errors import ExpectedError


class ResumeError(ExpectedError):
    """A run directory holds checkpoints trained with another configuration."""


def check_resume(info_path: Path, flat: Dict[str, Any], tracking_uri: Optional[str]) -> List[str]:
    """Continue only what was trained with this config: raise :class:`ResumeError` naming the
    keys that differ from the ones recorded in ``run_info.json`` (and the two ways out), before
    anything is touched. Returns the allowed changes (``train.epochs`` grown) as text."""
    info = json.loads(info_path.read_text())
    recorded = info.get("config")
    if recorded is None:
        conflicts = [
            f"{info_path.name} records no config (written by an older version), so "
            "the checkpoints cannot be matched to this one"
        ]
    else:
        conflicts = resume_conflicts(recorded, flat)
    old_uri = info.get("tracking_uri")
    if old_uri and tracking_uri and old_uri != tracking_uri:
        conflicts.append(f"tracking uri: {old_uri} -> {tracking_uri}")
    if conflicts:
        run = f" (MLflow run {info['run_id']})" if info.get("run_id") else ""
        raise ResumeError(
            f"{info_path.parent} holds checkpoints of a run{run} with another configuration; "
            "continuing it would record one config and train another. Keys that differ "
            "(recorded -> now):\n  " + "\n  ".join(conflicts) + "\nEither start over in this "
            "directory with train.resume=false (a new MLflow run; its checkpoints are "
            "replaced), or keep both runs: give this one a new directory, "
            "hydra.run.dir=<new dir>."
        )
    return [
        f"{k}: {recorded[k]} -> {flat[k]}"
        for k in sorted(MAY_GROW)
        if recorded.get(k) != flat.get(k)
    ]


def rng_state(order: torch.Generator) -> Dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "order": order.get_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "python": random.getstate(),
    }


def set_rng_state(state: Dict[str, Any], order: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    order.set_state(state["order"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


class Checkpointer:
    """Saves and loads ``<dir>/<name>.pt`` atomically."""

    def __init__(self, directory: Path, name: str = "last"):
        self.path = Path(directory) / f"{name}.pt"

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, state: Dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp-{os.getpid()}")
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # atomic on POSIX

    def load(self) -> Optional[Dict[str, Any]]:
        if not self.exists():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def remove(self) -> None:
        if self.exists():
            self.path.unlink()
