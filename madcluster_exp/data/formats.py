"""Readers for the published dataset layouts, with errors that name the file, row and problem.

- SMD (OmniAnomaly): ``{train,test,test_label}/machine-G-I.txt``, comma-separated, NO header
  (the first row is data: never let a reader eat it), 38 features, one label per test row.
- MSL / SMAP (NASA telemanom): ``data/{train,test}/<channel>.npy`` plus ``labeled_anomalies.csv``
  (``chan_id, spacecraft, anomaly_sequences, class, num_values``); anomaly sequences are
  inclusive ``[start, end]`` index pairs into the channel's test series.
- PSM (eBay RANSynCoders): ``{train,test}.csv`` with a ``timestamp_(min)`` first column and 25
  features, ``test_label.csv`` with ``timestamp_(min), label``.
- Generic TimeEval CSV: ``timestamp, features..., is_anomaly`` (univariate works).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd

from madcluster_exp.data.series import DataError


def natural_key(name: str):
    """machine-1-10 after machine-1-9: digits compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _col(name) -> str:
    """How a column is named in messages: its header, or its 0-based index without one."""
    return repr(name) if isinstance(name, str) else str(int(name))


def _first_bad_cell(frame: pd.DataFrame) -> Optional[Tuple[int, str, object]]:
    for col in frame.columns:
        # pandas >= 3 reads text as a string dtype, older versions as object: test "not numeric".
        if not pd.api.types.is_numeric_dtype(frame[col]):
            as_num = pd.to_numeric(frame[col], errors="coerce")
            bad = as_num.isna() & frame[col].notna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                return row, col, frame[col].iloc[row]
    return None


def read_numeric_table(
    path: Path,
    header: bool,
    expected_columns: Optional[int] = None,
    nan_policy: str = "error",
    time_column: bool = False,
) -> pd.DataFrame:
    """A numeric CSV as a DataFrame; ragged rows, non-numeric cells and (with
    ``nan_policy=error``) empty/NaN/inf cells raise DataError with the file's line number.
    ``time_column``: the first column is a timestamp (any text) and is dropped."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, header=0 if header else None, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file; expected rows of numbers") from None
    except pd.errors.ParserError as exc:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if match:
            raise DataError(
                f"{path}: line {match.group(2)} has {match.group(3)} fields, expected "
                f"{match.group(1)} like the lines before it (ragged row)"
            ) from None
        raise DataError(f"{path}: cannot parse as CSV: {exc}") from None
    offset = 2 if header else 1  # data row i is file line i + offset
    if len(frame) == 0:
        raise DataError(f"{path}: no data rows; expected at least one")
    if time_column:
        frame = frame.iloc[:, 1:]
    bad = _first_bad_cell(frame)
    if bad is not None:
        row, col, value = bad
        raise DataError(
            f"{path}: line {row + offset}, column {_col(col)}: {value!r} is not a number"
        )
    if expected_columns is not None and frame.shape[1] != expected_columns:
        raise DataError(f"{path}: {frame.shape[1]} columns, expected {expected_columns}")
    values = frame.to_numpy(dtype=np.float64)
    nonfinite = ~np.isfinite(values)
    if nonfinite.any():
        if nan_policy == "error":
            row, col = np.argwhere(nonfinite)[0]
            raise DataError(
                f"{path}: line {row + offset}, column {_col(frame.columns[col])}: "
                f"{values[row, col]} (missing or infinite); expected a finite number. "
                "Set dataset.nan_policy=zero to fill such cells with 0"
            )
        frame = frame.mask(pd.DataFrame(nonfinite, index=frame.index, columns=frame.columns), 0.0)
    return frame


def check_labels(labels: np.ndarray, source: str, n_rows: int) -> np.ndarray:
    if len(labels) != n_rows:
        raise DataError(
            f"{source}: {len(labels)} labels for {n_rows} test rows; expected one "
            "label per test row"
        )
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: row {i + 1}: label {labels[i].item()!r}; expected 0 or 1")
    return labels.astype(np.int8)


# --------------------------------------------------------------------------------------- SMD
def smd_entities(root: Path) -> List[str]:
    return sorted((p.stem for p in (root / "train").glob("machine-*.txt")), key=natural_key)


def read_smd_entity(root: Path, name: str, split: str, nan_policy: str = "error") -> np.ndarray:
    return read_numeric_table(
        root / split / f"{name}.txt", header=False, nan_policy=nan_policy
    ).to_numpy(np.float32)


def read_smd_labels(root: Path, name: str, n_rows: int) -> np.ndarray:
    path = root / "test_label" / f"{name}.txt"
    frame = read_numeric_table(path, header=False, expected_columns=1)
    return check_labels(frame.iloc[:, 0].to_numpy(), str(path), n_rows)


# ---------------------------------------------------------------------------- MSL / SMAP
def read_telemanom_table(root: Path, spacecraft: str) -> pd.DataFrame:
    path = root / "labeled_anomalies.csv"
    if not path.exists():
        raise DataError(f"{path}: file not found")
    table = pd.read_csv(path)
    missing = {"chan_id", "spacecraft", "anomaly_sequences", "num_values"} - set(table.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)}")
    return _merge_repeated_channels(table[table["spacecraft"] == spacecraft], path)


def _merge_repeated_channels(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """One row per channel: a channel listed on several rows gets the union of their anomaly
    sequences (rows must agree on num_values).

    The published file has 55 SMAP rows for 54 channels: P-2 appears twice, with the sequences
    [5350, 6575] and [5300, 6420]. Both label the same test series, so both count. (The
    MADCluster reference concatenates the two label vectors and then only ever reads the first
    row's part; its 54-channel list is exactly the distinct channels.)
    """
    repeated = table["chan_id"].duplicated(keep=False)
    if not repeated.any():
        return table.reset_index(drop=True)
    merged = []
    for chan, rows in table[repeated].groupby("chan_id", sort=False):
        lengths = set(rows["num_values"].astype(int))
        if len(lengths) > 1:
            raise DataError(
                f"{path}: channel {chan} is listed on lines "
                f"{[int(i) + 2 for i in rows.index]} with different num_values "
                f"{sorted(lengths)}; expected one length per channel"
            )
        sequences = []
        for text in rows["anomaly_sequences"]:
            try:
                sequences += list(ast.literal_eval(str(text)))
            except (ValueError, SyntaxError):
                raise DataError(
                    f"{path}: anomaly_sequences of {chan} is not a list of "
                    f"[start, end] pairs: {text!r}"
                ) from None
        row = rows.iloc[0].copy()
        row["anomaly_sequences"] = str(sequences)
        merged.append((rows.index[0], row))
    out = table[~repeated | ~table["chan_id"].duplicated(keep="first")].copy()
    for index, row in merged:
        out.loc[index] = row
    return out.reset_index(drop=True)


def read_npy(path: Path) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        values = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: not a numeric .npy array ({exc})") from None
    if values.ndim != 2:
        raise DataError(f"{path}: array of shape {values.shape}; expected [time, features]")
    return values.astype(np.float32)


def telemanom_labels(row: pd.Series, n_rows: int, source: str) -> np.ndarray:
    if int(row["num_values"]) != n_rows:
        raise DataError(
            f"{source}: labeled_anomalies.csv says num_values={row['num_values']} "
            f"for {row['chan_id']}, but its test series has {n_rows} rows"
        )
    try:
        sequences = ast.literal_eval(str(row["anomaly_sequences"]))
    except (ValueError, SyntaxError):
        raise DataError(
            f"{source}: anomaly_sequences of {row['chan_id']} is not a list of "
            f"[start, end] pairs: {row['anomaly_sequences']!r}"
        ) from None
    labels = np.zeros(n_rows, np.int8)
    for pair in sequences:
        start, end = int(pair[0]), int(pair[1])
        if not 0 <= start <= end < n_rows:
            raise DataError(
                f"{source}: {row['chan_id']}: anomaly sequence [{start}, {end}] "
                f"outside the test series of {n_rows} rows"
            )
        labels[start : end + 1] = 1  # inclusive ends
    return labels


# --------------------------------------------------------------------------------------- PSM
def read_psm(root: Path, nan_policy: str):
    kw = dict(header=True, nan_policy=nan_policy, time_column=True)
    train = read_numeric_table(root / "train.csv", **kw)
    test = read_numeric_table(root / "test.csv", **kw)
    label_frame = read_numeric_table(root / "test_label.csv", header=True, time_column=True)
    labels = check_labels(
        label_frame.iloc[:, -1].to_numpy(), str(root / "test_label.csv"), len(test)
    )
    return train.to_numpy(np.float32), test.to_numpy(np.float32), labels


# --------------------------------------------------------------------------- TimeEval CSV
def read_timeeval_csv(path: Path, nan_policy: str, label_column: str = "is_anomaly"):
    """(features [N, C] float32, labels [N] int8) of a TimeEval-format CSV."""
    frame = read_numeric_table(path, header=True, nan_policy=nan_policy, time_column=True)
    if label_column not in frame.columns:
        raise DataError(
            f"{path}: no {label_column!r} column; expected TimeEval format "
            f"'timestamp, features..., {label_column}', got columns "
            f"{['<timestamp>'] + list(frame.columns)}"
        )
    if frame.shape[1] < 2:
        raise DataError(f"{path}: expected at least a timestamp, one feature and {label_column!r}")
    labels = check_labels(frame[label_column].to_numpy(), str(path), len(frame))
    return frame.drop(columns=[label_column]).to_numpy(np.float32), labels
