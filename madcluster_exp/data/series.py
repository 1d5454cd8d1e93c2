"""Split containers: one contiguous float32 array per split, entity boundaries kept aside.

Why one array: windows are strided views into it (no per-window copies), and every split of
every dataset looks the same to the rest of the pipeline. Entity boundaries are kept as
segments so that no window ever straddles two entities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from madcluster_exp.errors import ExpectedError


class DataError(ExpectedError, ValueError):
    """Bad input data; the message names the file or entity, the row and what was expected."""


class TestAccessError(RuntimeError):
    """Raised when something reads the test split before training has finished."""

    __test__ = False  # not a pytest test class, despite the name


@dataclass
class Segment:
    name: str
    start: int
    end: int  # exclusive

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class SeriesSplit:
    """Values [N, C] float32 (C-contiguous), optional labels [N] int8, entity segments."""

    values: np.ndarray
    segments: List[Segment]
    labels: Optional[np.ndarray] = None
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if self.values.ndim != 2:
            raise DataError(
                f"{self.source}: expected a 2-D array [time, channels], "
                f"got shape {self.values.shape}"
            )
        self.values = np.ascontiguousarray(self.values, dtype=np.float32)
        if self.labels is not None:
            self.labels = np.ascontiguousarray(self.labels, dtype=np.int8)
            if len(self.labels) != len(self.values):
                raise DataError(
                    f"{self.source}: {len(self.labels)} labels for "
                    f"{len(self.values)} rows; expected one label per row"
                )

    def __len__(self) -> int:
        return len(self.values)

    @property
    def n_channels(self) -> int:
        return self.values.shape[1]

    @classmethod
    def concat(
        cls, parts: Sequence[Tuple[str, np.ndarray, Optional[np.ndarray]]], source: str = "<memory>"
    ) -> "SeriesSplit":
        """Concatenate (name, values, labels) parts into one array with entity segments."""
        if not parts:
            raise DataError(f"{source}: empty split (no entities)")
        widths = {name: np.asarray(values).shape[-1] for name, values, _ in parts}
        if len(set(widths.values())) > 1:
            first = parts[0][0]
            odd = next(n for n, w in widths.items() if w != widths[first])
            raise DataError(
                f"{source}: entity {odd} has {widths[odd]} features but {first} has "
                f"{widths[first]}; every entity needs the same features"
            )
        segments, start = [], 0
        for name, values, _ in parts:
            segments.append(Segment(name, start, start + len(values)))
            start += len(values)
        values = np.concatenate([p[1] for p in parts], axis=0).astype(np.float32, copy=False)
        has_labels = [p[2] is not None for p in parts]
        if any(has_labels) and not all(has_labels):
            raise DataError(f"{source}: labels present for some entities only")
        labels = np.concatenate([p[2] for p in parts]) if all(has_labels) else None
        return cls(values, segments, labels, source)

    def entity(self, name: str) -> "SeriesSplit":
        """The part of this split that belongs to one entity (a view, not a copy)."""
        for seg in self.segments:
            if seg.name == name:
                labels = None if self.labels is None else self.labels[seg.start : seg.end]
                return SeriesSplit(
                    self.values[seg.start : seg.end],
                    [Segment(name, 0, seg.length)],
                    labels,
                    f"{self.source}[{name}]",
                )
        raise KeyError(
            f"entity {name!r} not in {self.source}; have {[s.name for s in self.segments]}"
        )

    def head(self, rows: int) -> "SeriesSplit":
        """The first ``rows`` rows of every entity (debugging runs: ``dataset.max_length``)."""
        parts = [
            (
                seg.name,
                self.values[seg.start : seg.start + rows],
                None if self.labels is None else self.labels[seg.start : seg.start + rows],
            )
            for seg in self.segments
        ]
        parts = [(n, v, y) for n, v, y in parts if len(v)]
        return SeriesSplit.concat(parts, f"{self.source}[:{rows} rows per entity]")


class SealedTest:
    """The test split, readable only after :meth:`unseal` (called when training has ended).

    Honest evaluation: nothing before ``fit`` returns may look at test data. Rather than trust
    that, any early read raises, so a test can prove the pipeline never does it.
    """

    def __init__(self, load: Callable[[], SeriesSplit], description: str):
        self._load = load
        self._sealed = True
        self._cached: Optional[SeriesSplit] = None
        self.description = description

    @property
    def sealed(self) -> bool:
        return self._sealed

    def unseal(self) -> None:
        self._sealed = False

    def anomaly_count(self, entity: Optional[str] = None) -> Optional[int]:
        """How many test points are labelled anomalous (None: the split has no labels),
        readable while sealed: a count reveals no test value to training, and a run must know
        before training whether its test split has anything to detect."""
        if self._cached is None:
            self._cached = self._load()
        split = self._cached if entity is None else self._cached.entity(entity)
        return None if split.labels is None else int(split.labels.sum(dtype=np.int64))

    def get(self) -> SeriesSplit:
        if self._sealed:
            raise TestAccessError(
                f"test split of {self.description} read before training ended; "
                "honest evaluation forbids it"
            )
        if self._cached is None:
            self._cached = self._load()
        return self._cached


class LinkedSealedTest(SealedTest):
    """A test split derived from another sealed one (scaled, or one entity of it): it has its
    own seal, and unsealing it unseals the source it reads from."""

    def __init__(
        self,
        load: Callable[[], SeriesSplit],
        source: SealedTest,
        description: Optional[str] = None,
        entity: Optional[str] = None,
    ):
        super().__init__(load, description or source.description)
        self._source = source
        self._entity = entity  # this split is one entity of the source

    def anomaly_count(self, entity: Optional[str] = None) -> Optional[int]:
        return self._source.anomaly_count(entity or self._entity)

    def unseal(self) -> None:
        self._source.unseal()
        super().unseal()


@dataclass
class RawDataset:
    """What a loader returns: unscaled training series and the sealed test split."""

    name: str
    train: SeriesSplit
    test: SealedTest
    info: dict = field(default_factory=dict)

    @property
    def entities(self) -> List[str]:
        return [s.name for s in self.train.segments]

    @property
    def n_channels(self) -> int:
        return self.train.n_channels

    def subset(self, name: str) -> "RawDataset":
        """One entity as a dataset of its own; its test split has its own seal (reading it
        unseals the full test split, which is loaded once and shared)."""
        full = self.test
        test = LinkedSealedTest(
            lambda: full.get().entity(name), full, f"{full.description}[{name}]", entity=name
        )
        return RawDataset(self.name, self.train.entity(name), test, self.info)

    def head(self, rows: Optional[int]) -> "RawDataset":
        """The first ``rows`` training and test rows of every entity (None: unchanged); the
        shortened test split keeps its own seal, linked to the full one."""
        if rows is None:
            return self
        full = self.test
        test = LinkedSealedTest(lambda: full.get().head(rows), full, full.description)
        return RawDataset(self.name, self.train.head(rows), test, self.info)


def check_finite(values: np.ndarray, source: str) -> None:
    """Raise DataError naming the first row and column holding NaN or inf."""
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{source}: non-finite value {values[row, col].item()!r} at row {row}, "
            f"column {col}; expected finite numbers everywhere"
        )
