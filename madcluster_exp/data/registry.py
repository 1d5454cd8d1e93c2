"""Dataset name -> loader. A loader returns a :class:`RawDataset` whose test split is sealed."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

from omegaconf import DictConfig

from madcluster_exp.data.series import DataError, RawDataset, SealedTest, SeriesSplit
from madcluster_exp.data.synthetic import make_synthetic

Loader = Callable[[DictConfig, Path], RawDataset]
LOADERS: Dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        LOADERS[name] = fn
        return fn
    return deco


def _select_entities(names, wanted, source: str):
    if wanted is None:
        return list(names)
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise DataError(f"{source}: dataset.entities names {unknown} which do not exist; "
                        f"available: {list(names)}")
    return list(wanted)


@register("synthetic")
def load_synthetic(cfg: DictConfig, data_dir: Path) -> RawDataset:
    entities = make_synthetic(cfg.n_entities, cfg.n_channels, cfg.train_length, cfg.test_length,
                              cfg.anomaly_ratio, cfg.noise, cfg.seed)
    keep = _select_entities([e.name for e in entities], cfg.entities, "synthetic")
    chosen = [e for e in entities if e.name in keep]
    train = SeriesSplit.concat([(e.name, e.train, None) for e in chosen], "synthetic/train")

    def load_test() -> SeriesSplit:
        return SeriesSplit.concat([(e.name, e.test, e.test_labels) for e in chosen],
                                  "synthetic/test")

    info = {"anomalies": {e.name: [a.__dict__ for a in e.anomalies] for e in chosen}}
    return RawDataset("synthetic", train, SealedTest(load_test, "synthetic"), info)


def load_dataset(cfg: DictConfig, data_dir: Path) -> RawDataset:
    try:
        loader = LOADERS[cfg.name]
    except KeyError:
        raise DataError(f"dataset.name={cfg.name!r}: no loader; known: {sorted(LOADERS)}") from None
    return loader(cfg, data_dir)
