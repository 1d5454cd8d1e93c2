"""Entry point: ``python -m madcluster_exp [overrides]`` (Hydra CLI: --help, --cfg job, -m)."""

import sys

import hydra
from omegaconf import DictConfig

from madcluster_exp.app import CONFIG_DIR, context_from_hydra, job
from madcluster_exp.config import normalise_argv


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    # Hydra's runtime config is read here, once; the job gets what it needs of it.
    return job(cfg, context_from_hydra())


if __name__ == "__main__":
    sys.argv[1:] = normalise_argv(sys.argv[1:])
    main()
