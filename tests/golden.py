"""Golden runs: what a default run, an ``-m experiment=smoke`` sweep and a collection run record.

A restructuring of the package must not change what a run computes or records. ``capture``
runs the three commands as a user would (subprocess, the real CLI, SQLite MLflow store in a
fresh folder) and reads back, per MLflow run: its name, params, tags (but git, time and
MLflow's own bookkeeping), metric keys and values (but wall-clock ``time/*``), the config id,
``config_resolved.yaml`` (folder paths replaced by placeholders) and the arrays of
``scores.npz``. ``tests/test_golden.py`` compares a fresh capture with the one stored in
``tests/data/golden/`` (written before the move); ``python -m tests.golden --write`` rewrites
it when a change of behaviour is intended.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

GOLDEN_DIR = Path(__file__).resolve().parent / "data" / "golden"
REPO = Path(__file__).resolve().parent.parent

# Tags that say when or from which checkout a run was made, not what it computed.
VOLATILE_TAGS = ("git_commit", "git_dirty", "mlflow.source.", "mlflow.user", "mlflow.runName")
VOLATILE_METRICS = ("time/",)

RUNS = {
    "default": ["train.epochs=3", "train.progress=none"],
    "smoke_sweep": ["-m", "experiment=smoke", "hydra/launcher=basic"],
    "collection": ["dataset=collection", "backbone=knn", "madcluster=off", "dataset.path=${COLL}"],
}


def _series(folder: Path) -> None:
    """Three TSB-AD-style univariate series, deterministic."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in (1, 2, 3):
        rng = np.random.default_rng(index)
        n, n_train = 600, 250
        t = np.arange(n)
        x = np.sin(2 * np.pi * t / (20 + 5 * index)) + 0.1 * rng.standard_normal(n)
        y = np.zeros(n, dtype=int)
        y[400 + 10 * index : 420 + 10 * index] = 1
        x[y == 1] += 2.5
        path = folder / f"{index:03d}_Golden_id_{index}_Facility_tr_{n_train}_1st_{400}.csv"
        rows = ["Data,Label"] + [f"{v:.6f},{lab}" for v, lab in zip(x, y)]
        path.write_text("\n".join(rows) + "\n")


def _run(name: str, root: Path) -> None:
    coll = root / "series"
    if name == "collection":
        _series(coll)
    args = [a.replace("${COLL}", str(coll)) for a in RUNS[name]]
    cmd = [
        sys.executable,
        "-m",
        "madcluster_exp",
        *args,
        f"paths.root_dir={root}",
        f"paths.output_dir={root / 'outputs'}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # This checkout's package, whatever the installed one is.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def _clean(text: str, root: Path) -> str:
    """Folder paths as placeholders: the job's root, and a sweep's dated folder."""
    text = text.replace(str(root), "<ROOT>")
    return re.sub(r"\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}(-\d+)?", "<DATE>/<TIME>", text)


def _read_store(root: Path) -> Dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'outputs' / 'mlflow.db'}")
    runs: Dict[str, Any] = {}
    arrays: Dict[str, np.ndarray] = {}
    for exp in client.search_experiments():
        for r in client.search_runs([exp.experiment_id], max_results=1000):
            # A sweep's parent is named by its start time.
            name = re.sub(r"^sweep-\d{8}-\d{6}", "sweep-<time>", r.info.run_name)
            key = name if r.data.tags.get("mlflow.parentRunId") is None else f"child:{name}"
            params = {k: _clean(v, root) for k, v in r.data.params.items()}
            tags = {
                k: _clean(v, root)
                for k, v in r.data.tags.items()
                if not k.startswith(VOLATILE_TAGS) and k != "mlflow.parentRunId"
            }
            metrics = {
                k: v for k, v in r.data.metrics.items() if not k.startswith(VOLATILE_METRICS)
            }
            artifacts = sorted(a.path for a in client.list_artifacts(r.info.run_id))
            entry = {
                "status": r.info.status,
                "params": params,
                "tags": tags,
                "metrics": metrics,
                "artifacts": artifacts,
                "parent": r.data.tags.get("mlflow.parentRunId") is not None,
            }
            local = Path(client.download_artifacts(r.info.run_id, "", str(root / "dl" / key)))
            cfg_file = local / "config_resolved.yaml"
            if cfg_file.exists():
                entry["config_resolved"] = _clean(cfg_file.read_text(), root)
            npz = local / "scores.npz"
            if npz.exists():
                with np.load(npz) as z:
                    for k in z.files:
                        arrays[f"{key}::{k}"] = z[k]
            runs[key] = entry
    return {"runs": runs, "arrays": arrays}


def capture(names: List[str] | None = None) -> Dict[str, Dict[str, Any]]:
    """Run each golden command in a fresh folder; what its MLflow store holds, per command."""
    out = {}
    # One capture at a time on a machine: the folders are fixed (see below).
    lock = open(Path(tempfile.gettempdir()) / "madcluster_exp-golden.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    for name in names or list(RUNS):
        # A fixed folder: the collection's path is a param and so part of its config id.
        root = Path(tempfile.gettempdir()).resolve() / "madcluster_exp-golden" / name
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        try:
            _run(name, root)
            out[name] = _read_store(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    lock.close()
    return out


def write(captured: Dict[str, Dict[str, Any]]) -> None:
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for name, data in captured.items():
        (GOLDEN_DIR / f"{name}.json").write_text(json.dumps(data["runs"], indent=1, sort_keys=True))
        np.savez_compressed(GOLDEN_DIR / f"{name}.npz", **data["arrays"])


def load(name: str) -> Dict[str, Any]:
    runs = json.loads((GOLDEN_DIR / f"{name}.json").read_text())
    with np.load(GOLDEN_DIR / f"{name}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return {"runs": runs, "arrays": arrays}


def _flat_yaml(text: str) -> Dict[str, Any]:
    import yaml

    out: Dict[str, Any] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = node

    walk(yaml.safe_load(text), "")
    return out


def _without_added_keys(golden: Dict[str, Any], now: Dict[str, Any]) -> Dict[str, Any]:
    """``now``'s run record without the schema keys added after the golden capture that hold
    the value every earlier run had (``config.identity.ADDED_KEYS``: they change nothing a run
    computes), in its params and its resolved config."""
    from madcluster_exp.config.identity import ADDED_KEYS

    def added(key, value, known):
        return key in ADDED_KEYS and key not in known and str(value) == str(ADDED_KEYS[key])

    out = dict(now)
    g_params, n_params = golden.get("params") or {}, now.get("params") or {}
    out["params"] = {k: v for k, v in n_params.items() if not added(k, v, g_params)}
    if golden.get("config_resolved") and now.get("config_resolved"):
        g_cfg, n_cfg = _flat_yaml(golden["config_resolved"]), _flat_yaml(now["config_resolved"])
        kept = {k: v for k, v in n_cfg.items() if not added(k, v, g_cfg)}
        if kept == g_cfg:
            out["config_resolved"] = golden["config_resolved"]
    return out


def differences(golden: Dict[str, Any], now: Dict[str, Any], rtol: float = 1e-9) -> List[str]:
    """Every difference between two captures of one command, in words (empty: the same).
    Schema keys added since the capture, at the value every earlier run had, are none."""
    diffs: List[str] = []
    g_runs, n_runs = golden["runs"], now["runs"]
    if sorted(g_runs) != sorted(n_runs):
        diffs.append(f"run names differ: {sorted(g_runs)} vs {sorted(n_runs)}")
    for key in sorted(set(g_runs) & set(n_runs)):
        g, n = g_runs[key], _without_added_keys(g_runs[key], n_runs[key])
        for part in ("status", "params", "tags", "artifacts", "parent", "config_resolved"):
            if g.get(part) != n.get(part):
                if isinstance(g.get(part), dict):
                    gk, nk = g[part], n.get(part) or {}
                    changed = {
                        k: (gk.get(k), nk.get(k))
                        for k in set(gk) | set(nk)
                        if gk.get(k) != nk.get(k)
                    }
                    diffs.append(f"{key} {part}: {changed}")
                else:
                    diffs.append(f"{key} {part}: {g.get(part)!r} vs {n.get(part)!r}")
        gm, nm = g["metrics"], n["metrics"]
        if sorted(gm) != sorted(nm):
            diffs.append(f"{key} metric keys: {sorted(set(gm) ^ set(nm))}")
        for k in sorted(set(gm) & set(nm)):
            a, b = gm[k], nm[k]
            same = (np.isnan(a) and np.isnan(b)) or np.isclose(a, b, rtol=rtol, atol=0)
            if not same:
                diffs.append(f"{key} metric {k}: {a!r} vs {b!r}")
    ga, na = golden["arrays"], now["arrays"]
    if sorted(ga) != sorted(na):
        diffs.append(f"scores.npz arrays differ: {sorted(set(ga) ^ set(na))}")
    for k in sorted(set(ga) & set(na)):
        a, b = ga[k], na[k]
        if a.shape != b.shape or a.dtype != b.dtype:
            diffs.append(f"{k}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}")
        elif a.dtype.kind == "f":
            if not np.allclose(a, b, rtol=rtol, atol=0, equal_nan=True):
                diffs.append(f"{k}: max |diff| {np.nanmax(np.abs(a - b))}")
        elif not np.array_equal(a, b):
            diffs.append(f"{k}: values differ")
    return diffs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="store a fresh capture as golden")
    parser.add_argument("names", nargs="*", default=list(RUNS))
    ns = parser.parse_args()
    captured = capture(ns.names)
    if ns.write:
        write(captured)
        print(f"golden runs written to {GOLDEN_DIR}")
    else:
        for name, data in captured.items():
            d = differences(load(name), data)
            print(f"{name}: {'identical' if not d else chr(10).join(d)}")
