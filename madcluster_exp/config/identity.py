"""What identifies a run: its configuration (every key that changes a trained model, a score or
a metric) and its seed.

Keys that change no number are left out: where records go and how progress is shown
(``tracking.*``, ``paths.*``, ``train.progress``, ``train.checkpoint``, ``train.resume``,
``train.num_threads``, ``notes``). Scoring, threshold and metrics keys stay in: a resumed run
re-scores, and MLflow params are written once, so a run resumed with another threshold would
record the old one beside the new numbers.

- :func:`config_id`: a short hash of the identifying keys without the seed, the same for every
  seed of one configuration; run names carry it, so the default run, ``madcluster.k=3``,
  ``debug=fast`` and every Optuna trial get different names.
- :func:`resume_conflicts`: the keys that differ between a run directory's recorded config and
  the one asked for now (``train.epochs`` may grow: more epochs continue the same training).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List

NOT_IDENTIFYING_PREFIXES = ("tracking.", "paths.")
NOT_IDENTIFYING_KEYS = frozenset(
    {"train.progress", "train.checkpoint", "train.resume", "train.num_threads", "notes"}
)
MAY_GROW = frozenset({"train.epochs"})
#: Keys added to the schema after runs were recorded, each with the value that does what every
#: run did before the key existed. At that value such a key is left out of the identity, so a
#: configuration keeps its config id, fingerprint and checkpoints across the addition; any
#: other value identifies the run as usual.
ADDED_KEYS: Dict[str, Any] = {
    "dataset.validation": "train_tail",
    "train.stop_criterion": "objective",
    "pipeline": None,
}


def identifying(flat: Dict[str, Any]) -> Dict[str, Any]:
    """The keys of a flattened config (``group.key`` -> value) that identify a run."""
    return {
        k: v
        for k, v in flat.items()
        if not k.startswith(NOT_IDENTIFYING_PREFIXES)
        and k not in NOT_IDENTIFYING_KEYS
        and not (k in ADDED_KEYS and v == ADDED_KEYS[k])
    }


def _digest(values: Dict[str, Any]) -> str:
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(flat: Dict[str, Any]) -> str:
    """Hash of every identifying key, seed included (stored in run_info.json)."""
    return _digest(identifying(flat))


def config_id(flat: Dict[str, Any], length: int = 6) -> str:
    """Short hash of the identifying keys without the seed: one id per configuration."""
    return _digest({k: v for k, v in identifying(flat).items() if k != "seed"})[:length]


def resume_conflicts(recorded: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """``key: recorded -> current`` for every identifying key that differs (``train.epochs``
    only when it shrinks); empty when the run may be continued."""
    old, new = identifying(recorded), identifying(current)
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a == b:
            continue
        if key in MAY_GROW and isinstance(a, int) and isinstance(b, int) and b > a:
            continue
        out.append(f"{key}: {a!r} -> {b!r}" + (" (may only grow)" if key in MAY_GROW else ""))
    return out
