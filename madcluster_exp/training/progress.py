"""Progress display: a bar on a terminal, one line per epoch in logs and CI."""

from __future__ import annotations

import logging
import sys
import time
from typing import Dict, Iterable, Iterator, Optional

from tqdm.auto import tqdm

#: Lines for the job's log file only (no console handler; see run.job_record).
RECORD = logging.getLogger("madcluster_exp.record")
RECORD.propagate = False


def resolve_mode(mode: str) -> str:
    if mode == "auto":
        return "bar" if sys.stderr.isatty() else "line"
    return mode


def _fmt(logs: Dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in logs.items())


class Progress:
    """Wraps the batch iterator of each epoch and reports the epoch's summary."""

    def __init__(self, mode: str, epochs: int, stream=None):
        self.mode = resolve_mode(mode)
        self.epochs = epochs
        self.stream = stream or sys.stderr
        self._bar: Optional[tqdm] = None
        self._t0 = 0.0

    def batches(self, it: Iterable, epoch: int, total: int) -> Iterator:
        self._t0 = time.perf_counter()
        if self.mode != "bar":
            yield from it
            return
        self._bar = tqdm(
            it,
            total=total,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            leave=False,
            file=self.stream,
            dynamic_ncols=True,
        )
        for item in self._bar:
            yield item

    def set_postfix(self, loss: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def epoch_end(self, epoch: int, logs: Dict[str, float], note: str = "") -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        seconds = time.perf_counter() - self._t0
        line = f"epoch {epoch + 1}/{self.epochs} [{seconds:.1f}s] {_fmt(logs)}{note}"
        RECORD.info(line)  # the job's log file (run.job_record), whatever the display mode
        if self.mode == "none":
            return
        if self.mode == "bar":
            tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)
