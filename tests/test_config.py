"""Every option of every group composes; misspelt keys and options fail at composition."""

from __future__ import annotations

import subprocess
import sys
from enum import Enum
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from madcluster_exp.app import CONFIG_DIR
from madcluster_exp.config import ConfigError, validate
from tests.conftest import compose_config

GROUPS = [
    "paths",
    "dataset",
    "backbone",
    "madcluster",
    "train",
    "scoring",
    "threshold",
    "metrics",
    "tracking",
    "setup",
    "experiment",
    "debug",
]


def _options():
    for group in GROUPS:
        folder = Path(CONFIG_DIR) / group
        assert folder.is_dir(), f"config group {group} missing"
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        assert options, f"config group {group} has no option"
        for option in options:
            yield group, option


@pytest.mark.parametrize("group,option", list(_options()))
def test_every_option_composes_and_validates(group, option):
    cfg = compose_config([f"{group}={option}"])
    if cfg.backbone.family == "classical":  # no plug-in on a classical detector
        cfg = compose_config([f"{group}={option}", "madcluster=off"])
    validate(cfg)
    assert cfg.backbone.name and cfg.dataset.name


def test_defaults_are_the_embedded_synthetic_dataset_with_madcluster_on():
    cfg = compose_config()
    assert cfg.dataset.name == "synthetic"
    assert cfg.backbone.name == "deepsvdd"
    assert cfg.madcluster.enabled is True and cfg.madcluster.k == 1
    assert cfg.threshold.kind == "val_percentile"
    assert compose_config(["madcluster=off"]).madcluster.enabled is False


def test_misspelt_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="hiden"):
        compose_config(["backbone.hiden=3"])
    with pytest.raises(ConfigCompositionException, match="sed"):
        compose_config(["sed=1"])


def test_misspelt_option_fails_at_composition():
    with pytest.raises(MissingConfigException, match="deepsvd"):
        compose_config(["backbone=deepsvd"])


def test_wrong_type_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="window"):
        compose_config(["backbone.window=wide"])


#: Every closed choice: (options that bring the key, the key, its allowed values).
CHOICE_KEYS = [
    ([], "device", "cpu, cuda, auto"),
    ([], "dataset.normalize", "standard, minmax, none"),
    ([], "dataset.mode", "concat, per_entity"),
    ([], "dataset.nan_policy", "error, zero"),
    (["dataset=collection"], "dataset.test_part", "rest, whole"),
    ([], "madcluster.variant", "paper, reference"),
    ([], "madcluster.objective", "one-class, soft-boundary"),
    ([], "madcluster.components", "both, mapping, clustering"),
    ([], "scoring.combine", "sum, product, madcluster_only, backbone_only"),
    ([], "scoring.aggregate", "mean, max"),
    ([], "train.progress", "auto, bar, line, none"),
    ([], "train.init", "default, he"),
    ([], "threshold.kind", "val_percentile, pot, spot, transductive, oracle"),
    ([], "tracking.backend", "mlflow, none"),
    ([], "metrics.definition", "vus006, tsbad"),
    ([], "search.objective", "val_loss, val_injected_vus_pr"),
    ([], "backbone.objective", "one-class, soft-boundary"),
    (["backbone=knn"], "backbone.spread", "center, last, all"),
    (["backbone=knn"], "backbone.method", "largest, mean"),
    (["backbone=knn"], "backbone.algorithm", "auto, brute, kd_tree, ball_tree"),
    (["backbone=matrix_profile"], "backbone.channels", "mean, max"),
]


@pytest.mark.parametrize("options,key,allowed", CHOICE_KEYS, ids=[k for _, k, _ in CHOICE_KEYS])
def test_a_value_outside_a_closed_choice_fails_at_composition_naming_key_and_choices(
    options, key, allowed
):
    with pytest.raises(ConfigCompositionException, match=f"{key}=one_class") as err:
        compose_config([*options, f"{key}=one_class"])
    cause = str(err.value.__cause__)
    assert f"expected one of [{allowed}]" in cause and f"full_key: {key}" in cause


def test_protocol_is_a_preset_and_a_wrong_one_names_the_presets():
    """protocol=<name> picks conf/protocol/<name>.yaml, which sets the key (still a closed
    choice) and whatever else the protocol implies."""
    with pytest.raises(MissingConfigException) as err:
        compose_config(["protocol=one_class"])
    assert "Could not find 'protocol/one_class'" in str(err.value)
    assert "\tpoint\n\treference\n\ttsbad" in str(err.value)
    with pytest.raises(ConfigCompositionException, match="protocol=one_class"):
        compose_config(["++protocol=one_class"])


def test_a_bad_choice_in_an_option_file_fails_at_composition(tmp_path):
    """A YAML file is checked as the command line is: the value and the allowed ones named."""
    (tmp_path / "threshold").mkdir()
    (tmp_path / "threshold" / "typo.yaml").write_text(
        "defaults:\n  - /schema/threshold@_here_: default\n  - _self_\nkind: pots\n"
    )
    with pytest.raises(ConfigCompositionException) as err:
        compose_config([f"hydra.searchpath=[file://{tmp_path}]", "threshold=typo"])
    text = f"{err.value}\n{err.value.__cause__}"
    assert "'pots'" in text and "val_percentile, pot, spot, transductive, oracle" in text


def test_a_choice_is_its_plain_string_in_run_name_and_mlflow_params(tmp_path):
    """A Choice member equals, hashes and prints as its value; the run name, flatten (MLflow
    params, fingerprint, config id) and the params MLflow stores hold the plain string."""
    from mlflow.tracking import MlflowClient

    from madcluster_exp.config import Objective, Protocol, load
    from madcluster_exp.pipeline.plan import make_plan
    from madcluster_exp.tracking import build_tracker

    cfg = compose_config(["madcluster.objective=soft-boundary", "scoring.combine=product"])
    assert cfg.protocol is Protocol.point and cfg.madcluster.objective == "soft-boundary"
    assert {"point": 1}[cfg.protocol] == 1
    assert (str(Objective["one-class"]), repr(Objective["one-class"])) == (
        "one-class",
        "'one-class'",
    )
    plan = make_plan(load(cfg))
    flat = plan.params
    assert not [k for k, v in flat.items() if isinstance(v, Enum)]
    name = plan.run_name
    assert name.startswith("on+product-") and name.endswith("-s0-deepsvdd-synthetic")
    tracker = build_tracker(cfg.tracking, tmp_path)
    tracker.start(name, flat, {})
    tracker.end("FINISHED")
    params = MlflowClient(tracker.uri).get_run(tracker.run_id).data.params
    assert (params["protocol"], params["madcluster.objective"], params["scoring.combine"]) == (
        "point",
        "soft-boundary",
        "product",
    )


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("madcluster.nu_init=1.0", "madcluster.nu_init=1.0"),
        ("dataset.val_fraction=0", "dataset.val_fraction=0"),
        ("train.resume=latest", "train.resume='latest': expected true, false or last"),
    ],
)
def test_bad_values_are_named_by_validate(override, fragment):
    cfg = compose_config([override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert fragment in str(err.value)


def test_reference_variant_applies_to_k_above_1():
    from madcluster_exp.config import inert_settings

    # k > 1 under the reference: the official code's DEC target (tests/test_madcluster_k.py).
    cfg = compose_config(["madcluster.variant=reference", "madcluster.k=3"])
    validate(cfg)
    assert inert_settings(cfg) == []


def test_cli_cfg_job_and_help(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "madcluster_exp", "--cfg", "job", "backbone.window=48"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "window: 48" in out.stdout and "name: synthetic" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "madcluster_exp", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("madcluster: "))
    assert {"off", "on"} <= set(line[len("madcluster: ") :].split(", "))


def _schema_defaults(entry):
    from hydra.core.config_store import ConfigStore

    ((key, option),) = entry.items()
    node = ConfigStore.instance().load(f"{key.split('@')[0].strip('/')}/{option}.yaml").node
    return OmegaConf.to_container(node, resolve=False)


@pytest.mark.parametrize(
    "path",
    sorted(p for p in Path(CONFIG_DIR).glob("*/*.yaml") if "- /schema/" in p.read_text()),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_option_files_hold_only_what_differs_from_the_schema(path):
    """Each default lives in the schema: a YAML value equal to it would silently stop
    following an edit of config.py. `name` stays, to say what the option is."""
    import yaml

    data = yaml.safe_load(path.read_text())
    defaults = _schema_defaults(next(d for d in data["defaults"] if isinstance(d, dict)))
    repeated = [
        k
        for k, v in data.items()
        if k not in ("defaults", "name") and k in defaults and defaults[k] == v
    ]
    assert not repeated, f"{path}: {repeated} repeat the schema defaults"


@pytest.mark.parametrize(
    "overrides,named",
    [
        (["madcluster.k=3", "madcluster.tau=0.2"], ["madcluster.tau=0.2"]),
        (["backbone.objective=soft-boundary"], ["backbone.objective=soft-boundary"]),
        (["backbone.radius_warmup_epochs=2"], ["backbone.radius_warmup_epochs=2"]),
        (["protocol=reference", "threshold=pot"], ["threshold.kind=pot"]),
        (["madcluster=off", "madcluster.k=4"], ["madcluster.k=4"]),
        (["madcluster=off", "scoring.combine=sum"], ["scoring.combine=sum"]),
        (["madcluster.k=2", "madcluster.nu_lr=0.01"], ["madcluster.nu_lr=0.01"]),
    ],
)
def test_settings_without_effect_are_named(overrides, named):
    from madcluster_exp.config import inert_settings

    found = inert_settings(compose_config(overrides))
    assert [f.split(" (")[0] for f in found] == named


@pytest.mark.parametrize(
    "overrides", [[], ["madcluster=off"], ["madcluster.k=3"], ["protocol=reference"]]
)
def test_defaults_and_effective_settings_raise_no_warning(overrides):
    from madcluster_exp.config import inert_settings

    assert inert_settings(compose_config(overrides)) == []


def test_pot_tail_risk_must_be_below_the_share_above_the_initial_threshold():
    cfg = compose_config(["threshold=pot", "threshold.level=0.999", "threshold.q=0.01"])
    with pytest.raises(ConfigError, match=r"threshold.q=0.01 .* expected q < 1 - level"):
        validate(cfg)
    validate(compose_config(["threshold=pot", "threshold.level=0.98", "threshold.q=0.001"]))


def test_a_run_warns_once_naming_the_settings_without_effect(make_cfg, tmp_path):
    from madcluster_exp.app import run

    cfg = make_cfg("madcluster.k=3", "madcluster.tau=0.2", "train.epochs=1", "tracking=none")
    with pytest.warns(UserWarning, match=r"no effect here: madcluster.tau=0.2 \(madcluster.k=3"):
        run(cfg, output_dir=tmp_path / "job", verbose=False)
