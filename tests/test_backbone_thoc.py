"""THOC's building blocks against hand-computed cases: the dilated RNN's skip structure, the
hierarchical assignment/relevance/fusion, the orthogonality and self-supervision terms, the
score, the center initialisation and the temperature schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from madcluster_exp.backbones import build_backbone
from madcluster_exp.backbones.thoc import (
    DilatedRNN,
    HierarchicalClustering,
    dilate,
    kmeans_centers,
    orthogonality,
    undilate,
)
from tests.conftest import compose_config

C = 3
SMALL = ["backbone=thoc", "backbone.window=20", "backbone.hidden=8", "backbone.clusters=[3,2,2]"]


def _thoc(*extra):
    torch.manual_seed(0)
    return build_backbone(C, compose_config([*SMALL, *extra]).backbone)


def test_dilate_groups_steps_by_residue_and_undilate_inverts_it():
    x = torch.arange(2 * 7, dtype=torch.float32).reshape(2, 7, 1)  # B=2, T=7 (padded to 9)
    d = dilate(x, 3)
    assert d.shape == (6, 3, 1)
    # Row 0 = batch 0's steps 0, 3, 6; row 2 = its steps 2, 5 and one trailing zero pad.
    assert d[0, :, 0].tolist() == [0.0, 3.0, 6.0]
    assert d[2, :, 0].tolist() == [2.0, 5.0, 0.0]
    assert d[3, :, 0].tolist() == [7.0, 10.0, 13.0]  # batch 1, step 0
    assert torch.equal(undilate(d, 3, 7), x)


def _dependencies(model: nn.Module, layer: int, t: int, length: int = 12) -> list:
    """Input steps with a non-zero gradient on the output of ``layer`` at step t."""
    x = torch.randn(1, length, 2, requires_grad=True)
    model(x)[layer][0, t].sum().backward()
    return torch.nonzero(x.grad[0].abs().sum(-1)).flatten().tolist()


def test_single_dilated_layer_recurs_only_within_its_residue_class():
    torch.manual_seed(0)
    rnn = DilatedRNN(2, 4, [4], "gru")
    assert _dependencies(rnn, 0, t=10) == [2, 6, 10]
    assert _dependencies(rnn, 0, t=3) == [3]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_stacked_dilations_reach_every_past_step_and_no_future_one(cell):
    """Dilations [2, 4]: layer 1 sees t, t-2, ...; layer 2 (skip 4 over layer 1) then reaches
    exactly the even-offset past steps: the receptive field of a dilated stack is the set of sums
    of multiples of the skips, here t - 2k. Nothing after t is ever used (causal padding)."""
    torch.manual_seed(0)
    rnn = DilatedRNN(2, 4, [2, 4], cell)
    assert _dependencies(rnn, 0, t=9) == [1, 3, 5, 7, 9]
    assert _dependencies(rnn, 1, t=9) == [1, 3, 5, 7, 9]
    assert _dependencies(rnn, 1, t=6) == [0, 2, 4, 6]
    rnn = DilatedRNN(2, 4, [1, 2, 4], cell)
    assert _dependencies(rnn, 2, t=5) == [0, 1, 2, 3, 4, 5]


def test_orthogonality_term_by_hand():
    c1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # orthonormal: 0
    c2 = torch.tensor([[1.0, 1.0], [2.0, 0.0]])  # C C^T = [[2, 2], [2, 4]]
    # ||C C^T - I||_F = sqrt(1 + 4 + 4 + 9) = sqrt(18); mean over the two layers
    assert orthogonality([c1, c2]).item() == pytest.approx(math.sqrt(18) / 2, rel=1e-6)
    c3 = torch.tensor([[3.0, 4.0]])  # one center: |c|^2 - 1 = 24
    assert orthogonality([c3]).item() == pytest.approx(24.0)


def _hand_hierarchy():
    """Two layers, H = 2, K = [2, 2], identity update maps (zero bias) and a fusion that keeps
    only the next scale: every intermediate value is computable by hand."""
    hc = HierarchicalClustering(2, [2, 2])
    with torch.no_grad():
        hc.centers[0].copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        hc.centers[1].copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        for lin in hc.update:
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
        hc.fuse[0].weight.copy_(torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
        hc.fuse[0].bias.zero_()
    return hc


def test_hierarchy_assignment_relevance_and_fusion_by_hand():
    hc = _hand_hierarchy()
    f1 = torch.tensor([[[3.0, 4.0]]])  # [B=1, T=1, H=2]: cos to the centers 0.6 and 0.8
    f2 = torch.tensor([[[1.0, 1.0]]])  # cos 1/sqrt(2) to both
    out = hc([f1, f2], tau=0.5)
    e = math.exp
    p1 = torch.tensor([e(1.2), e(1.6)]) / (e(1.2) + e(1.6))  # softmax(cos / 0.5)
    assert out["inputs"][0].shape == (1, 1, 1, 2)
    # Layer 1: f̂_j = p_j relu(f1); R^1 = softmax(p1); f̄^1_j = f2 (fusion keeps the next scale)
    torch.testing.assert_close(out["relevance"][0][0, 0], torch.softmax(p1, 0))
    torch.testing.assert_close(out["fused"][0][0, 0], torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
    # Layer 2: both inputs (1, 1) are equally close to both centers: P = 1/2 everywhere, so
    # R^2 = softmax(sum_i R^1_i / 2) = (1/2, 1/2) and f̂^2_j = (1/2 + 1/2) relu((1, 1)).
    torch.testing.assert_close(out["relevance"][1][0, 0], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(out["fused"][1][0, 0], torch.tensor([[1.0, 1.0], [1.0, 1.0]]))


def test_hierarchy_yields_the_configured_number_of_centers_per_layer():
    bb = _thoc("backbone.clusters=[4,3,2]")
    out = bb.hierarchy(bb.drnn(torch.randn(5, 20, C)), 1.0)
    assert [c.shape for c in bb.hierarchy.centers] == [(4, 8), (3, 8), (2, 8)]
    assert [f.shape[2] for f in out["inputs"]] == [1, 4, 3]  # K^{l-1} inputs per layer
    assert [f.shape for f in out["fused"]] == [(5, 20, 4, 8), (5, 20, 3, 8), (5, 20, 2, 8)]
    for r in out["relevance"]:  # a distribution over each layer's centers
        torch.testing.assert_close(r.sum(-1), torch.ones(5, 20))


def test_fusion_equals_the_linear_map_of_the_concatenation():
    """fused_input applies the fusion's halves separately; it must equal Linear([f̂ ; f_next])."""
    torch.manual_seed(1)
    hc = HierarchicalClustering(4, [3, 2])
    p = torch.softmax(torch.randn(2, 5, 3, 1), dim=2)
    u = torch.randn(2, 5, 1, 4)
    f_next = torch.randn(2, 5, 4)
    f_hat = torch.einsum("btkp,btph->btkh", p, u)
    expected = hc.fuse[0](torch.cat([f_hat, f_next.unsqueeze(2).expand(-1, -1, 3, -1)], -1))
    torch.testing.assert_close(hc.fused_input(0, p, u, f_next), expected)


def test_score_is_the_relevance_weighted_cosine_distance_of_the_top_layer():
    bb = _thoc().eval()
    x = torch.randn(4, 20, C)
    out = bb(x)
    h = bb.hierarchy(bb.drnn(x), float(bb.tau))
    f, c, r = h["fused"][-1], bb.hierarchy.centers[-1], h["relevance"][-1]
    cos = torch.nn.functional.cosine_similarity(f, c.expand_as(f), dim=-1)
    torch.testing.assert_close(bb.score(x, out), (r * (1 - cos)).sum(-1))
    every = _thoc("backbone.mvdd_layers=all").eval()
    every.load_state_dict(bb.state_dict())
    total = sum(
        (rl * (1 - torch.nn.functional.cosine_similarity(fl, cl.expand_as(fl), dim=-1))).sum(-1)
        for fl, cl, rl in zip(h["fused"], bb.hierarchy.centers, h["relevance"])
    )
    torch.testing.assert_close(every.score(x, every(x)), total)


def test_tss_predicts_each_layer_its_skip_ahead():
    bb = _thoc("backbone.dilations=[1,2,4]")
    x = torch.randn(2, 20, C)
    feats = bb(x).aux["feats"]
    by_hand = (
        sum(
            ((head(f[:, :-d]) - x[:, d:]) ** 2).mean()
            for head, f, d in zip(bb.predict, feats, [1, 2, 4])
        )
        / 3
    )
    assert bb.tss_loss(x, feats).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_loss_is_mvdd_plus_weighted_orthogonality_and_tss():
    bb = _thoc("backbone.lambda_orth=0.5", "backbone.lambda_tss=3")
    x = torch.randn(2, 20, C)
    out = bb(x)
    expected = (
        out.aux["dist"].mean()
        + 0.5 * orthogonality(bb.hierarchy.centers)
        + 3 * bb.tss_loss(x, out.aux["feats"])
    )
    assert bb.loss(x, out).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("tap,dim", [("drnn", 8), ("multiscale", 24), ("fused", 8)])
def test_taps_have_their_documented_width(tap, dim):
    bb = _thoc(f"backbone.embed_tap={tap}")
    assert bb.embed_dim == dim and bb(torch.randn(2, 20, C)).z.shape == (2, 20, dim)
    if tap == "drnn":
        torch.testing.assert_close(bb(torch.ones(1, 20, C)).z, bb.drnn(torch.ones(1, 20, C))[-1])


def test_kmeans_init_puts_the_first_centers_on_separated_feature_clusters():
    """Two well separated groups of training windows: after on_fit_start, the two layer-1
    centers are the means of the two groups' first-layer features (k-means on two blobs)."""
    bb = _thoc("backbone.clusters=[2,2,2]", "backbone.center_init_windows=40")
    a, b = torch.full((20, 20, C), 2.0), torch.full((20, 20, C), -2.0)
    bb.on_fit_start(lambda: iter([a, b]), True)
    with torch.no_grad():
        means = torch.stack(
            [bb.drnn(a)[0].reshape(-1, 8).mean(0), bb.drnn(b)[0].reshape(-1, 8).mean(0)]
        )
    got = bb.hierarchy.centers[0].detach()
    order = torch.cdist(got, means).argmin(1)
    assert sorted(order.tolist()) == [0, 1]
    torch.testing.assert_close(got, means[order], atol=1e-4, rtol=1e-4)


def test_kmeans_centers_repeat_when_points_are_fewer_than_centers():
    pts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    got = kmeans_centers(pts, 4, seed=0)
    assert got.shape == (4, 2)
    assert {tuple(r) for r in got.tolist()} == {(1.0, 0.0), (0.0, 1.0)}


def test_center_init_draws_no_global_random_numbers():
    bb = _thoc()
    torch.manual_seed(5)
    bb.on_fit_start(lambda: iter([torch.randn(8, 20, C, generator=torch.Generator())]), True)
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(1))


def test_tau_anneals_every_configured_epochs_down_to_its_floor():
    bb = _thoc(
        "backbone.tau=1.0",
        "backbone.tau_decay=0.5",
        "backbone.tau_decay_epochs=2",
        "backbone.tau_min=0.2",
    )
    taus = [bb.on_epoch_end(e)["backbone/tau"] for e in range(8)]
    assert taus == pytest.approx([1.0, 0.5, 0.5, 0.25, 0.25, 0.2, 0.2, 0.2])
    assert "tau" in bb.state_dict()  # checkpoints and best-epoch restore carry it


@pytest.mark.parametrize(
    "override,message",
    [
        ("backbone.cell=transformer", "cell='transformer'"),
        ("backbone.mvdd_layers=first", "mvdd_layers='first'"),
        ("backbone.clusters=[3,2]", r"clusters=\[3, 2\]: expected one count"),
        ("backbone.dilations=[1,2,32]", "shorter than backbone.window=20"),
        ("backbone.tau_decay=1.5", "tau_decay"),
    ],
)
def test_bad_settings_are_refused_with_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        _thoc(override)
