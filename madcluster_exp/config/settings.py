"""The composed config made into typed settings, once, at the entry point.

:func:`load` validates the composed :class:`~omegaconf.DictConfig` (ranges, cross-field rules),
warns about settings without effect, fills in the by-protocol defaults, and turns it into the
schema's dataclasses (``OmegaConf.to_object``). Everything below the entry reads the result:
:class:`Settings` holds the typed config and the facts derived from its composed form (MLflow
params, the resolved YAML, a plain nested dict for saved models), so no later step needs the
``DictConfig`` again.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from madcluster_exp.config.checks import ConfigError, inert_settings, resolve_defaults, validate
from madcluster_exp.config.schema import Config
from madcluster_exp.config.store import option_schema


@dataclass(frozen=True)
class Settings:
    """A job's configuration, typed and checked."""

    #: The schema's dataclasses; ``cfg.backbone`` is the chosen backbone's own schema.
    cfg: Config
    #: Every leaf as ``group.key`` -> value, closed choices as plain strings (MLflow params).
    params: Dict[str, Any]
    #: The nested plain form (closed choices as strings): saved models, JSON.
    container: Dict[str, Any]
    #: ``config_resolved.yaml``.
    yaml: str
    #: Keys set without effect in this configuration, with the reason (warned once by load).
    inert: Tuple[str, ...] = ()


def _flat(node: Any, prefix: str = "", out: Dict[str, Any] | None = None) -> Dict[str, Any]:
    out = {} if out is None else out
    if isinstance(node, dict):
        for k, v in node.items():
            _flat(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = node
    return out


def _missing(cfg: DictConfig) -> list:
    """Keys of ``cfg`` whose mandatory value (``???``) was never given."""
    keys = []

    def walk(node, prefix):
        for key in node.keys():
            path = f"{prefix}.{key}" if prefix else str(key)
            if OmegaConf.is_missing(node, key):
                keys.append(path)
            elif isinstance(node._get_node(key), DictConfig):
                walk(node[key], path)

    walk(cfg, "")
    return keys


def load(cfg: DictConfig, warn: bool = True) -> Settings:
    """Check ``cfg`` and make it typed settings; configuration errors raise
    :class:`ConfigError` here, before any work or MLflow run."""
    missing = _missing(cfg)
    if missing:
        raise ConfigError(
            "missing value: "
            + ", ".join(missing)
            + " must be given (e.g. "
            + " ".join(f"{k}=<value>" for k in missing)
            + ")"
        )
    validate(cfg)
    inert = tuple(inert_settings(cfg))  # as composed, before the by-protocol defaults fill in
    if inert and warn:
        warnings.warn("these settings have no effect here: " + "; ".join(inert), stacklevel=3)
    resolved = resolve_defaults(cfg)
    try:
        typed = OmegaConf.to_object(resolved)
    except MissingMandatoryValue as exc:  # an interpolation to a missing value
        raise ConfigError(f"missing value: {exc.full_key} must be given") from None
    container = OmegaConf.to_container(resolved, resolve=True, enum_to_str=True)
    params = _flat(container)
    _refuse_unknown(params, _flat(dataclasses.asdict(typed)))
    return Settings(
        cfg=typed,
        params=params,
        container=container,
        yaml=OmegaConf.to_yaml(resolved, resolve=True),
        inert=inert,
    )


def _refuse_unknown(given: Dict[str, Any], known: Dict[str, Any]) -> None:
    """A key the schema does not know (added with ``+key=`` or ``++key=``) would be carried in
    the params and the config id while nothing reads it: refused, naming the closest real key."""
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    lines = []
    for key in unknown:
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}={given[key]!r}?" if close else ""
        lines.append(f"{key}: not a key of the configuration{hint}")
    raise ConfigError(
        "unknown key (the schema has no such setting, so nothing would read it):\n  "
        + "\n  ".join(lines)
    )


def from_container(container: Dict[str, Any]) -> Config:
    """A saved configuration (the plain nested dict of :attr:`Settings.container`, keys as the
    current schema names them) as typed settings; unknown keys are refused by the schema."""
    node = OmegaConf.structured(Config)
    data = dict(container)
    for group in ("dataset", "backbone"):
        if group in data:
            schema = option_schema(group, _option_name(group, data[group]))
            node[group] = OmegaConf.merge(OmegaConf.structured(schema), data.pop(group))
    return OmegaConf.to_object(OmegaConf.merge(node, data))


def _option_name(group: str, values: Dict[str, Any]) -> str:
    """The schema option a saved group was composed from: a backbone by its name; a dataset
    by its name, or its loader's (SMAP and MSL share the telemanom schema)."""
    name = values.get("name")
    if group == "dataset" and name in ("SMAP", "MSL"):
        return "telemanom"
    return name
