"""Multirun sweeps as MLflow parent/child runs, failures, Ctrl-C, a real mlflow server, reports."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from madcluster_exp.app import CONFIG_DIR as HYDRA_CONFIG_DIR
from madcluster_exp.tracking.server import server_command, wait_until_ready
from tests.conftest import free_port

FAST = [
    "dataset.n_entities=2",
    "dataset.train_length=600",
    "dataset.test_length=600",
    "dataset.n_channels=3",
    "backbone.window=16",
    "train.epochs=1",
    "train.patience=null",
    "tracking.plots=false",
    "train.progress=line",
]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(extra)
    return env


def _cli(args, cwd, timeout=600, **env):
    return subprocess.run(
        [sys.executable, "-m", "madcluster_exp", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _runs(uri):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("madcluster_exp")
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def _sweep_dir(cwd: Path) -> Path:
    (d,) = [p.parent for p in cwd.glob("outputs/multiruns/*/*/mlflow_parent.json")]
    return d


def test_joblib_sweep_8_jobs_2_parallel_gives_one_parent_and_8_children(tmp_path):
    out = _cli(
        [
            "-m",
            *FAST,
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "madcluster=off,on",
            "seed=0,1,2,3",
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    client, runs = _runs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(runs) == 9
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["children"] == "8"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.info.run_name for c in children) == sorted(
        f"{c.data.tags['madcluster']}-{c.data.tags['config_id']}-s{c.data.tags['seed']}"
        "-deepsvdd-synthetic"
        for c in children
    )
    assert len({c.info.run_name for c in children}) == 8
    assert len({c.data.tags["config_id"] for c in children}) == 2  # off and on
    assert sorted(int(c.data.tags["hydra.job.num"]) for c in children) == list(range(8))
    for c in children:
        assert c.info.status == "FINISHED"
        assert {"git_commit", "protocol", "threshold.kind", "hydra.overrides"} <= set(c.data.tags)
        assert (
            c.data.params["seed"] == c.data.tags["seed"]
        )  # own identifying params, no inheritance
        assert c.data.params["torch_threads"] == str(max(1, (os.cpu_count() or 1) // 2))
        assert "test/vus_pr" in c.data.metrics


def test_a_failing_job_is_marked_failed_and_the_sweep_goes_on(tmp_path):
    """Job 1 names an entity the data lacks: found before its run exists, so it leaves no
    half-made run; the sweep goes on and job 0 runs through. (A failure after the run started
    marks it FAILED with its traceback: tests/test_resume.py.)"""
    out = _cli(["-m", *FAST, "dataset.entities=[entity-0],[entity-9]"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    said = out.stdout + out.stderr
    assert "job failed before its MLflow run started" in said and "entity-9" in said
    client, runs = _runs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    children = {
        r.data.tags["hydra.job.num"]: r for r in runs if "mlflow.parentRunId" in r.data.tags
    }
    assert children["0"].info.status == "FINISHED"
    assert "1" not in children  # refused before a run existed: nothing half-made is left


# Ctrl-C of a running job (KILLED, one line, resumed into the same run): tests/test_resume.py.


def _rest(base, path, body):
    req = urllib.request.Request(
        f"{base}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


# The team server over PostgreSQL (tests/test_server.py) covers this in the default suite.
@pytest.mark.slow
def test_sweep_logged_to_a_real_mlflow_server_reads_back_over_rest(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    cmd = server_command(f"sqlite:///{tmp_path / 'server.db'}", port, tmp_path / "server-artifacts")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        # Polls the process too: fails at once, with the server's log, if it died.
        wait_until_ready(server, base, log_path)
        out = _cli(["-m", *FAST, "madcluster=off,on"], tmp_path, MLFLOW_TRACKING_URI=base)
        assert out.returncode == 0, out.stderr[-3000:]
        exps = _rest(base, "/api/2.0/mlflow/experiments/search", {"max_results": 10})
        exp_id = next(
            e["experiment_id"] for e in exps["experiments"] if e["name"] == "madcluster_exp"
        )
        found = _rest(
            base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id], "max_results": 100}
        )["runs"]
        names = sorted(re.sub(r"-[0-9a-f]{6}-s", "-s", r["info"]["run_name"]) for r in found)
        assert names[:2] == ["off-s0-deepsvdd-synthetic", "on-s0-deepsvdd-synthetic"]
        assert names[2].startswith("sweep-")
        child = next(r for r in found if r["info"]["run_name"].startswith("on-"))
        metrics = {m["key"]: m["value"] for m in child["data"]["metrics"]}
        params = {p["key"]: p["value"] for p in child["data"]["params"]}
        assert 0 <= metrics["test/auc_roc"] <= 1 and params["madcluster.enabled"] == "True"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow  # a sweep + report, as test_report_pasting's default k-sweep report test
def test_report_from_a_sweep_dir_writes_tables_plots_and_logs_them(tmp_path):
    out = _cli(["-m", *FAST, "madcluster=off,on", "seed=0,1", "madcluster.k=1"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    rep = subprocess.run(
        [
            sys.executable,
            "-m",
            "madcluster_exp.report",
            str(sweep),
            "report.metrics=[test/f1,test/auc_roc]",
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rep.returncode == 0, rep.stderr[-3000:]
    parent = json.loads((sweep / "mlflow_parent.json").read_text())["run_id"]
    out_dir = tmp_path / "outputs" / "reports" / parent
    for name in ("report.md", "summary.csv", "onoff.csv", "onoff_bars.png", "training_curves.png"):
        assert (out_dir / name).exists(), name
    md = (out_dir / "report.md").read_text()
    assert "| madcluster.enabled | n | test/f1 | test/auc_roc |" in md
    assert "on − off" in md and "pairs" in md
    import pandas as pd

    onoff = pd.read_csv(out_dir / "onoff.csv")
    assert onoff["pairs"].tolist() == [2]
    # Error bars: the std over seeds of each side; 2 pairs are too few for a paired test.
    assert onoff["test/f1 on std"].notna().all() and onoff["test/f1 p"].isna().all()
    assert "too few pairs for a test: 1 of 1 rows have fewer than 5 seed pairs (n = 2)" in md
    assert "![MADCluster off vs on](onoff_bars.png)" in md
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/report.md" in logged and "report/onoff_bars.png" in logged
    bad = subprocess.run(
        [sys.executable, "-m", "madcluster_exp.report", str(sweep), "report.metrics=[test/nope]"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "test/nope" in bad.stderr


@pytest.mark.slow  # the k sweep + report of test_report_pasting's default k-sweep test
def test_k_sweep_report_has_curves(tmp_path):
    out = _cli(["-m", *FAST, "madcluster.k=1,2,3"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rep = subprocess.run(
        [sys.executable, "-m", "madcluster_exp.report", str(_sweep_dir(tmp_path)), "log=false"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "| madcluster.k | n |" in rep.stdout
    assert list((tmp_path / "outputs" / "reports").glob("*/k_sweep.png"))


@pytest.mark.slow  # a process per job through submitit; joblib's parallel sweep runs by default
def test_submitit_local_launcher_runs_children_of_one_parent(tmp_path):
    out = _cli(["-m", *FAST, "hydra/launcher=submitit_local", "seed=0,1"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    _, runs = _runs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)


@pytest.mark.slow  # the sweeper plug-in and its report run by default in test_search
def test_optuna_search_minimises_the_validation_loss(tmp_path):
    out = _cli(["-m", *FAST, "hparams_search=optuna_val", "hydra.sweeper.n_trials=2"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Best value" in out.stderr + out.stdout
    _, runs = _runs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and len({c.info.run_name for c in children}) == 2
    # Only optimisation settings vary; the loss-shaping plug-in keys stay at their defaults
    # (minimising the validation loss would drive tau to its bound).
    assert len({c.data.params["backbone.lr"] for c in children}) == 2
    assert {c.data.params["madcluster.tau"] for c in children} == {"0.01"}
    assert {c.data.params["madcluster.nu_init"] for c in children} == {"0.5"}
    # The search's report: each trial's objective, the chosen one's test metrics only.
    rep = subprocess.run(
        [sys.executable, "-m", "madcluster_exp.report", str(_sweep_dir(tmp_path)), "log=false"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "study madcluster_val (in-memory)" in rep.stdout
    from tests.test_search import _check_report

    best = min(children, key=lambda c: c.data.metrics["val/best_loss"])
    _check_report(
        tmp_path,
        int(best.data.tags["optuna.trial"]),
        {int(c.data.tags["optuna.trial"]): c for c in children},
        "minimize",
    )


@pytest.mark.slow  # composed by default in test_config; sweeps run by default elsewhere
def test_experiment_smoke_is_a_sweep_of_off_on_and_seeds(tmp_path):
    out = _cli(["-m", "experiment=smoke", "train.epochs=1"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    _, runs = _runs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    names = sorted(r.info.run_name for r in children)
    assert names == sorted(
        f"{r.data.tags['madcluster']}-{r.data.tags['config_id']}-s{r.data.tags['seed']}"
        "-deepsvdd-synthetic-smoke"
        for r in children
    )
    assert len(set(names)) == 4


@pytest.mark.slow  # nine jobs (~80 s on 2 shared cores); the table's logic is tested fast below
def test_onoff_experiment_reports_each_arm_against_off_with_its_paired_test(tmp_path):
    import numpy as np
    import pandas as pd

    out = _cli(["-m", "experiment=onoff", *FAST, "backbone=lstm_ae", "seed=0,1,2"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    client, runs = _runs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(re.sub(r"-[0-9a-f]{6}-s", "-s", c.info.run_name) for c in children) == sorted(
        f"{arm}-s{s}-lstm_ae-synthetic-onoff"
        for arm in ("off", "on", "on+backbone_only")
        for s in range(3)
    )
    rep = subprocess.run(
        [
            sys.executable,
            "-m",
            "madcluster_exp.report",
            str(_sweep_dir(tmp_path)),
            "report.metrics=[test/auc_roc,test/f1]",
            "log=false",
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rep.returncode == 0, rep.stderr[-3000:]
    (report_dir,) = (tmp_path / "outputs" / "reports").iterdir()
    table = pd.read_csv(report_dir / "onoff.csv").set_index("arm")
    assert sorted(table.index) == ["on(combine=backbone_only)", "on(combine=sum)"]
    assert table["pairs"].tolist() == [3, 3]

    def by_seed(name_part):
        return {
            int(c.data.params["seed"]): c.data.metrics["test/auc_roc"]
            for c in children
            if re.fullmatch(
                f"{re.escape(name_part)}-[0-9a-f]{{6}}-s\\d-lstm_ae-synthetic-onoff",
                c.info.run_name,
            )
        }

    off = by_seed("off")
    for arm, name_part in (
        ("on(combine=sum)", "on"),
        ("on(combine=backbone_only)", "on+backbone_only"),
    ):
        on = by_seed(name_part)
        a, b = np.array([on[s] for s in range(3)]), np.array([off[s] for s in range(3)])
        row = table.loc[arm]
        assert row["test/auc_roc diff"] == pytest.approx(float(np.mean(a - b)), abs=1e-12)
        assert row["test/auc_roc off"] == pytest.approx(float(np.mean(b)), abs=1e-12)
        assert np.isnan(row["test/auc_roc p"])  # 3 pairs, below sections.onoff.FEW_PAIRS
    md = (report_dir / "report.md").read_text()
    assert "| arm | pairs | test/auc_roc (on − off) |" in md
    assert "on(combine=backbone_only) − off: the plug-in's training alone" in md
    assert "on(combine=sum) − off: the plug-in's training plus its score added" in md
    assert "fewer than 5 seed pairs" in md


def _runs_frame(rows):
    import pandas as pd

    return pd.DataFrame(
        [
            {f"param:{k}": str(v) for k, v in r.items() if k != "auc"} | {"test/auc_roc": r["auc"]}
            for r in rows
        ]
    )


def test_onoff_experiment_composes_off_on_and_the_control_arm_for_every_seed():
    """madcluster=on_backbone_only keeps the plug-in on and sets scoring.combine (a key of
    another group) to the backbone's own score; on leaves the rule to the protocol."""
    from collections import Counter

    from tests.test_paper import sweep_jobs

    jobs = sweep_jobs(["experiment=onoff", "backbone=lstm_ae,usad"])
    arms = Counter((j.backbone.name, j.madcluster.enabled, j.scoring.combine) for j in jobs)
    assert arms == {
        (b, enabled, combine): 3
        for b in ("lstm_ae", "usad")
        for enabled, combine in ((False, None), (True, None), (True, "backbone_only"))
    }


# madcluster.combine: where runs logged the rule before it moved to the scoring group.
@pytest.mark.parametrize("combine_key", ["scoring.combine", "madcluster.combine"])
def test_onoff_table_pairs_every_arm_with_off_by_seed(combine_key):
    import numpy as np
    from scipy.stats import ttest_rel

    from madcluster_exp.report.sections.onoff import onoff_table

    off = [0.60, 0.62, 0.65, 0.58, 0.61]
    on_sum, on_bb = [0.70, 0.69, 0.74, 0.66, 0.72], [0.61, 0.66, 0.64, 0.60, 0.60]
    rows = []
    for backbone, shift in (("usad", 0.0), ("lstm_ae", 0.1)):
        for seed in range(5):
            common = {"backbone.name": backbone, "seed": seed}
            rows += [
                {
                    **common,
                    "madcluster.enabled": False,
                    combine_key: "sum",
                    "auc": off[seed] + shift,
                },
                {
                    **common,
                    "madcluster.enabled": True,
                    combine_key: "sum",
                    "auc": on_sum[seed] + shift,
                },
                {
                    **common,
                    "madcluster.enabled": True,
                    combine_key: "backbone_only",
                    "auc": on_bb[seed] + shift,
                },
            ]
    rows = rows[:-1]  # lstm_ae's control arm lost its seed-4 run
    table = onoff_table(
        _runs_frame(rows),
        ["backbone.name", "madcluster.enabled", combine_key],
        ["test/auc_roc"],
    )
    table = table.set_index(["backbone.name", "arm"])
    usad_sum = table.loc[("usad", "on(combine=sum)")]
    assert usad_sum["pairs"] == 5 and usad_sum["scoring.combine"] == "sum"
    assert usad_sum["test/auc_roc diff"] == pytest.approx(np.mean(np.subtract(on_sum, off)))
    assert usad_sum["test/auc_roc p"] == pytest.approx(ttest_rel(on_sum, off).pvalue)
    usad_bb = table.loc[("usad", "on(combine=backbone_only)")]
    assert usad_bb["test/auc_roc diff"] == pytest.approx(np.mean(np.subtract(on_bb, off)))
    assert usad_bb["test/auc_roc p"] == pytest.approx(ttest_rel(on_bb, off).pvalue)
    lstm_bb = table.loc[("lstm_ae", "on(combine=backbone_only)")]
    assert lstm_bb["pairs"] == 4  # only the seeds both arms have
    assert lstm_bb["test/auc_roc diff"] == pytest.approx(np.mean(np.subtract(on_bb, off)[:4]))
    assert np.isnan(lstm_bb["test/auc_roc p"])  # fewer than 5 pairs: no p-value


def test_onoff_table_pairs_with_off_runs_of_the_same_plugin_setting_where_off_varies():
    from madcluster_exp.report.sections.onoff import onoff_table

    # A sweep of madcluster=off,on x madcluster.k=1,3: off runs exist for both k.
    rows = [
        {"seed": s, "madcluster.enabled": e, "madcluster.k": k, "auc": auc}
        for s in range(2)
        for k, base in ((1, 0.5), (3, 0.7))
        for e, auc in ((False, base + 0.01 * s), (True, base + 0.1 + 0.01 * s))
    ]
    table = onoff_table(
        _runs_frame(rows), ["madcluster.enabled", "madcluster.k"], ["test/auc_roc"]
    ).set_index("arm")
    assert table.loc["on(k=1)", "test/auc_roc off"] == pytest.approx(0.505)
    assert table.loc["on(k=3)", "test/auc_roc off"] == pytest.approx(0.705)
    assert table["test/auc_roc diff"].tolist() == pytest.approx([0.1, 0.1])


# ------------------------------------------------------------------ sweep folders by overrides
def test_a_path_valued_override_names_one_job_folder_not_nested_ones():
    from madcluster_exp.config.store import MAX_DIRNAME, job_dirname

    cfg = compose_config_with_hydra(
        ["experiment=benchmark", "dataset=collection", "dataset.path=/data/tsb-ad/U", "seed=1"]
    )
    assert cfg.hydra.sweep.subdir == (
        "dataset.path=%2Fdata%2Ftsb-ad%2FU,dataset=collection,experiment=benchmark,seed=1"
    )
    # Hydra's own name where nothing needs encoding (sweeps started before keep resuming).
    assert job_dirname("backbone=knn,seed=0") == "backbone=knn,seed=0"
    # One-to-one: overrides that differ never share a folder.
    names = ["p=a/b", "p=a%2Fb", "p=a\\b", "p=a%5Cb", "p=a%b"]
    assert len({job_dirname(n) for n in names}) == len(names)
    assert all("/" not in job_dirname(n) for n in names)
    long = job_dirname("dataset.path=" + "/very/deep/folder" * 40)
    assert len(long.encode()) <= MAX_DIRNAME and "/" not in long
    assert long != job_dirname("dataset.path=" + "/very/deep/folder" * 41)
    assert long == job_dirname("dataset.path=" + "/very/deep/folder" * 40)  # resumable
    # Every preset that names job folders by their overrides goes through the encoding.
    raw = [
        (p.name, line)
        for p in Path(HYDRA_CONFIG_DIR).rglob("*.yaml")
        for line in p.read_text().splitlines()
        if "${hydra.job.override_dirname}" in line and not line.lstrip().startswith("#")
    ]
    assert raw and all("${madcluster_dirname:${hydra.job.override_dirname}}" in x for _, x in raw)


def compose_config_with_hydra(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=HYDRA_CONFIG_DIR):
        return compose("config", overrides=list(overrides), return_hydra_config=True)
