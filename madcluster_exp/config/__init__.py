"""The configuration: schemas (``schema``), their registration with Hydra (``store``), the
checks a type cannot express (``checks``), the typed settings a job reads (``settings``) and
the identity of a configuration (``identity``, config ids and resume fingerprints).

Only this package, the entry point and Hydra's plug-ins handle Hydra's ``DictConfig``; the rest
of the package reads :class:`Settings` or one typed group of it. Nothing here imports torch.
"""

from madcluster_exp.config.checks import (
    RESUME_LAST,
    ConfigError,
    combine_rule,
    inert_settings,
    resolve_defaults,
    validate,
)
from madcluster_exp.config.schema import (
    INJECTED_KINDS,
    PROTOCOL_COMBINE,
    SEARCH_OBJECTIVES,
    Choice,
    Combine,
    Config,
    MADClusterConfig,
    Objective,
    Protocol,
    Spread,
    ThresholdKind,
)
from madcluster_exp.config.settings import Settings, from_container, load
from madcluster_exp.config.store import CONFIG_DIR, compose, normalise_argv, register_configs

__all__ = [
    "CONFIG_DIR",
    "INJECTED_KINDS",
    "PROTOCOL_COMBINE",
    "RESUME_LAST",
    "SEARCH_OBJECTIVES",
    "Choice",
    "Combine",
    "Config",
    "ConfigError",
    "MADClusterConfig",
    "Objective",
    "Protocol",
    "Settings",
    "Spread",
    "ThresholdKind",
    "combine_rule",
    "compose",
    "from_container",
    "inert_settings",
    "load",
    "normalise_argv",
    "register_configs",
    "resolve_defaults",
    "validate",
]
