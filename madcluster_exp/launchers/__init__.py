"""Sweep launchers of the project's own (Hydra plug-ins live under ``plugins/hydra_plugins``)."""

import sys
from pathlib import Path

#: Added to sys.path so that Hydra's plug-in discovery (the ``hydra_plugins`` namespace
#: package) finds the launchers shipped inside this package.
PLUGIN_ROOT = str(Path(__file__).resolve().parent / "plugins")


def register_plugins() -> None:
    if PLUGIN_ROOT not in sys.path:
        sys.path.append(PLUGIN_ROOT)


# On import too: a Ray worker imports this package (for the task function) before it unpickles
# the job's Hydra state, which names the plug-in's class.
register_plugins()
