"""The paper's set-up: reference-only training options, the paper sweeps' composition, and the
published-vs-measured report."""

from __future__ import annotations

import copy
import math
from collections import Counter
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from madcluster_exp.app import CONFIG_DIR
from madcluster_exp.config import ConfigError, validate
from madcluster_exp.pipeline.plan import check_backbone_score_exists

PAPER_BACKBONES = {
    "deepsvdd",
    "usad",
    "beatgan",
    "omnianomaly",
    "thoc",
    "anomaly_transformer",
    "dcdetector",
}
PAPER_DATASETS = {"SMD", "MSL", "SMAP", "PSM"}


# ------------------------------------------------------------------------- sweep expansion
def _is_group(key: str) -> bool:
    return (Path(CONFIG_DIR) / key).is_dir()


def sweep_jobs(cli: List[str]) -> List[DictConfig]:
    """Every job of ``python -m madcluster_exp -m <cli>``, expanded as Hydra's basic sweeper
    does (the experiment's ``hydra.sweeper.params`` first, the command line after, same key:
    the command line wins; the Cartesian product of the sweeps) and composed with Hydra's
    compose API. Jobs that differ only in plain values (seed, madcluster.k) share one
    composition of their config-group choices, the values then set as Hydra sets overrides
    (composition costs ~0.2 s per job, and a paper sweep has hundreds)."""
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(cli) if not o.is_sweep_override()]
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        root = compose(config_name="config", overrides=fixed, return_hydra_config=True)
        params = [f"{k}={v}" for k, v in (root.hydra.sweeper.params or {}).items()]
        (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(params + cli), None)
        composed: Dict[tuple, DictConfig] = {}
        jobs = []
        for job in batch:
            overrides = parser.parse_overrides(job)
            groups = tuple(o.input_line for o in overrides if _is_group(o.get_key_element()))
            if groups not in composed:
                composed[groups] = compose(config_name="config", overrides=list(groups))
            cfg = copy.deepcopy(composed[groups])
            for o in overrides:
                if not _is_group(o.get_key_element()):
                    OmegaConf.update(cfg, o.get_key_element(), o.value(), merge=False)
            jobs.append(cfg)
    return jobs


def _arm(cfg: DictConfig) -> str:
    mc = cfg.madcluster
    if not mc.enabled:
        return "off"
    if cfg.scoring.combine == "backbone_only":
        return "on_backbone_only"
    return "clustering_only" if mc.components == "clustering" else "on"


def _assert_paper_setup(cfg: DictConfig) -> None:
    assert cfg.backbone.window == 100
    assert cfg.dataset.mode == "per_entity" and cfg.dataset.normalize == "minmax"
    assert cfg.backbone.lr_decay == 0.9 and cfg.backbone.lr_decay_delay == 0
    t = cfg.train
    assert (t.amsgrad, t.init, t.epochs, t.patience, t.min_delta) == (True, "he", 30, 5, 1e-5)
    if cfg.backbone.name == "dcdetector":
        b = cfg.backbone
        assert (b.dropout, b.embed_tap, b.revin, b.weight_decay) == (
            0.1,
            "input_embedding",
            False,
            1e-5,
        )
    if cfg.dataset.name == "SMAP":
        # The reference's 54 SMAP channels are every distinct chan_id of labeled_anomalies.csv
        # (its 55 SMAP rows list P-2 twice): nothing excluded, nothing selected.
        assert list(cfg.dataset.exclude) == [] and cfg.dataset.entities is None
    validate(cfg)


def test_paper_table_composes_every_job_in_the_papers_setup():
    jobs = sweep_jobs(["experiment=paper_table"])
    assert len(jobs) == 7 * 4 * 3 * 3
    assert {j.backbone.name for j in jobs} == PAPER_BACKBONES
    assert {j.dataset.name for j in jobs} == PAPER_DATASETS
    for cfg in jobs:
        _assert_paper_setup(cfg)
        if cfg.backbone.name == "deepsvdd" and _arm(cfg) == "on_backbone_only":
            # Deep SVDD has no score of its own with MADCluster on: this job stops at once.
            with pytest.raises(ConfigError, match="control arm does not apply"):
                check_backbone_score_exists(cfg)
        else:
            check_backbone_score_exists(cfg)
    arms = Counter((j.backbone.name, j.dataset.name, j.seed, _arm(j)) for j in jobs)
    assert set(arms.values()) == {1}
    assert {a for (*_, a) in arms} == {"off", "on", "on_backbone_only"}
    assert {j.seed for j in jobs} == {0, 1, 2}


def test_paper_ablation_arms_are_deepsvdd_alone_clustering_only_and_both():
    jobs = sweep_jobs(["experiment=paper_ablation"])
    assert len(jobs) == 4 * 3 * 3
    for cfg in jobs:
        _assert_paper_setup(cfg)
        assert cfg.backbone.name == "deepsvdd" and cfg.madcluster.k == 1
    assert Counter(_arm(j) for j in jobs) == {"off": 12, "clustering_only": 12, "on": 12}
    on = [j for j in jobs if _arm(j) == "on"]
    assert {j.madcluster.components for j in on} == {"both"}


def test_paper_k_sweeps_k_1_to_10_on_deepsvdd():
    jobs = sweep_jobs(["experiment=paper_k"])
    assert len(jobs) == 10 * 4 * 3
    for cfg in jobs:
        _assert_paper_setup(cfg)
        assert cfg.backbone.name == "deepsvdd" and _arm(cfg) == "on"
    assert sorted({j.madcluster.k for j in jobs}) == list(range(1, 11))


def test_command_line_restricts_the_paper_sweep():
    jobs = sweep_jobs(
        [
            "experiment=paper_table",
            "backbone=deepsvdd,dcdetector_reference",
            "dataset=SMD",
            "seed=0",
            "debug=fast",
        ]
    )
    assert len(jobs) == 2 * 3
    assert all(j.train.epochs == 1 and j.backbone.window == 100 for j in jobs)


# ------------------------------------------------------------- reference-only training options
def _fit_spy(monkeypatch):
    """Record the detector each run trains and the learning rate its optimizer steps with."""
    import madcluster_exp.pipeline.kinds as fitting_module

    seen = {"detector": None, "step_lr": []}
    real_fit = fitting_module.fit

    def spying_fit(detector, data, settings, device, **kwargs):
        seen["detector"] = detector
        real_step = detector.training_step

        def step(x, epoch):
            opt = detector.optimizers[detector.host_group]
            seen["step_lr"].append((epoch, [g["lr"] for g in opt.param_groups]))
            return real_step(x, epoch)

        detector.training_step = step
        return real_fit(detector, data, settings, device, **kwargs)

    monkeypatch.setattr(fitting_module, "fit", spying_fit)
    return seen


def _run(make_cfg, tmp_path, *overrides):
    from madcluster_exp.app import run

    cfg = make_cfg(
        "tracking=none", "train.checkpoint=false", "train.max_batches_per_epoch=2", *overrides
    )
    return run(cfg, output_dir=tmp_path / "job", verbose=False)


def test_lr_decay_scales_every_backbone_group_per_epoch_and_leaves_nu_alone(
    make_cfg, tmp_path, monkeypatch
):
    seen = _fit_spy(monkeypatch)
    result = _run(
        make_cfg,
        tmp_path,
        "train.epochs=4",
        "backbone.lr=0.002",
        "backbone.lr_decay=0.5",
        "madcluster.nu_lr=0.01",
    )
    assert [h["train/lr"] for h in result.fit.history] == [0.002, 0.001, 0.0005, 0.00025]
    by_epoch = {e: lrs for e, lrs in seen["step_lr"]}  # [backbone group, nu group]
    assert by_epoch == {0: [0.002, 0.01], 1: [0.001, 0.01], 2: [0.0005, 0.01], 3: [0.00025, 0.01]}


def test_lr_decay_delay_keeps_the_initial_rate_as_the_anomaly_transformer_reference():
    from tests.conftest import compose_config

    cfg = compose_config(["backbone=anomaly_transformer"]).backbone
    assert (cfg.lr_decay, cfg.lr_decay_delay) == (0.5, 1)
    assert compose_config(["backbone=usad"]).backbone.lr_decay is None  # constant by default
    det = _tiny_detector()
    det.configure_optimizers(1e-4, 0.0, None)
    rates = [det.set_epoch_lr(e, cfg.lr_decay, cfg.lr_decay_delay) for e in range(4)]
    assert rates == pytest.approx([1e-4, 1e-4, 5e-5, 2.5e-5], rel=1e-12)


def _tiny_detector(plugin=True):
    from madcluster_exp.backbones import build_backbone
    from madcluster_exp.detector import Detector
    from madcluster_exp.madcluster import build_plugin
    from tests.conftest import compose_config

    cfg = compose_config(["backbone=deepsvdd", "backbone.window=16"])
    bb = build_backbone(3, cfg.backbone)
    return Detector(bb, build_plugin(bb.embed_dim, cfg.madcluster, 0) if plugin else None)


@pytest.mark.parametrize("amsgrad", [True, False])
def test_amsgrad_is_set_on_the_backbone_optimizer(make_cfg, tmp_path, monkeypatch, amsgrad):
    seen = _fit_spy(monkeypatch)
    _run(make_cfg, tmp_path, "train.epochs=1", f"train.amsgrad={str(amsgrad).lower()}")
    det = seen["detector"]
    groups = {g.get("name", "backbone"): g for o in det.optimizers.values() for g in o.param_groups}
    assert groups["backbone"]["amsgrad"] is amsgrad
    assert groups["madcluster_nu"]["amsgrad"] is True  # nu: AMSGrad always, as the reference
    state = det.optimizers[det.host_group].state[det.backbone.encoder[0].weight]
    assert ("max_exp_avg_sq" in state) is amsgrad  # AMSGrad's running maximum was kept


def test_he_init_gives_kaiming_std_and_zero_biases():
    from madcluster_exp.utils.nn import init_weights

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(400, 300), torch.nn.Conv2d(50, 200, (2, 4)), torch.nn.GRU(5, 7)
    )
    gru_before = [p.detach().clone() for p in net[2].parameters()]
    assert init_weights(net, "he") == 2
    for layer, fan_in in ((net[0], 400), (net[1], 50 * 2 * 4)):
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.02)
        assert layer.weight.mean().item() == pytest.approx(0.0, abs=0.01 * math.sqrt(2 / fan_in))
        assert torch.count_nonzero(layer.bias) == 0
    # PyTorch's default (Kaiming-uniform, a = sqrt(5)) has std 1/sqrt(3 fan_in): far from He.
    for before, after in zip(gru_before, net[2].parameters()):
        assert torch.equal(before, after)  # RNNs keep their own init
    assert init_weights(net, "default") == 0


def test_train_init_he_reaches_the_backbone_of_a_run(make_cfg, tmp_path, monkeypatch):
    import madcluster_exp.pipeline.kinds as fitting_module

    inits = []
    real_fit = fitting_module.fit

    def first_weights(detector, data, settings, device, **kwargs):
        inits.append(detector.backbone.encoder[0].weight.detach().clone())
        return real_fit(detector, data, settings, device, **kwargs)

    monkeypatch.setattr(fitting_module, "fit", first_weights)
    for kind in ("default", "he"):  # USAD: Linear layers (he leaves 1-D convs as they are)
        _run(make_cfg, tmp_path / kind, "train.epochs=1", f"train.init={kind}", "backbone=usad")
    default, he = inits  # the training settings do not carry train.init: in run order
    fan_in = he.shape[1]
    assert he.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.05)
    assert default.std().item() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.05)


def test_mapping_only_is_refused_where_the_plugin_replaces_the_objective():
    from madcluster_exp.config import ConfigError
    from madcluster_exp.pipeline.plan import check_components_apply
    from tests.conftest import compose_config

    with pytest.raises(ConfigError, match="'distance only' row .* use madcluster=off"):
        check_components_apply(compose_config(["madcluster.components=mapping"]))
    check_components_apply(compose_config(["madcluster.components=mapping", "backbone=usad"]))
    check_components_apply(compose_config(["madcluster=clustering_only"]))


# ------------------------------------------------------------------------ the SMAP channels
# The MADCluster reference's SMAP channels (MADCluster_run_all_datasets.py, DATASET_INFO).
REFERENCE_SMAP = [
    "A-1",
    "A-2",
    "A-3",
    "A-4",
    "A-5",
    "A-6",
    "A-7",
    "A-8",
    "A-9",
    "B-1",
    "D-1",
    "D-2",
    "D-3",
    "D-4",
    "D-5",
    "D-6",
    "D-7",
    "D-8",
    "D-9",
    "D-11",
    "D-12",
    "D-13",
    "E-1",
    "E-2",
    "E-3",
    "E-4",
    "E-5",
    "E-6",
    "E-7",
    "E-8",
    "E-9",
    "E-10",
    "E-11",
    "E-12",
    "E-13",
    "F-1",
    "F-2",
    "F-3",
    "G-1",
    "G-2",
    "G-3",
    "G-4",
    "G-6",
    "G-7",
    "P-1",
    "P-2",
    "P-3",
    "P-4",
    "P-7",
    "R-1",
    "S-1",
    "T-1",
    "T-2",
    "T-3",
]


def _write_smap_like_the_published_file(root: Path, n: int = 80) -> None:
    """Every reference channel, tiny, with P-2 on two rows as in the published
    labeled_anomalies.csv (55 SMAP rows, 54 channels), plus one MSL row."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for name in REFERENCE_SMAP + ["M-1"]:
        for split in ("train", "test"):
            (root / "data" / split).mkdir(parents=True, exist_ok=True)
            np.save(
                root / "data" / split / f"{name}.npy",
                rng.normal(size=(n, 55 if name == "M-1" else 25)),
            )
        craft = "MSL" if name == "M-1" else "SMAP"
        seqs = ['"[[10, 19]]"', '"[[15, 29]]"'] if name == "P-2" else ['"[[40, 44]]"']
        rows += [f"{name},{craft},{s},[point],{n}" for s in seqs]
    (root / "labeled_anomalies.csv").write_text(
        "chan_id,spacecraft,anomaly_sequences,class,num_values\n" + "\n".join(rows) + "\n"
    )


def test_paper_setup_loads_the_reference_54_smap_channels_and_merges_p2(tmp_path):
    from madcluster_exp.data import load_dataset
    from tests.conftest import compose_config

    _write_smap_like_the_published_file(tmp_path / "SMAP")
    cfg = compose_config(["setup=paper", "dataset=SMAP"])
    raw = load_dataset(cfg.dataset, tmp_path)
    assert raw.entities == REFERENCE_SMAP and len(raw.entities) == 54
    raw.test.unseal()
    labels = raw.test.get().entity("P-2").labels
    assert labels[10:30].all() and labels.sum() == 20  # the union of both rows' sequences


def test_a_channel_listed_twice_with_different_lengths_is_refused(tmp_path):
    from madcluster_exp.data import load_dataset
    from madcluster_exp.data.series import DataError
    from tests.conftest import compose_config

    _write_smap_like_the_published_file(tmp_path / "SMAP")
    csv = tmp_path / "SMAP" / "labeled_anomalies.csv"
    lines = csv.read_text().splitlines()
    p2 = [i for i, line in enumerate(lines) if line.startswith("P-2,")]
    lines[p2[1]] = lines[p2[1]].rsplit(",", 1)[0] + ",81"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"P-2 is listed on lines \[\d+, \d+\] with different"):
        load_dataset(compose_config(["dataset=SMAP"]).dataset, tmp_path)


# ------------------------------------------------------------- published vs measured report
def _cli(args, cwd, timeout=900):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _children(db: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("madcluster_exp")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def test_report_puts_published_beside_measured_for_a_real_sweep(tmp_path):
    import pandas as pd

    from tests.dataset_fixtures import make_telemanom

    make_telemanom(tmp_path / "datasets" / "MSL")
    out = _cli(
        [
            "-m",
            "madcluster_exp",
            "-m",
            "dataset=MSL",
            "dataset.mode=per_entity",
            "dataset.entities=[C-2,M-1]",
            "backbone=usad",
            "backbone.window=16",
            "train.epochs=1",
            "train.patience=null",
            "train.progress=none",
            "tracking.plots=false",
            "madcluster=off,on,on_backbone_only",
            "seed=0,1",
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep,) = [p.parent for p in tmp_path.glob("outputs/multiruns/*/*/mlflow_parent.json")]
    rep = _cli(["-m", "madcluster_exp.report", str(sweep), "log=false"], tmp_path)
    assert rep.returncode == 0, rep.stderr[-3000:]

    # The measured side, straight from MLflow: per arm, the seeds' per-entity-mean oracle F1.
    runs = _children(tmp_path / "outputs" / "mlflow.db")
    assert len(runs) == 6
    f1 = {}
    for r in runs:
        p = r.data.params
        arm = (
            "off"
            if p["madcluster.enabled"] == "False"
            else "on_backbone_only"
            if p["scoring.combine"] == "backbone_only"
            else "on"
        )
        f1.setdefault(arm, []).append(r.data.metrics["test/f1_oracle_entity_mean"])
    mean = {a: sum(v) / len(v) for a, v in f1.items()}

    (csv,) = tmp_path.glob("outputs/reports/*/paper_vs_measured.csv")
    long = pd.read_csv(csv)
    assert set(long["table"]) == {"Table 2"}  # Tables 1 and 3 are Deep SVDD's
    t2 = long[long["metric"] == "F1"].set_index("arm")
    assert t2.loc["off", "paper"] == 0.53 and t2.loc["on", "paper"] == 0.53
    assert math.isnan(t2.loc["on_backbone_only", "paper"])  # no published counterpart
    for arm in ("off", "on", "on_backbone_only"):
        assert t2.loc[arm, "measured_mean"] == pytest.approx(mean[arm], abs=1e-12)
        assert t2.loc[arm, "n"] == 2
        assert t2.loc[arm, "measured_key"] == "test/f1_oracle_entity_mean"

    md = rep.stdout
    row = f"| MSL | usad | 1 | point | 0.53 | 0.53 | {mean['off']:.3f} ± "
    assert "## Published vs measured" in md and "### Table 2" in md and row in md
    line = next(ln for ln in md.splitlines() if ln.startswith(row))
    # USAD's published F1 does not move (.53 -> .53): no sign to agree with.
    assert line.endswith(f"| +0.00 | {mean['on'] - mean['off']:+.3f} | paper: no change |")
    vus = long[long["metric"] == "VUS-ROC"].set_index("arm")["measured_mean"]
    agrees = "yes" if vus["on"] > vus["off"] else "no"
    line = next(
        ln for ln in md.splitlines() if ln.startswith("| MSL | usad | 1 | point | 0.71 | 0.72 | ")
    )
    assert line.endswith(f"| +0.01 | {vus['on'] - vus['off']:+.3f} | {agrees} |")


@pytest.mark.parametrize(
    "params,arm",
    [
        ({"madcluster.enabled": "False", "scoring.combine": "sum"}, "off"),
        ({"madcluster.enabled": "True", "scoring.combine": "sum"}, "on"),
        ({"madcluster.enabled": "True", "scoring.combine": "backbone_only"}, "on_backbone_only"),
        # logged before the rule moved to the scoring group
        ({"madcluster.enabled": "True", "madcluster.combine": "backbone_only"}, "on_backbone_only"),
        ({"madcluster.enabled": "True", "madcluster.components": "clustering"}, "clustering_only"),
    ],
)
def test_run_arm_reads_the_score_rule_from_either_param(params, arm):
    import pandas as pd

    from madcluster_exp.report.sections.paper import run_arm

    # One frame for old and new runs: each lacks the other's column (NaN).
    frame = pd.DataFrame(
        [{f"param:{k}": v for k, v in params.items()}, {"param:scoring.combine": "sum"}]
    )
    assert run_arm(frame.iloc[0]) == arm


def test_published_file_is_checked_row_by_row(tmp_path):
    from madcluster_exp.report.sections.paper import PUBLISHED, PublishedDataError, load_published

    table = load_published()
    assert len(table) == 7 * 2 * (3 + 2) + 4 * 3 * 3 + 10 * 4 * 3  # Table 2: + Params, MACs
    msl = table[(table["table"] == "Table 2") & (table["backbone"] == "dcdetector")]
    assert msl.set_index(["madcluster", "metric"])["value"].to_dict() == {
        ("off", "F1"): 0.28,
        ("off", "VUS-ROC"): 0.52,
        ("off", "VUS-PR"): 0.19,
        ("on", "F1"): 0.41,
        ("on", "VUS-ROC"): 0.64,
        ("on", "VUS-PR"): 0.32,
        ("off", "Params"): 912_180,
        ("off", "MACs"): 1_189_000_000,
        ("on", "Params"): 912_300,
        ("on", "MACs"): 1_189_000_000,
    }
    bad = tmp_path / "published.csv"
    bad.write_text(
        PUBLISHED.read_text().replace(
            "Table 3,Clustering,MSL,deepsvdd,clustering_only",
            "Table 3,Clustering,MSL,deepsvdd,clustering",
        )
    )
    with pytest.raises(
        PublishedDataError,
        match=r"data row \d+ \(Table 3, Clustering, F1\): "
        r"madcluster='clustering'",
    ):
        load_published(bad)


@pytest.mark.slow
def test_paper_table_runs_through_on_smd_layout_data_and_reports_paper_vs_measured(tmp_path):
    """The issue's done-when check, restricted to two backbones, one machine and one seed, in
    both pipelines: the reference one (the default) and the honest one."""
    from tests.dataset_fixtures import make_smd

    make_smd(tmp_path / "SMD", machines=("machine-1-1",), n_train=1000, n_test=600)
    out = _cli(
        [
            "-m",
            "madcluster_exp",
            "-m",
            "experiment=paper_table",
            "setup=paper,paper_honest",
            "dataset=SMD",
            f"dataset.path={tmp_path / 'SMD'}",
            "debug=fast",
            "backbone=deepsvdd,usad",
            "seed=0",
            "train.progress=none",
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = _children(tmp_path / "outputs" / "mlflow.db")
    # Deep SVDD has no score of its own with MADCluster on: its control arm is refused before
    # any run exists, and the sweep goes on.
    assert "control arm does not apply" in out.stdout + out.stderr
    assert len(runs) == 2 * (2 * 3 - 1) and all(r.info.status == "FINISHED" for r in runs)
    pipelines = Counter()
    for r in runs:
        p, tags = r.data.params, r.data.tags
        assert (p["backbone.window"], p["dataset.mode"], p["dataset.normalize"]) == (
            "100",
            "per_entity",
            "minmax",
        )
        assert (p["train.amsgrad"], p["train.init"], p["backbone.lr_decay"]) == (
            "True",
            "he",
            "0.9",
        )
        assert (p["train.stop_criterion"], p["train.restore_best"]) == ("reference", "False")
        assert p["pipeline"] == tags["pipeline"]
        pipelines[p["pipeline"]] += 1
        if p["pipeline"] == "reference":
            assert (p["protocol"], p["dataset.validation"], p["validation"]) == (
                "reference",
                "test",
                "validates on test",
            )
            assert tags["validation"] == "validates on test"
        else:
            assert (p["protocol"], p["dataset.validation"]) == ("point", "train_tail")
            assert "validation" not in p and "validation" not in tags
    assert pipelines == {"reference": 5, "honest": 5}
    (sweep,) = [p.parent for p in tmp_path.glob("outputs/multiruns/*/*/mlflow_parent.json")]
    rep = _cli(["-m", "madcluster_exp.report", str(sweep)], tmp_path)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "## Published vs measured" in rep.stdout and "### Table 3" in rep.stdout
    # Table 2 is published for MSL only: said once, no table of n/a.
    assert "No published figure for dataset SMD (in Table 2)" in rep.stdout
    assert "### Table 2" not in rep.stdout
    reference = "reference, reference pipeline (validates on test)"
    for label in (reference, "point, honest pipeline"):
        # Table 3, F1
        assert f"| SMD | deepsvdd | 1 | {label} | 0.19 | 0.20 | 0.48 | " in rep.stdout
