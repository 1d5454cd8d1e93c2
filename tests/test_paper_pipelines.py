"""The paper's two pipelines: setup=paper (the reference pipeline, the official code's, which
validates on test) and setup=paper_honest (the same models and schedule, honest protocol); the
reference behaviours they switch on, each against a hand- or reference-computed value; the
set-up card; published vs measured model sizes."""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from madcluster_exp.config import ConfigError, load, validate
from madcluster_exp.config.card import (
    DIFFERS,
    OfficialDataError,
    card_rows,
    load_official,
    paper_backbones,
)
from madcluster_exp.config.card import main as card_main
from madcluster_exp.config.identity import config_id
from madcluster_exp.data import SeriesSplit, WindowSet
from madcluster_exp.data.prepare import prepare
from madcluster_exp.data.series import RawDataset, SealedTest, TestAccessError
from madcluster_exp.pipeline.context import JobContext
from madcluster_exp.pipeline.plan import VALIDATES_ON_TEST, make_plan
from tests.conftest import compose_config

BACKBONES = paper_backbones()


@functools.lru_cache(maxsize=None)
def _settings(setup: str, backbone: str):
    """``python -m madcluster_exp experiment=paper_table setup=<setup> backbone=<b>
    dataset=SMD``'s settings (composed once per pair for the tests below)."""
    cfg = compose_config(
        ["experiment=paper_table", f"setup={setup}", f"backbone={backbone}", "dataset=SMD"]
    )
    return load(cfg, warn=False)


# ------------------------------------------------------------------------------- item 1 and 2
@pytest.mark.parametrize("backbone", BACKBONES)
def test_paper_table_composes_the_reference_pipeline_for_every_backbone(backbone):
    """Every point of the reference pipeline (the official code's) by composition + load."""
    s = _settings("paper", backbone)
    cfg = s.cfg
    # Evaluation: stride-1 window scores, window label = any anomaly, best-F1 threshold on
    # test, range metrics on that 0/1 prediction with sliding window 100.
    assert (cfg.protocol, cfg.scoring.stride, cfg.metrics.range_window) == ("reference", 1, 100)
    # Loss and score: the official k = 1 loss (raw nu) and product of the two scores.
    assert (cfg.madcluster.variant, cfg.madcluster.k, cfg.scoring.combine) == (
        "reference",
        1,
        "product",
    )
    assert (cfg.madcluster.nu_lr, cfg.madcluster.nu_init, cfg.madcluster.tau) == (1e-4, 0.5, 0.01)
    assert cfg.madcluster.objective == "one-class"
    # Data: 100 % of each training file, MinMax on it, validation = test, one model per entity.
    d = cfg.dataset
    assert (d.validation, d.normalize, d.mode, d.train_stride) == (
        "test",
        "minmax",
        "per_entity",
        1,
    )
    # Early stopping on the official criterion, patience 5, min_delta 1e-5, last epoch tested.
    t = cfg.train
    assert (t.stop_criterion, t.patience, t.min_delta, t.restore_best, t.epochs) == (
        "reference",
        5,
        1e-5,
        False,
        30,
    )
    # Init and optimiser: He-normal on Linear/Conv2d/Conv3d, AMSGrad, LR x 0.9 per epoch.
    assert (t.init, t.amsgrad, cfg.backbone.window, cfg.backbone.lr_decay) == (
        "he",
        True,
        100,
        0.9,
    )
    assert cfg.pipeline == "reference"
    # The plan: the unit unseals the test split for validation, the loop reads the criterion.
    plan = make_plan(s)
    assert plan.validates_on_test and plan.protocol.name == "reference"
    assert (plan.train.stop_criterion, plan.train.restore_best) == ("reference", False)
    assert plan.train.optimizer["nu_lr"] == 1e-4 and plan.train.optimizer["amsgrad"] is True
    tags = plan.identity_tags(JobContext.outside_hydra())
    assert (tags["pipeline"], tags["validation"]) == ("reference", VALIDATES_ON_TEST)
    assert tags["threshold.kind"] == "oracle"
    assert "validates on test" in tags["mlflow.note.content"]
    assert plan.run_params()["validation"] == VALIDATES_ON_TEST
    assert plan.run_params()["dataset.validation"] == "test"
    # Every setting with an official value has it (the set-up card marks nothing).
    rows = card_rows(s)
    assert [r.key for r in rows if r.differs] == []
    assert sum(r.official is not None for r in rows) >= 34


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_honest_pipeline_changes_only_what_touches_test_data(backbone):
    ref, honest = _settings("paper", backbone), _settings("paper_honest", backbone)
    changed = {k for k in ref.params if ref.params[k] != honest.params[k]}
    assert changed == {"pipeline", "protocol", "dataset.validation", "scoring.combine"}
    assert (honest.params["protocol"], honest.params["dataset.validation"]) == (
        "point",
        "train_tail",
    )
    assert honest.params["scoring.combine"] == "sum"  # the point protocol's rule
    plan = make_plan(honest)
    assert not plan.validates_on_test
    tags = plan.identity_tags(JobContext.outside_hydra())
    assert tags["pipeline"] == "honest" and "validation" not in tags
    assert "validation" not in plan.run_params()
    differs = {r.key for r in card_rows(honest) if r.differs}
    assert differs == changed | {"threshold.kind"}


def test_validating_on_test_and_the_pipeline_label_are_checked():
    with pytest.raises(ConfigError, match=r"dataset.validation=test with protocol=point"):
        validate(compose_config(["dataset.validation=test"]))
    validate(compose_config(["dataset.validation=test", "protocol=reference"]))
    with pytest.raises(ConfigError, match=r"pipeline=reference with dataset.validation=train_tail"):
        validate(compose_config(["setup=paper", "dataset.validation=train_tail"]))
    with pytest.raises(ConfigError, match=r"the honest pipeline runs with .*protocol=point"):
        validate(compose_config(["setup=paper_honest", "protocol=reference"]))
    # Leaving the label off makes a run that is neither of the paper's pipelines.
    validate(
        compose_config(
            ["setup=paper", "dataset.validation=train_tail", "protocol=point"] + ["pipeline=null"]
        )
    )


def test_a_key_added_at_its_earlier_value_keeps_the_config_id():
    base = dict(load(compose_config()).params)
    before = {
        k: v
        for k, v in base.items()
        if k not in ("dataset.validation", "train.stop_criterion", "pipeline")
    }
    assert config_id(before) == config_id(base)  # runs recorded before the keys existed
    assert config_id({**base, "train.stop_criterion": "reference"}) != config_id(base)


# ---------------------------------------------------------------------------------- the data
def _raw(train: np.ndarray, test: np.ndarray) -> RawDataset:
    tr = SeriesSplit.concat([("e", train, None)], "train")
    te = SeriesSplit.concat([("e", test, (np.arange(len(test)) % 7 == 0).astype(np.int8))])
    return RawDataset("x", tr, SealedTest(lambda: te, "test"))


def test_validation_test_fits_all_training_rows_and_leaves_the_test_split_sealed():
    train = np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 9.0], [0.0, 7.0], [4.0, 6.0]] * 4)
    test = np.array([[2.0, 7.0], [6.0, 3.0], [1.0, 5.0], [0.0, 9.0]])
    data = prepare(
        _raw(train, test), window=3, val_fraction=0.2, normalize="minmax", validation="test"
    )
    assert data.val is None and len(data.train) == 20  # every training row fits
    # MinMax on the whole training file: min (0, 5), range (4, 4).
    np.testing.assert_array_equal(data.scaler.shift, [0.0, 5.0])
    np.testing.assert_array_equal(data.scaler.scale, [4.0, 4.0])
    with pytest.raises(TestAccessError):
        data.test.get()  # sealed: only the pipeline unseals it, when its plan says so
    data.test.unseal()
    np.testing.assert_allclose(data.test.get().values, [[0.5, 0.5], [1.5, -0.5], [0.25, 0], [0, 1]])
    honest = prepare(_raw(train, test), 3, 0.2, "minmax")
    assert (len(honest.train), len(honest.val)) == (20 - 4 - 3, 4)  # fit, gap, tail


def test_the_reference_pipeline_validates_on_the_unsealed_test_split(
    make_cfg, tmp_path, monkeypatch
):
    import madcluster_exp.pipeline.kinds as kinds
    from madcluster_exp.app import run

    seen = []
    real_fit = kinds.fit

    def spying_fit(detector, data, settings, device, **kwargs):
        seen.append((data.test.sealed, data.train, data.val, data.test.get(), data.scaler))
        return real_fit(detector, data, settings, device, **kwargs)

    monkeypatch.setattr(kinds, "fit", spying_fit)
    cfg = make_cfg(
        "setup=paper",
        "backbone=usad",
        "tracking=none",
        "train.checkpoint=false",
        "train.epochs=1",
        "train.max_batches_per_epoch=1",
        "dataset.n_entities=1",
    )
    run(cfg, output_dir=tmp_path / "job", verbose=False)
    ((sealed, train, val, test, scaler),) = seen
    assert not sealed and val is test  # validation is the (scaled) test split itself
    assert len(train) == 800  # all of the training series
    np.testing.assert_array_equal(train.values.min(0), 0.0)
    np.testing.assert_array_equal(train.values.max(0), 1.0)


# ----------------------------------------------------------------- the early-stopping criterion
def _detector(*overrides: str):
    from madcluster_exp.detector import build_detector

    cfg = compose_config(["backbone=lstm_ae", "backbone.window=6", "backbone.hidden=5", *overrides])
    torch.manual_seed(0)
    return build_detector(cfg, 3)


def _windows(n_rows: int = 15, window: int = 6) -> WindowSet:
    values = np.random.default_rng(3).normal(size=(n_rows, 3))
    return WindowSet(SeriesSplit.concat([("e", values, None)]), window)


def _official_batch_criterion(det, x: torch.Tensor) -> float:
    """MADCluster_SOLVER.validation for one batch, written out from the official code:
    dc_loss (the backbone's loss) + mapping_loss.mean() + cluster_loss.sum(), with k = 1, its
    DEC target p = 1 and custom_loss_function's clamps, one-class mapping ||z - c||^2."""
    out = det.backbone(x)
    dc = float(det.backbone.loss(x, out))
    if det.plugin is None:
        return dc
    # float64 from the model's float32 embeddings: the reductions' rounding stays far below
    # the test's tolerance.
    z, c, thr = out.z.double(), det.plugin.center.double(), det.plugin.nu_raw.double()
    q = (1 + torch.nn.functional.cosine_similarity(z, c.expand_as(z), dim=-1)) / 2
    p = torch.clamp(torch.ones_like(q), min=1e-6)
    q = torch.clamp(q, min=1e-6)
    kl = p * torch.log(p / q)
    p = p * (1 - 0.01) + (1 - p) * 0.01
    line = (1 - thr ** (1 - thr)) / (1 - thr) * (q - thr) + thr ** (1 - thr)
    term1 = p * torch.log(torch.clamp(line, max=1e6))
    term2 = (1 - p) * torch.log(torch.clamp(q ** (1 - thr), max=1e6))
    cluster = kl - (term1 + term2)
    mapping = ((z - c) ** 2).sum(-1)
    return dc + float(mapping.mean()) + float(cluster.sum())


@pytest.mark.parametrize("state", ["on", "off"])
def test_the_reference_criterion_is_the_official_solvers_valid_total_loss(state):
    from madcluster_exp.training.loop import validation_loss

    det = _detector(f"madcluster={state}", "madcluster.variant=reference")
    ws = _windows()  # 10 windows: batches of 4, 4 and 2 (the last one counts as one batch)
    with torch.no_grad():
        det.eval()
        per_batch = [_official_batch_criterion(det, x) for _, x in ws.batches(4)]
    assert len(per_batch) == 3
    got = validation_loss(det, ws, 4, torch.device("cpu"), reference_criterion=True)
    assert got["criterion_reference"] == pytest.approx(sum(per_batch) / 3, rel=1e-6)
    assert "criterion_reference" not in validation_loss(det, ws, 4, torch.device("cpu"))


def _fit(stop_criterion: str):
    """DCdetector alone, whose loss is 0 in value in every epoch (a flat criterion)."""
    from madcluster_exp.data.prepare import PreparedData, Scaler
    from madcluster_exp.detector import build_detector
    from madcluster_exp.training import TrainSettings, fit

    cfg = compose_config(
        [
            "backbone=dcdetector",
            "backbone.window=10",
            "backbone.patch_sizes=[2,5]",
            "backbone.d_model=4",
            "backbone.layers=1",
            "backbone.batch_size=8",
            "madcluster=off",
            "train.epochs=6",
            "train.patience=2",
            "train.checkpoint=false",
            "train.progress=none",
            f"train.stop_criterion={stop_criterion}",
            "train.restore_best=false",
        ]
    )
    from madcluster_exp.config import load as load_settings

    typed = load_settings(cfg, warn=False).cfg
    torch.manual_seed(0)
    det = build_detector(typed, 2)
    values = np.random.default_rng(0).normal(size=(30, 2)).astype(np.float32)
    split = SeriesSplit.concat([("e", values, None)])
    data = PreparedData("x", split, split, None, Scaler.fit(values, "none"), 10)
    return fit(det, data, TrainSettings.from_config(typed), torch.device("cpu"))


def test_reference_early_stopping_counts_a_flat_criterion_against_the_patience():
    """The official EarlyStopping (patience 2): epoch 1 sets the best, epochs 2 and 3 are not
    below it by more than min_delta, so training stops after epoch 3; this project's
    objective rule sees no signal in a flat loss and trains all 6."""
    ref = _fit("reference")
    assert [h["val/criterion_reference"] for h in ref.history] == [0.0, 0.0, 0.0]
    assert (ref.epochs_run, ref.best_epoch, ref.stopped_early) == (3, 1, True)
    assert _fit("objective").epochs_run == 6


# ------------------------------------------------------------------------------ set-up card
def test_official_values_are_read_and_checked(tmp_path):
    official = load_official()
    assert official["*"]["train.min_delta"].value == 1e-5
    assert official["dcdetector"]["backbone.patch_sizes"].value == [2, 5, 10]
    assert official["*"]["dataset.validation"].value == "test"
    bad = tmp_path / "official.csv"
    bad.write_text("key,backbone,official,source\ntrain.epochs,*,30,a\ntrain.epochs,*,31,b\n")
    with pytest.raises(OfficialDataError, match=r"data row 2: train.epochs for \* given twice"):
        load_official(bad)


def test_the_card_marks_each_difference(capsys):
    assert card_main(["setup=paper", "backbone=dcdetector_reference", "debug=fast"]) == 0
    out = capsys.readouterr().out
    assert "## dcdetector_reference (dcdetector)" in out
    assert (
        "5 of 45 settings with an official value differ from it (≠): dataset.max_entities, " in out
    )
    line = next(ln for ln in out.splitlines() if ln.startswith("| `train.epochs`"))
    assert line.split(" | ")[1:4] == ["1", "30", DIFFERS]
    line = next(ln for ln in out.splitlines() if ln.startswith("| `threshold.percentile`"))
    assert "unused: protocol=reference thresholds" in line and DIFFERS not in line
    assert card_main(["setup=paper", "backbone=usad", "--differences"]) == 0
    out = capsys.readouterr().out
    assert "0 of 34 settings with an official value differ from it (≠)." in out
    assert "| setting |" not in out  # --differences: no table when nothing differs


# ------------------------------------------------------------------ published vs measured size
def test_complexity_table_puts_table_2_sizes_beside_the_runs():
    from madcluster_exp.report.sections.paper import complexity_table, protocol_label

    def run(dataset, enabled, total_params, macs_backbone, macs_plugin, **extra):
        return {
            "param:dataset.name": dataset,
            "param:backbone.name": "usad",
            "param:madcluster.enabled": str(enabled),
            "param:scoring.combine": "product",
            "param:params/total": str(total_params),
            "param:macs/backbone": str(macs_backbone),
            "param:macs/madcluster": str(macs_plugin),
            **extra,
        }

    runs = pd.DataFrame(
        [
            run("MSL", False, 254_790_125, 424_500_000, 0),
            run("MSL", True, 254_790_126, 424_500_000, 2_000),
            run("MSL", True, 254_790_126, 424_500_000, 2_000),
            run("SMD", False, 100, 100, 0),  # Table 2 counts MSL only
        ]
    )
    table = complexity_table(runs).set_index(["arm", "metric"])
    assert len(table) == 4 and set(table["dataset"]) == {"MSL"}
    assert table.loc[("off", "Params"), "paper"] == 256_260_000
    assert table.loc[("off", "Params"), "measured"] == 254_790_125
    assert table.loc[("off", "Params"), "relative_diff"] == pytest.approx(
        254_790_125 / 256_260_000 - 1, rel=1e-12
    )
    on = table.loc[("on", "MACs")]
    assert (on["paper"], on["measured"], on["n"], on["distinct"]) == (
        427_360_000,
        424_502_000,
        2,
        1,
    )
    label = protocol_label(
        pd.Series(
            {
                "param:protocol": "reference",
                "param:pipeline": "reference",
                "param:dataset.validation": "test",
            }
        )
    )
    assert label == "reference, reference pipeline (validates on test)"
    assert protocol_label(pd.Series({"param:protocol": "point", "param:pipeline": math.nan})) == (
        "point"
    )
