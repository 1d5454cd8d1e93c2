"""A folder of series, each its own entity, in the formats the community benchmarks ship.

Formats are told apart by name and content (first line), never by a flag:

- **TSB-AD** (Liu & Paparrizos, NeurIPS 2024): ``<i>_<Dataset>_id_<k>_<Domain>_tr_<n>_1st_<m>.csv``,
  a header of feature columns then ``Label`` (0/1); the first ``n`` rows are the training part
  (TSB-AD reads ``filename.split('_')[-3]``, the number after ``_tr_``). Univariate files have
  one feature column (``Data``), multivariate ones several.
- **UCR anomaly archive** (Wu & Keogh, 2021):
  ``<id>_UCR_Anomaly_<name>_<train_end>_<begin>_<end>.txt``, whitespace-separated values
  (one per line; a few files hold all values on one line). The archive is indexed as in
  MATLAB, from 1 with inclusive ends: values ``1..train_end`` are the training part and values
  ``begin..end`` the one anomaly, i.e. 0-based rows ``[0, train_end)`` and
  ``[begin - 1, end - 1]``.
- **TimeEval** (Schmidl et al., VLDB 2022): ``<name>.csv`` with ``timestamp, features...,
  is_anomaly``; an optional ``<name>.train.csv`` beside it is the training part (its labels are
  never read for fitting), otherwise the leading ``dataset.train_fraction`` of the file is.

Training part = the prefix (or train file) only. Test part = the rows after the prefix
(``dataset.test_part=rest``, default: test and training rows never overlap) or the whole series
(``whole``, TSB-AD's published protocol, which scores the training prefix too). Labels in the
training prefix are never used.

Files that cannot be used are not fatal: :func:`scan_collection` and :meth:`Collection.subset`
raise or record a :class:`DataError` naming the file (and the line/column where one applies),
and the run skips that series with the reason logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from madcluster_exp.config.schema import DatasetConfig
from madcluster_exp.data.formats import (
    check_labels,
    natural_key,
    read_numeric_table,
    read_timeeval_csv,
)
from madcluster_exp.data.series import DataError, RawDataset, SealedTest, SeriesSplit

TSBAD, UCR, TIMEEVAL = "tsbad", "ucr", "timeeval"
UCR_NAME = re.compile(r"^(\d+)_UCR_Anomaly_(.+)_(\d+)_(\d+)_(\d+)$")
TSBAD_TRAIN = re.compile(r"_tr_(\d+)_")
TRAIN_SUFFIX = ".train.csv"


@dataclass
class SeriesFile:
    """One series of a collection, as detected from its name and first line."""

    name: str  # entity name: the file name without its extension
    path: Path
    format: str  # tsbad | ucr | timeeval
    train_path: Optional[Path] = None  # TimeEval's <name>.train.csv


@dataclass
class Skipped:
    file: str
    reason: str


def _header(path: Path) -> List[str]:
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    if not first.strip():
        raise DataError(f"{path}: empty first line; expected a CSV header")
    return [c.strip().strip('"').strip("'") for c in first.rstrip("\r\n").split(",")]


def detect(path: Path) -> SeriesFile:
    """The format of one file from its name and header; DataError says why it is none."""
    if path.suffix == ".txt":
        if not UCR_NAME.match(path.stem):
            raise DataError(
                f"{path.name}: a .txt file whose name is not UCR's "
                "<id>_UCR_Anomaly_<name>_<train_end>_<begin>_<end>.txt, so its "
                "training part and labels are unknown"
            )
        return SeriesFile(path.stem, path, UCR)
    if path.suffix != ".csv":
        raise DataError(
            f"{path.name}: not a series file; expected .csv (TSB-AD or TimeEval) "
            "or .txt (UCR anomaly archive)"
        )
    columns = _header(path)
    if columns[-1] == "Label":
        if not TSBAD_TRAIN.search(path.stem):
            raise DataError(
                f"{path.name}: TSB-AD columns (features then 'Label') but no "
                "'_tr_<n>_' in the file name, so the training prefix is unknown"
            )
        return SeriesFile(path.stem, path, TSBAD)
    if "is_anomaly" in columns:
        train = path.with_name(path.stem + TRAIN_SUFFIX)
        return SeriesFile(path.stem, path, TIMEEVAL, train if train.exists() else None)
    raise DataError(
        f"{path.name}: header {columns[:6]}{'...' if len(columns) > 6 else ''} "
        "has neither a last column 'Label' (TSB-AD) nor an 'is_anomaly' column "
        "(TimeEval)"
    )


def scan_collection(root: Path) -> Tuple[List[SeriesFile], List[Skipped]]:
    """Every series file directly in ``root`` (natural order), and the files skipped with why.
    TimeEval training files travel with their series and are not series themselves."""
    if not root.is_dir():
        raise DataError(
            f"dataset.path={str(root)!r}: not a folder (resolved to "
            f"{root.resolve()}); expected a folder of series files"
        )
    series: List[SeriesFile] = []
    skipped: List[Skipped] = []
    seen: Dict[str, str] = {}
    for path in sorted(root.iterdir(), key=lambda p: natural_key(p.name)):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            skipped.append(
                Skipped(
                    path.name,
                    "a folder; a collection is the files directly "
                    "in dataset.path (not read recursively)",
                )
            )
            continue
        if path.name.endswith(TRAIN_SUFFIX):
            test = path.with_name(path.name[: -len(TRAIN_SUFFIX)] + ".csv")
            if not test.exists():
                skipped.append(
                    Skipped(
                        path.name,
                        f"TimeEval training file without its series {test.name} beside it",
                    )
                )
            continue
        try:
            found = detect(path)
        except DataError as exc:
            skipped.append(Skipped(path.name, str(exc)))
            continue
        if found.name in seen:
            skipped.append(Skipped(path.name, f"same series name as {seen[found.name]}"))
            continue
        seen[found.name] = path.name
        series.append(found)
    return series, skipped


# ----------------------------------------------------------------------------------- readers
def read_ucr_values(path: Path, nan_policy: str = "error") -> np.ndarray:
    """The values of a UCR .txt file as [N, 1]: whitespace-separated numbers, one per line or
    many on one line (some archive files); a bad token is named by line and position."""
    text = path.read_text(encoding="utf-8", errors="replace")
    tokens = text.split()
    if not tokens:
        raise DataError(f"{path}: empty file; expected numbers separated by whitespace")
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:
        for i, line in enumerate(text.splitlines(), start=1):
            for j, token in enumerate(line.split(), start=1):
                try:
                    float(token)
                except ValueError:
                    raise DataError(
                        f"{path}: line {i}, value {j}: {token!r} is not a number"
                    ) from None
        raise  # pragma: no cover - a token float() accepts but numpy refuses
    bad = ~np.isfinite(values)
    if bad.any():
        if nan_policy == "error":
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}: value {i + 1} ({tokens[i]}) is missing or infinite; "
                "expected a finite number. Set dataset.nan_policy=zero to fill "
                "such values with 0"
            )
        values[bad] = 0.0
    return values.astype(np.float32)[:, None]


def ucr_split(path: Path, n: int) -> Tuple[int, np.ndarray]:
    """(training prefix length, labels [n]) from a UCR file name (1-based, inclusive)."""
    match = UCR_NAME.match(path.stem)
    train_end, begin, end = (int(match.group(k)) for k in (3, 4, 5))
    where = f"{path.name}: name says train 1..{train_end}, anomaly {begin}..{end}"
    if not 1 <= begin <= end <= n:
        raise DataError(
            f"{where}, but the file holds {n} values; expected 1 <= begin <= end <= {n}"
        )
    if not 0 < train_end < begin:
        raise DataError(
            f"{where}: expected the training part to end before the anomaly "
            "begins (training data must be free of the labelled anomaly)"
        )
    labels = np.zeros(n, np.int8)
    labels[begin - 1 : end] = 1  # 1-based inclusive -> 0-based rows begin-1 .. end-1
    return train_end, labels


def read_tsbad(path: Path, nan_policy: str = "error") -> Tuple[np.ndarray, np.ndarray, int]:
    """(features [N, C], labels [N], training prefix length) of a TSB-AD CSV file."""
    frame = read_numeric_table(path, header=True, nan_policy=nan_policy)
    if frame.shape[1] < 2 or frame.columns[-1] != "Label":
        raise DataError(
            f"{path}: columns {list(frame.columns)}; expected feature columns then 'Label'"
        )
    labels = check_labels(frame["Label"].to_numpy(), str(path), len(frame))
    n_train = int(TSBAD_TRAIN.search(path.stem).group(1))
    if not 0 < n_train < len(frame):
        raise DataError(
            f"{path.name}: '_tr_{n_train}_' in the name, but the file has "
            f"{len(frame)} rows; expected 0 < n < {len(frame)}"
        )
    return frame.iloc[:, :-1].to_numpy(np.float32), labels, n_train


# -------------------------------------------------------------------------------- collection
class Collection:
    """The series of one folder; each is read when its turn comes (:meth:`subset`), so a
    collection of hundreds of long series never sits in memory at once."""

    name = "collection"

    def __init__(
        self, root: Path, series: List[SeriesFile], skipped: List[Skipped], cfg: DatasetConfig
    ):
        self.root = root
        self.series = {s.name: s for s in series}
        self.skipped = skipped
        self.cfg = cfg

    @property
    def entities(self) -> List[str]:
        return list(self.series)

    def describe(self, name: str) -> Dict[str, str]:
        s = self.series[name]
        out = {"series": name, "series.format": s.format, "series.file": s.path.name}
        if s.train_path is not None:
            out["series.train_file"] = s.train_path.name
        return out

    def subset(self, name: str) -> RawDataset:
        """One series as a dataset: training part = prefix / train file; the test part is
        sealed. Reads and checks the whole file now, so a bad file fails before training."""
        s = self.series[name]
        policy = self.cfg.nan_policy
        if s.format == TIMEEVAL:
            x, y, n_train, train_x = self._timeeval(s)
        elif s.format == TSBAD:
            x, y, n_train = read_tsbad(s.path, policy)
            train_x = x[:n_train]
        else:
            x = read_ucr_values(s.path, policy)
            n_train, y = ucr_split(s.path, len(x))
            train_x = x[:n_train]
        start = 0 if self.cfg.test_part == "whole" else n_train  # n_train = 0 with a train file
        test_x, test_y = x[start:], y[start:]
        train = SeriesSplit.concat([(name, train_x, None)], f"{s.path}(train)")
        source = f"{s.path}(test)"
        sealed = SealedTest(
            lambda: SeriesSplit.concat([(name, test_x, test_y)], source), str(s.path)
        )
        return RawDataset(self.name, train, sealed, {"path": str(s.path), "format": s.format}).head(
            self.cfg.max_length
        )

    def _timeeval(self, s: SeriesFile):
        policy = self.cfg.nan_policy
        x, y = read_timeeval_csv(s.path, policy)
        if s.train_path is not None:
            train_x, _ = read_timeeval_csv(s.train_path, policy)
            if train_x.shape[1] != x.shape[1]:
                raise DataError(
                    f"{s.train_path.name}: {train_x.shape[1]} features but "
                    f"{s.path.name} has {x.shape[1]}; expected the same features"
                )
            return x, y, 0, train_x
        fraction = float(self.cfg.train_fraction)
        cut = int(round(fraction * len(x)))
        if not 0 < cut < len(x):
            raise DataError(
                f"{s.path.name}: {len(x)} rows leave an empty split at "
                f"dataset.train_fraction={fraction} (no {s.name}{TRAIN_SUFFIX} "
                "beside it)"
            )
        return x, y, cut, x[:cut]


def load_collection(cfg: DatasetConfig, root: Path) -> Collection:
    series, skipped = scan_collection(root)
    if cfg.entities is not None:
        unknown = [w for w in cfg.entities if w not in {s.name for s in series}]
        if unknown:
            raise DataError(
                f"collection {root}: dataset.entities names {unknown}, which are "
                f"not usable series there; available: {[s.name for s in series]}"
            )
        series = [s for s in series if s.name in set(cfg.entities)]
    if cfg.max_entities is not None:
        series = series[: int(cfg.max_entities)]
    if not series:
        reasons = "".join(f"\n  {s.file}: {s.reason}" for s in skipped)
        raise DataError(f"collection {root}: no usable series file{reasons or ' (empty folder)'}")
    return Collection(root, series, skipped, cfg)
