"""Small datasets in the real published layouts, and a local HTTP server that serves them.

The generators write exactly the formats the loaders read (SMD's header-less text files,
telemanom's .npy + labeled_anomalies.csv, PSM's CSVs with a timestamp column, TimeEval CSV,
TSB-AD's CSV with the training prefix in its name, the UCR anomaly archive's .txt), with a few
hundred rows so tests run in seconds.
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List

import numpy as np


def _signal(rng, n, c):
    t = np.arange(n)[:, None]
    return np.sin(2 * np.pi * t / rng.uniform(20, 60, c)) + 0.05 * rng.normal(size=(n, c))


def make_smd(
    root: Path,
    machines=("machine-1-1", "machine-1-2", "machine-2-1"),
    n_train=300,
    n_test=300,
    features=38,
    seed=0,
) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    written = {}
    for m in machines:
        for split, n in (("train", n_train), ("test", n_test)):
            x = _signal(rng, n, features)
            (root / split).mkdir(parents=True, exist_ok=True)
            np.savetxt(root / split / f"{m}.txt", x, delimiter=",", fmt="%.6f")
            written[f"{split}/{m}"] = x
        y = np.zeros(n_test, dtype=int)
        y[100:120] = 1
        (root / "test_label").mkdir(parents=True, exist_ok=True)
        np.savetxt(root / "test_label" / f"{m}.txt", y, fmt="%d")
        written[f"test_label/{m}"] = y
    return written


def make_telemanom(root: Path, channels=None, n_train=300, n_test=300, seed=0):
    """MSL (55 features) and SMAP (25) channels in one labeled_anomalies.csv, as published."""
    rng = np.random.default_rng(seed)
    channels = channels or {"MSL": ["M-1", "C-2", "T-10"], "SMAP": ["P-1", "E-3"]}
    rows = []
    for craft, names in channels.items():
        width = 55 if craft == "MSL" else 25
        for name in names:
            for split in ("train", "test"):
                (root / "data" / split).mkdir(parents=True, exist_ok=True)
                np.save(
                    root / "data" / split / f"{name}.npy",
                    _signal(rng, n_train if split == "train" else n_test, width),
                )
            rows.append(f'{name},{craft},"[[50, 59], [200, 219]]","[point, contextual]",{n_test}')
    (root / "labeled_anomalies.csv").write_text(
        "chan_id,spacecraft,anomaly_sequences,class,num_values\n" + "\n".join(rows) + "\n"
    )


def make_psm(root: Path, n_train=400, n_test=300, seed=0, nan_at=None):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    cols = ",".join(["timestamp_(min)"] + [f"feature_{i}" for i in range(25)])
    for split, n in (("train", n_train), ("test", n_test)):
        x = _signal(rng, n, 25)
        lines = [cols] + [",".join([str(i)] + [f"{v:.5f}" for v in row]) for i, row in enumerate(x)]
        if split == "train" and nan_at is not None:
            r, c = nan_at
            cells = lines[r + 1].split(",")
            cells[c + 1] = ""
            lines[r + 1] = ",".join(cells)
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    y = np.zeros(n_test, dtype=int)
    y[150:170] = 1
    (root / "test_label.csv").write_text(
        "timestamp_(min),label\n" + "\n".join(f"{i},{v}" for i, v in enumerate(y)) + "\n"
    )


def make_timeeval(path: Path, n=400, channels=2, seed=0, anomaly=(250, 270)):
    rng = np.random.default_rng(seed)
    x = _signal(rng, n, channels)
    y = np.zeros(n, dtype=int)
    y[anomaly[0] : anomaly[1]] = 1
    x[y == 1] += 3.0
    header = "timestamp," + ",".join(f"value-{i}" for i in range(channels)) + ",is_anomaly"
    lines = [header] + [
        f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}," + ",".join(f"{v:.5f}" for v in row) + f",{lab}"
        for i, (row, lab) in enumerate(zip(x, y))
    ]
    path.write_text("\n".join(lines) + "\n")
    return x, y


def make_tsbad(
    folder: Path,
    index=1,
    n=400,
    n_train=150,
    channels=1,
    anomaly=(250, 270),
    seed=0,
    dataset="Fixture",
):
    """A TSB-AD file: features then ``Label``, the training prefix in the name (``_tr_<n>_``);
    univariate files name their one column ``Data``, as TSB-AD-U does."""
    rng = np.random.default_rng(seed)
    x = _signal(rng, n, channels)
    y = np.zeros(n, dtype=int)
    y[anomaly[0] : anomaly[1]] = 1
    x[y == 1] += 3.0
    cols = ["Data"] if channels == 1 else [f"sensor_{i}" for i in range(channels)]
    domain = "Sensor" if channels > 1 else "Facility"
    path = folder / f"{index:03d}_{dataset}_id_{index}_{domain}_tr_{n_train}_1st_{anomaly[0]}.csv"
    lines = [",".join(cols + ["Label"])] + [
        ",".join(f"{v:.5f}" for v in row) + f",{lab}" for row, lab in zip(x, y)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path, x, y


def make_ucr(
    folder: Path,
    index=1,
    n=400,
    train_end=150,
    begin=261,
    end=280,
    one_line=False,
    seed=0,
    name="Fixture",
):
    """A UCR anomaly archive file: ``<id>_UCR_Anomaly_<name>_<train_end>_<begin>_<end>.txt``,
    1-based inclusive positions, one value per line (or all on one line, as a few archive
    files have them, separated by runs of spaces)."""
    rng = np.random.default_rng(seed)
    x = _signal(rng, n, 1)[:, 0]
    x[begin - 1 : end] += 3.0
    path = folder / f"{index:03d}_UCR_Anomaly_{name}_{train_end}_{begin}_{end}.txt"
    values = [f"{v:.6e}" for v in x]
    path.write_text(("   " + "   ".join(values) + "\n") if one_line else "\n".join(values) + "\n")
    return path, x


def zip_tree(src: Path, prefix: str) -> bytes:
    """A zip of ``src`` with every member under ``prefix`` (e.g. a GitHub archive's top folder)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(src).as_posix())
    return buf.getvalue()


def malicious_zip(members: List[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("OmniAnomaly-master/ServerMachineDataset/train/machine-1-1.txt", "1,2\n")
        for name in members:
            zf.writestr(name, "owned\n")
    return buf.getvalue()


class FixtureServer:
    """A real HTTP server on 127.0.0.1 serving a folder, with Range support (for resumes) and
    optional faults: drop the connection after N bytes on the first request of a file, or
    ignore Range headers."""

    def __init__(self, root: Path, ranges: bool = True):
        self.root = root
        self.ranges = ranges
        self.drop_after: Dict[str, int] = {}
        self.requests: List[tuple] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.translate_path(self.path)
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if not os.path.isfile(path):
                    self.send_error(404)
                    return
                data = Path(path).read_bytes()
                start = 0
                if rng and server.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                limit = server.drop_after.pop(self.path, None)
                if limit is not None:
                    self.wfile.write(body[:limit])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
