"""The paper's set-up as published: He init on the reference's layer types only, each
backbone's size as appendix Table 2 counts it, and nu trained as the reference trains it."""

from __future__ import annotations

import math

import pytest
import torch

from madcluster_exp.detector import build_detector
from madcluster_exp.nn_utils import init_weights
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
