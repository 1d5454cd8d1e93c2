"""Where Hydra finds the configs: the ``conf/`` directory, the schemas in the ConfigStore (one
row per schema dataclass, found by its ``SCHEMA`` class attribute), the command line's
spellings that Hydra would reject (``madcluster=true``), and the one folder name a sweep job
gets from its overrides (``${madcluster_dirname:${hydra.job.override_dirname}}``)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterable, Iterator, List, Tuple

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from madcluster_exp.config.schema import (
    BackboneConfig,
    ClassicalConfig,
    Config,
    DatasetConfig,
    MADClusterConfig,
    MetricsConfig,
    PathsConfig,
    ScoringConfig,
    ThresholdConfig,
    TrackingConfig,
    TrainConfig,
)

#: The Hydra config tree, next to the package source (installed editable).
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")

#: Groups with one schema each, stored as ``schema/<group>/default``.
SINGLE_SCHEMAS = {
    "paths": PathsConfig,
    "madcluster": MADClusterConfig,
    "train": TrainConfig,
    "scoring": ScoringConfig,
    "threshold": ThresholdConfig,
    "metrics": MetricsConfig,
    "tracking": TrackingConfig,
}

#: Groups whose options each have their own schema: group -> the schemas' base classes.
OPTION_SCHEMAS = {"dataset": (DatasetConfig,), "backbone": (BackboneConfig, ClassicalConfig)}


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def schema_rows() -> List[Tuple[str, str, type]]:
    """(group, name, dataclass) for every schema: the single ones, and every subclass of an
    option group's base that names itself with a ``SCHEMA`` class attribute."""
    rows = [(group, "default", node) for group, node in SINGLE_SCHEMAS.items()]
    for group, bases in OPTION_SCHEMAS.items():
        for base in bases:
            rows += [(group, sub.SCHEMA, sub) for sub in _subclasses(base) if "SCHEMA" in vars(sub)]
    return rows


def option_schema(group: str, name: str) -> type:
    """The schema dataclass of one option of ``dataset`` or ``backbone``."""
    for g, n, node in schema_rows():
        if g == group and n == name:
            return node
    raise KeyError(f"{group}={name}: no schema")


#: Characters a folder name cannot hold as they are, percent-encoded ("%" first, so the
#: encoding stays one-to-one and two overrides never share a folder).
_UNSAFE = {"%": "%25", "/": "%2F", "\\": "%5C", "\0": "%00"}
#: Longest folder name kept as it is (file systems allow 255 bytes).
MAX_DIRNAME = 200


def job_dirname(override_dirname: str) -> str:
    """One folder, never nested ones, from Hydra's ``hydra.job.override_dirname``: a path-valued
    override (``dataset.path=/data/tsb``) has its separators percent-encoded
    (``dataset.path=%2Fdata%2Ftsb``); a name over :data:`MAX_DIRNAME` bytes keeps its head and
    ends with a hash of the whole. The same overrides always give the same name, so a resumed
    sweep finds its finished jobs; names without such characters are Hydra's own."""
    name = "".join(_UNSAFE.get(c, c) for c in str(override_dirname))
    if name in ("", ".", ".."):
        name = {"": "_", ".": "%2E", "..": "%2E%2E"}[name]
    if len(name.encode()) > MAX_DIRNAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        head = name.encode()[: MAX_DIRNAME - 13].decode(errors="ignore")
        name = f"{head}-{digest}"
    return name


def register_configs() -> None:
    """Register the schemas under the names the YAML files list in their defaults, and the
    resolver sweep folders are named with (``madcluster_dirname``)."""
    if not OmegaConf.has_resolver("madcluster_dirname"):
        OmegaConf.register_new_resolver("madcluster_dirname", job_dirname)
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    # Under schema/<group>/ so `--help` lists them apart from the options users pick.
    for group, name, node in schema_rows():
        cs.store(group=f"schema/{group}", name=name, node=node)


# `madcluster=true|false` (and yes/no) mean on/off: Hydra would reject a boolean group option.
_ONOFF = re.compile(r"^(\+{0,2}madcluster)=(true|false|yes|no)$", re.IGNORECASE)


def normalise_argv(args: List[str]) -> List[str]:
    """Command-line overrides with boolean spellings of the madcluster group mapped to on/off."""
    out = []
    for arg in args:
        m = _ONOFF.match(arg)
        out.append(
            f"{m.group(1)}={'on' if m.group(2).lower() in ('true', 'yes') else 'off'}" if m else arg
        )
    return out


def compose(overrides: Iterable[str] = ()) -> DictConfig:
    """The root config composed with ``overrides``, as the command line composes it (for
    entry points other than ``python -m madcluster_exp``: predict, bench, tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return hydra_compose(config_name="config", overrides=list(overrides))
