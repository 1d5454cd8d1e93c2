"""Dataset name -> loader. A loader returns a :class:`RawDataset` whose test split is sealed."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional

from madcluster_exp.config.schema import DatasetConfig
from madcluster_exp.data.collection import Collection, load_collection
from madcluster_exp.data.formats import (
    natural_key,
    read_npy,
    read_psm,
    read_smd_entity,
    read_smd_labels,
    read_telemanom_table,
    read_timeeval_csv,
    smd_entities,
    telemanom_labels,
)
from madcluster_exp.data.series import DataError, RawDataset, SealedTest, SeriesSplit
from madcluster_exp.data.synthetic import make_synthetic

Loader = Callable[[DatasetConfig, Path], RawDataset]
LOADERS: Dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        LOADERS[name] = fn
        return fn

    return deco


def _select_entities(names, wanted, source: str, limit: Optional[int] = None):
    """``dataset.entities`` (all when None), then the first ``dataset.max_entities`` of them."""
    if wanted is not None:
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise DataError(
                f"{source}: dataset.entities names {unknown} which do not exist; "
                f"available: {list(names)}"
            )
    chosen = list(names if wanted is None else wanted)
    return chosen[:limit] if limit is not None else chosen


@register("synthetic")
def load_synthetic(cfg: DatasetConfig, data_dir: Path) -> RawDataset:
    entities = make_synthetic(
        cfg.n_entities,
        cfg.n_channels,
        cfg.train_length,
        cfg.test_length,
        cfg.anomaly_ratio,
        cfg.noise,
        cfg.seed,
    )
    keep = _select_entities([e.name for e in entities], cfg.entities, "synthetic", cfg.max_entities)
    chosen = [e for e in entities if e.name in keep]
    train = SeriesSplit.concat([(e.name, e.train, None) for e in chosen], "synthetic/train")

    def load_test() -> SeriesSplit:
        return SeriesSplit.concat(
            [(e.name, e.test, e.test_labels) for e in chosen], "synthetic/test"
        )

    info = {"anomalies": {e.name: [a.__dict__ for a in e.anomalies] for e in chosen}}
    return RawDataset("synthetic", train, SealedTest(load_test, "synthetic"), info)


class DatasetMissingError(DataError):
    """The dataset's files are not where the config says; the message says how to get them."""


def _root(cfg: DatasetConfig, data_dir: Path) -> Path:
    return Path(cfg.path) if cfg.path else data_dir / cfg.name


def _missing(cfg: DatasetConfig, looked: Path) -> DatasetMissingError:
    """The dataset is not where the config says: a path given explicitly (``dataset.path``) is
    wrong, and the message says so; the default place is empty, and it says how to fill it."""
    name = cfg.name
    if cfg.path:
        root = Path(cfg.path)
        where = f"dataset.path={cfg.path!r} (resolved to {root.resolve()})"
        problem = (
            "no such folder"
            if not root.exists()
            else "not a folder"
            if not root.is_dir()
            else f"the folder holds no {name} files in the published layout: looked for {looked}"
        )
        return DatasetMissingError(
            f"{where}: {problem}.\n"
            f"  Check the path, or leave dataset.path unset to use <paths.data_dir>/{name} "
            "(datasets/README.md shows each dataset's layout)."
        )
    return DatasetMissingError(
        f"dataset {name} not found: looked for {looked}.\n"
        f"  Fetch it with:  python -m madcluster_exp.data download {name}   "
        f"(or: make data DATASET={name})\n"
        f"  or unpack files you downloaded yourself with:  "
        f"python -m madcluster_exp.data prepare {name} --from <archive or folder>\n"
        f"  or point dataset.path at a folder in the published layout (datasets/README.md)."
    )


@register("SMD")
def load_smd(cfg: DatasetConfig, data_dir: Path) -> RawDataset:
    root = _root(cfg, data_dir)
    names = smd_entities(root)
    if not names:
        raise _missing(cfg, root / "train" / "machine-*.txt")
    keep = _select_entities(names, cfg.entities, f"SMD ({root})", cfg.max_entities)
    policy = cfg.nan_policy
    train = SeriesSplit.concat(
        [(n, read_smd_entity(root, n, "train", policy), None) for n in keep], str(root / "train")
    )

    def load_test() -> SeriesSplit:
        parts = []
        for n in keep:
            x = read_smd_entity(root, n, "test", policy)
            parts.append((n, x, read_smd_labels(root, n, len(x))))
        return SeriesSplit.concat(parts, str(root / "test"))

    return RawDataset("SMD", train, SealedTest(load_test, "SMD"), {"root": str(root)})


def _load_telemanom(cfg: DatasetConfig, data_dir: Path) -> RawDataset:
    root = _root(cfg, data_dir)
    if not (root / "labeled_anomalies.csv").exists():
        raise _missing(cfg, root / "labeled_anomalies.csv")
    table = read_telemanom_table(root, cfg.name)
    if table.empty:
        raise DataError(f"{root / 'labeled_anomalies.csv'}: no channel of spacecraft {cfg.name}")
    table = table[~table["chan_id"].isin(list(cfg.exclude))]
    names = sorted(table["chan_id"].astype(str), key=natural_key)
    keep = _select_entities(names, cfg.entities, f"{cfg.name} ({root})", cfg.max_entities)
    rows = table.set_index("chan_id").loc[keep]
    train = SeriesSplit.concat(
        [(n, read_npy(root / "data" / "train" / f"{n}.npy"), None) for n in keep],
        str(root / "data" / "train"),
    )

    def load_test() -> SeriesSplit:
        parts = []
        for n in keep:
            path = root / "data" / "test" / f"{n}.npy"
            x = read_npy(path)
            row = rows.loc[n].copy()
            row["chan_id"] = n
            parts.append((n, x, telemanom_labels(row, len(x), str(path))))
        return SeriesSplit.concat(parts, str(root / "data" / "test"))

    return RawDataset(cfg.name, train, SealedTest(load_test, cfg.name), {"root": str(root)})


register("MSL")(_load_telemanom)
register("SMAP")(_load_telemanom)


@register("PSM")
def load_psm(cfg: DatasetConfig, data_dir: Path) -> RawDataset:
    root = _root(cfg, data_dir)
    if not (root / "train.csv").exists():
        raise _missing(cfg, root / "train.csv")
    _select_entities(["PSM"], cfg.entities, "PSM")
    cache = {}

    def read():
        if not cache:
            cache["data"] = read_psm(root, cfg.nan_policy)
        return cache["data"]

    train = SeriesSplit.concat([("PSM", read()[0], None)], str(root / "train.csv"))

    def load_test() -> SeriesSplit:
        return SeriesSplit.concat([("PSM", read()[1], read()[2])], str(root / "test.csv"))

    return RawDataset("PSM", train, SealedTest(load_test, "PSM"), {"root": str(root)})


@register("csv")
def load_csv(cfg: DatasetConfig, data_dir: Path) -> RawDataset:
    path = Path(cfg.path)
    if not path.exists():
        raise DataError(f"dataset.path={cfg.path!r}: file not found (resolved to {path.resolve()})")
    name = path.stem
    _select_entities([name], cfg.entities, str(path))
    if cfg.train_path:
        train_x, _ = read_timeeval_csv(Path(cfg.train_path), cfg.nan_policy, cfg.label_column)
        test_source = (path, None)
    else:
        if not 0.0 < cfg.train_fraction < 1.0:
            raise DataError(
                f"dataset.train_fraction={cfg.train_fraction}: expected a value in "
                "(0, 1) when one file holds both splits"
            )
        x, y = read_timeeval_csv(path, cfg.nan_policy, cfg.label_column)
        cut = int(round(cfg.train_fraction * len(x)))
        if cut == 0 or cut == len(x):
            raise DataError(
                f"{path}: {len(x)} rows leave an empty split at train_fraction={cfg.train_fraction}"
            )
        train_x, test_source = x[:cut], (x[cut:], y[cut:])
    train = SeriesSplit.concat([(name, train_x, None)], str(cfg.train_path or path))

    def load_test() -> SeriesSplit:
        if test_source[1] is None:
            tx, ty = read_timeeval_csv(path, cfg.nan_policy, cfg.label_column)
        else:
            tx, ty = test_source
        return SeriesSplit.concat([(name, tx, ty)], str(path))

    return RawDataset("csv", train, SealedTest(load_test, str(path)), {"path": str(path)})


@register("collection")
def load_series_collection(cfg: DatasetConfig, data_dir: Path) -> Collection:
    """Every series file in ``dataset.path`` as its own entity (formats: data/collection.py).
    Returns a :class:`Collection`, read one series at a time, not one RawDataset."""
    return load_collection(cfg, Path(cfg.path))


def load_dataset(cfg: DatasetConfig, data_dir: Path) -> RawDataset:
    """The dataset's loader, then ``dataset.max_length`` (first rows of every entity, train and
    test) whatever the dataset: ``debug=fast`` caps entities and length through these keys."""
    try:
        loader = LOADERS[cfg.name]
    except KeyError:
        raise DataError(f"dataset.name={cfg.name!r}: no loader; known: {sorted(LOADERS)}") from None
    raw = loader(cfg, data_dir)
    return raw if isinstance(raw, Collection) else raw.head(cfg.max_length)
