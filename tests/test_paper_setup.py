"""The paper's set-up as published: He init on the reference's layer types only, each
backbone's size as appendix Table 2 counts it, and nu trained as the reference trains it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from madcluster_exp.backbones import backbone_class
from madcluster_exp.config import CONFIG_DIR, MADClusterConfig
from madcluster_exp.detector import NU_GROUP, build_detector, count_parameters, optimizer_options
from madcluster_exp.madcluster import build_plugin
from madcluster_exp.report.sections.paper import load_published
from madcluster_exp.utils.nn import init_weights
from tests.conftest import compose_config


# ------------------------------------------------------------------------------ train.init=he
def _build(*overrides: str, n_channels: int = 6):
    cfg = compose_config(["train.init=default", *overrides])
    torch.manual_seed(0)
    return build_detector(cfg, n_channels).backbone


def _snapshot(module: torch.nn.Module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_he_init_leaves_beatgans_xavier_convs_as_they_are():
    """BeatGAN is all Conv1d / ConvTranspose1d / BatchNorm (Xavier-normal convs, its reference's
    ``weights_init``): the reference's he_init_normal lists none of them."""
    net = _build("backbone=beatgan", "backbone.window=32", "backbone.layers=3", "backbone.ndf=8")
    before = _snapshot(net)
    assert init_weights(net, "he") == 0
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Xavier-normal, not PyTorch's default: the first encoder conv [8, 6, 4] has
    # std sqrt(2 / (fan_in + fan_out)) = sqrt(2 / (6 * 4 + 8 * 4)).
    first = net.encoder[0][0].weight
    assert isinstance(net.encoder[0][0], torch.nn.Conv1d) and first.shape == (8, 6, 4)
    assert first.std().item() == pytest.approx(math.sqrt(2 / 56), rel=0.15)
    deconv = [m for m in net.decoder.modules() if isinstance(m, torch.nn.ConvTranspose1d)]
    assert deconv and all(torch.equal(before[k], after[k]) for k in before if "decoder" in k)


def test_he_init_leaves_omnianomalys_glorot_dense_layers_as_they_are():
    net = _build("backbone=omnianomaly", "backbone.rnn_hidden=16", "backbone.dense_dim=300")
    before = _snapshot(net)
    assert init_weights(net, "he") == 0  # every Linear is marked as the backbone's own
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # TF's Glorot-uniform on the [300, 300] dense kernel: U(-a, a), a = sqrt(6 / 600),
    # std a / sqrt(3); He-normal would have std sqrt(2 / 300), 1.4x wider.
    w = net.q_dense[1].weight
    limit = math.sqrt(6 / 600)
    assert w.abs().max().item() <= limit
    assert w.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.02)


def test_he_init_draws_linear_layers_from_kaiming_normal_and_keeps_1d_convs():
    usad = _build("backbone=usad", "backbone.window=40", "train.init=he")
    first = usad.encoder[0]  # Linear(40 * 6, 120)
    assert first.weight.shape == (120, 240)
    assert first.weight.std().item() == pytest.approx(math.sqrt(2 / 240), rel=0.03)
    assert torch.count_nonzero(first.bias) == 0

    ref = ["backbone=dcdetector_reference", "backbone.d_model=64"]
    default, he = _build(*ref), _build(*ref, "train.init=he")
    # The embeddings' kernel-3 Conv1d keeps its Kaiming leaky-ReLU init (same draw: the same
    # seed, and he init only runs after construction).
    for name, w in default.state_dict().items():
        if "token" in name:
            assert torch.equal(w, he.state_dict()[name])
    q = he.layers[0].query
    assert q.weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.05)
    assert torch.count_nonzero(q.bias) == 0
    assert not torch.equal(q.weight, default.layers[0].query.weight)


# ------------------------------------------------------------------- sizes of appendix Table 2
def _paper_lineup():
    """experiment=paper_table's backbones, as its sweep lists them."""
    exp = yaml.safe_load((Path(CONFIG_DIR) / "experiment" / "paper_table.yaml").read_text())
    return exp["hydra"]["sweeper"]["params"]["backbone"].split(",")


def _published_params(backbone: str) -> float:
    table = load_published()
    row = table[
        (table["table"] == "Table 2")
        & (table["backbone"] == backbone)
        & (table["madcluster"] == "off")
        & (table["metric"] == "Params")
    ]
    (value,) = row["value"]
    return float(value)


def _reference_dcdetector_params(d: int, channels: int, window: int, patches, layers: int):
    """(every parameter, the parameters its forward pass uses) of the MADCluster reference's
    DCdetector (MADCluster_MODEL.py ``Network`` without the plug-in), from its layer shapes:
    kernel-3 bias-free Conv1d token embeddings for the patch-wise (p wide), in-patch (T / p
    wide) and whole-window (C wide) views; per layer the patch query and key projections
    (used) and the value and output projections and a LayerNorm (never called); the encoder's
    LayerNorm and the d -> C output projection (never called)."""
    embeddings = 3 * d * (sum(patches) + sum(window // p for p in patches) + channels)
    linear = d * d + d
    used = embeddings + layers * 2 * linear
    unused = layers * (2 * linear + 2 * d) + 2 * d + (d * channels + channels)
    return used + unused, used


@pytest.mark.parametrize("name", _paper_lineup())
def test_paper_setup_builds_each_backbone_at_its_published_size_on_msl(name):
    """The backbone class a run builds, on the meta device: the parameter count is the
    structure's, and the two largest (USAD 255 M, BeatGAN 185 M) would otherwise allocate and
    initialise 1.7 GB for it (and ``train.init`` changes values, not the count)."""
    cfg = compose_config(["setup=paper", f"backbone={name}", "dataset=MSL", "madcluster=off"])
    with torch.device("meta"):
        backbone = backbone_class(cfg.backbone.name)(55, cfg.backbone)
    assert backbone.window == 100
    n = count_parameters(backbone)
    published = _published_params(cfg.backbone.name)
    if cfg.backbone.name != "dcdetector":
        assert abs(n / published - 1) < 0.05, (name, n, published)
        return
    # The documented nearest (docs/method.md): the reference's own configuration, whose count
    # includes layers it never calls. Ours builds exactly its used ones.
    b = cfg.backbone
    total, used = _reference_dcdetector_params(
        b.d_model, 55, b.window, list(b.patch_sizes), b.layers
    )
    assert (b.d_model, list(b.patch_sizes), b.layers, b.n_heads) == (256, [2, 5, 10], 3, 1)
    assert n == used == 511_488
    assert abs(total / published - 1) < 0.05 and abs(n / published - 1) > 0.4


def test_paper_sizes_are_set_by_the_setup_only():
    """The published sizes come with the paper's set-up (and so with its experiments), not
    without it, and debug=fast never builds the 185 M BeatGAN (nor the 255 M USAD)."""
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        for overrides, (ndf, ngf) in (
            (["experiment=paper_table", "backbone=beatgan"], (300, 300)),
            (["backbone=beatgan"], (32, 32)),
            (["experiment=paper_table", "backbone=beatgan", "debug=fast"], (32, 32)),
        ):
            b = compose(config_name="config", overrides=overrides).backbone
            assert (b.ndf, b.ngf) == (ndf, ngf), overrides


# ------------------------------------------------------------------------- nu, as trained
def _plugin_k1(variant: str):
    cfg = OmegaConf.structured(MADClusterConfig)
    cfg.variant = variant
    return build_plugin(8, cfg, seed=0).double()


def _window(seed: int = 0) -> torch.Tensor:
    return torch.randn(4, 20, 8, generator=torch.Generator().manual_seed(seed)).double()


def test_bounded_nu_gradient_is_the_raw_one_times_the_sigmoid_slope():
    """Same loss, two parametrisations: dL/dtheta = dL/dnu * (1 - 2m) sigma(theta)(1 -
    sigma(theta)), which at nu = 0.5 (theta = 0) is dL/dnu * (1 - 2m) / 4."""
    plugin, z = _plugin_k1("paper"), _window()
    assert plugin.nu_raw.item() == 0.0 and plugin.nu.item() == pytest.approx(0.5, abs=1e-15)
    plugin.loss(z)["total"].backward()
    g_theta = plugin.nu_raw.grad.item()
    # The paper's loss written out with nu a leaf of its own: q = (1 + cos)/2, OD terms,
    # mapping ||h - c||^2, total log(mean_b sum_t (mapping + cluster) + 1e-8).
    c = plugin.center.detach()
    nu = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    q = (1 + torch.nn.functional.cosine_similarity(z, c.expand_as(z), dim=-1)) / 2
    p = (q >= nu).double() * (1 - 0.01) + (q < nu).double() * 0.01
    log_f1 = torch.log((1 - nu ** (1 - nu)) / (1 - nu) * (q - 1) + 1)
    cluster = -(p * log_f1 + (1 - p) * (1 - nu) * torch.log(q))
    mapping = ((z - c) ** 2).sum(-1)
    torch.log((mapping + cluster).sum(1).mean() + 1e-8).backward()
    g_nu = nu.grad.item()
    assert g_nu < 0  # the paper's proof: training pushes nu upward
    margin = 1e-4
    assert g_theta == pytest.approx(g_nu * (1 - 2 * margin) / 4, rel=1e-9)


def test_one_adam_step_moves_bounded_nu_a_quarter_of_raw_nu():
    """nu's real optimizer (its group in the detector: Adam, AMSGrad, no weight decay) at the
    official lr 1e-4. Adam's first step is lr * g / (|g| + eps) whatever the loss's scale, so
    raw nu (reference) moves by lr and theta by lr, i.e. the bounded nu (paper) by
    (1 - 2m) (sigma(lr) - 1/2) ~ lr / 4: at least 4x slower at any nu, sigma' <= 1/4."""
    lr, margin = 1e-4, 1e-4
    moved = {}
    for variant in ("paper", "reference"):
        cfg = compose_config(["backbone=deepsvdd", f"madcluster.variant={variant}"])
        torch.manual_seed(0)
        det = build_detector(cfg, 3).double()  # float64: nu's step is 1e-4 against 0.5
        det.configure_optimizers(lr=1e-3, weight_decay=1e-6, nu_lr=lr, fused=False)
        x = torch.randn(4, cfg.backbone.window, 3, generator=torch.Generator().manual_seed(1))
        x = x.double()
        nu0 = det.plugin.nu.item()
        assert nu0 == pytest.approx(0.5, abs=1e-15)
        det._optimize(det.plugin.loss(det.backbone(x).z)["total"])
        g = abs(det.plugin.nu_raw.grad.item())
        step = lr * g / (g + 1e-8)  # Adam (AMSGrad) step 1: m = (1 - b1) g, v = (1 - b2) g^2
        expected = (
            nu0 + step
            if variant == "reference"
            else (margin + (1 - 2 * margin) / (1 + math.exp(-step)))
        )
        assert det.plugin.nu.item() == pytest.approx(expected, abs=1e-15)
        moved[variant] = det.plugin.nu.item() - nu0
    assert moved["reference"] / moved["paper"] == pytest.approx(4 / (1 - 2 * margin), rel=1e-6)


def test_paper_setup_trains_nu_at_the_official_rate_whatever_the_backbones():
    cfg = compose_config(["setup=paper", "backbone=thoc", "dataset=MSL"])
    opts = optimizer_options(cfg)
    assert (opts["lr"], opts["nu_lr"]) == (1e-3, 1e-4)  # THOC's rate is 10x the official
    torch.manual_seed(0)
    det = build_detector(cfg, 5)
    det.configure_optimizers(**opts)
    det.set_epoch_lr(3, cfg.backbone.lr_decay, cfg.backbone.lr_decay_delay)
    rates = {g.get("name"): g["lr"] for g in det.optimizers[det.host_group].param_groups}
    assert rates[NU_GROUP] == 1e-4  # constant: no scheduler on nu, as the reference
    assert rates[None] == pytest.approx(1e-3 * 0.9**3)
    assert compose_config(["backbone=thoc"]).madcluster.nu_lr is None  # elsewhere: the backbone's
