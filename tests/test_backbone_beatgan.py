"""BeatGAN's pieces against hand-computed cases: lengths through the conv stack, the reference
network at the reference window, the losses, the per-step tap, the two-phase update and the
discriminator's re-initialisation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from madcluster_exp.backbones import build_backbone
from madcluster_exp.backbones.base import StepContext
from madcluster_exp.backbones.beatgan import (
    Discriminator,
    discriminator_loss,
    feature_matching_loss,
    strided_lengths,
)
from madcluster_exp.detector import Detector
from madcluster_exp.madcluster import build_plugin
from tests.conftest import compose_config

C = 3


def _backbone(*overrides, channels=C):
    cfg = compose_config(
        [
            "backbone=beatgan",
            "madcluster=off",
            "backbone.ndf=4",
            "backbone.ngf=4",
            "backbone.latent=6",
            *overrides,
        ]
    )
    torch.manual_seed(0)
    return build_backbone(channels, cfg.backbone)


def test_strided_lengths_halve_with_floor():
    assert strided_lengths(100, 5) == [100, 50, 25, 12, 6, 3]
    assert strided_lengths(320, 5) == [320, 160, 80, 40, 20, 10]
    assert strided_lengths(37, 3) == [37, 18, 9, 4]


@pytest.mark.parametrize(
    "window,layers", [(100, 5), (320, 5), (20, 4), (37, 3), (11, 2), (8, 3), (64, 6)]
)
def test_generator_output_has_the_window_length(window, layers):
    bb = _backbone(f"backbone.window={window}", f"backbone.layers={layers}")
    x = torch.randn(2, window, C)
    out = bb(x)
    assert out.aux["x_hat"].shape == (2, window, C)
    assert bb.score(x, out).shape == (2, window)
    code = bb.encoder(x.transpose(1, 2))
    assert code.shape == (2, 6, 1)  # the whole window in one latent code


def test_window_shorter_than_the_strided_stack_is_refused():
    with pytest.raises(
        ValueError,
        match=r"backbone.window=15 is too short for backbone.layers=4"
        r".*at least 2\^4 = 16",
    ):
        _backbone("backbone.window=15", "backbone.layers=4")


def test_output_activation_is_validated():
    with pytest.raises(ValueError, match="output_activation='relu'.*tanh, identity"):
        _backbone("backbone.output_activation=relu")


def test_reference_window_builds_the_reference_network():
    """At the reference's ECG settings (1 channel, 320 steps, nz 50, ndf = ngf = 32) the
    parameter count is the reference's, counted by hand from experiments/ecg/network.py:
    conv weights (no biases) and BatchNorm (2 per channel)."""
    cfg = compose_config(["backbone=beatgan", "backbone.window=320"])
    bb = build_backbone(1, cfg.backbone)
    f = [32, 64, 128, 256, 512]
    body = 1 * 32 * 4 + sum(f[i] * f[i + 1] * 4 for i in range(4)) + 2 * sum(f[1:])
    encoder = body + 512 * 50 * 10
    decoder = 50 * 512 * 10 + sum(f[i + 1] * f[i] * 4 for i in range(4)) + 32 * 1 * 4 + 2 * sum(f)
    disc = body + 512 * 1 * 10
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(bb.encoder) == encoder
    assert count(bb.decoder) == decoder
    assert count(bb.discriminator) == disc
    # Final kernels span the remaining length 10, as the reference's Conv1d(.., 10, 1, 0).
    assert bb.encoder[-1].kernel_size == (10,) and bb.discriminator.classifier.kernel_size == (10,)
    assert all(
        m.output_padding == (0,)
        for m in bb.decoder.modules()
        if isinstance(m, torch.nn.ConvTranspose1d)
    )


def test_conv_lengths_are_logged():
    bb = _backbone("backbone.window=100", "backbone.layers=5")
    assert bb.extra_log_params() == {"beatgan/conv_lengths": "100,50,25,12,6,3"}


def test_output_padding_undoes_the_rounding_of_odd_lengths():
    bb = _backbone("backbone.window=100", "backbone.layers=5")  # 100 50 25 12 6 3
    pads = [
        m.output_padding[0]
        for m in bb.decoder.modules()
        if isinstance(m, torch.nn.ConvTranspose1d) and m.stride == (2,)
    ]
    # decoder order: 3 -> 6 -> 12 -> 25 -> 50 -> 100
    assert pads == [0, 0, 1, 0, 0]


def test_discriminator_loss_is_bce_against_one_and_zero():
    real = torch.tensor([0.0, 2.0])
    fake = torch.tensor([-1.0, 3.0])
    d_real, d_fake = discriminator_loss(real, fake)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert d_real.item() == pytest.approx(-(math.log(0.5) + math.log(sig(2.0))) / 2, rel=1e-6)
    assert d_fake.item() == pytest.approx(
        -(math.log(1 - sig(-1.0)) + math.log(1 - sig(3.0))) / 2, rel=1e-6
    )


def test_feature_matching_loss_pairs_each_window_with_its_own_reconstruction():
    real = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]])  # [B=2, F=1, L=2]
    fake = torch.tensor([[[1.0, 0.0]], [[6.0, 4.0]]])
    # differences 0, 2, -3, 0 -> mean of squares 13 / 4
    assert feature_matching_loss(fake, real).item() == pytest.approx(13 / 4)
    # swapping the pairs changes it: pairwise, not a batch-mean (moment) match
    assert feature_matching_loss(fake.flip(0), real).item() != pytest.approx(13 / 4)


def test_discriminator_features_come_before_the_classifier():
    torch.manual_seed(0)
    d = Discriminator(C, 4, strided_lengths(16, 2)).eval()
    x = torch.randn(5, C, 16)
    logit, features = d(x)
    assert features.shape == (5, 8, 4) and logit.shape == (5,)
    torch.testing.assert_close(logit, d.classifier(features).reshape(-1))


def test_decoder_tap_reads_position_t_over_two_of_the_last_hidden_map():
    bb = _backbone("backbone.window=11", "backbone.layers=2", "backbone.embed_tap=decoder")
    bb.eval()
    x = torch.randn(2, 11, C)
    _, _, hidden = bb.generate(x.transpose(1, 2))  # [2, ngf=4, 5]
    z = bb(x).z
    assert z.shape == (2, 11, 4) and bb.embed_dim == 4
    for t, pos in enumerate([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4]):
        torch.testing.assert_close(z[:, t], hidden[:, :, pos])


def test_latent_tap_is_the_code_at_every_step():
    bb = _backbone("backbone.window=20", "backbone.layers=3").eval()
    x = torch.randn(2, 20, C)
    code = bb.encoder(x.transpose(1, 2))[..., 0]
    z = bb(x).z
    assert z.shape == (2, 20, 6)
    torch.testing.assert_close(z, code.unsqueeze(1).expand(-1, 20, -1))


def test_score_is_the_per_step_squared_error_mean_over_channels():
    bb = _backbone("backbone.window=8", "backbone.layers=2").eval()
    x = torch.randn(2, 8, C)
    out = bb(x)
    expected = ((x - out.aux["x_hat"]) ** 2).mean(-1)
    torch.testing.assert_close(bb.score(x, out), expected)
    # window mean of the per-step score = the reference's per-window MSE
    torch.testing.assert_close(
        bb.score(x, out).mean(-1), F.mse_loss(out.aux["x_hat"], x, reduction="none").mean((1, 2))
    )


def _detector(state, *overrides):
    cfg = compose_config(
        [
            "backbone=beatgan",
            f"madcluster={state}",
            "backbone.window=16",
            "backbone.layers=3",
            "backbone.ndf=4",
            "backbone.ngf=4",
            "backbone.latent=6",
            *overrides,
        ]
    )
    torch.manual_seed(0)
    bb = build_backbone(C, cfg.backbone)
    det = Detector(bb, build_plugin(bb.embed_dim, cfg.madcluster, 0))
    det.configure_optimizers(1e-3, 0.0, None)
    det.train()
    return det


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _moved(before, module):
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}


@pytest.mark.parametrize("state", ["off", "on"])
def test_each_phase_steps_only_its_own_parameters(state):
    """The D phase moves only D; the G phase moves only G (and the plug-in's center and nu)."""
    det = _detector(state)
    bb = det.backbone
    x = torch.randn(8, 16, C)
    calls = []

    def record(loss, group=None):
        before = _snapshot(det)
        det._optimize(loss, group)
        calls.append((group, _moved(before, det)))

    bb.training_step(x, StepContext(0, det._plugin_loss, record, True))
    assert [g for g, _ in calls] == ["discriminator", "generator"]
    d_names = {f"backbone.discriminator.{n}" for n, _ in bb.discriminator.named_parameters()}
    g_names = {f"backbone.{n}" for n, _ in bb.named_parameters()} - d_names
    plugin_names = {n for n, _ in det.named_parameters() if n.startswith("plugin.")}
    assert calls[0][1] == d_names
    assert calls[1][1] == g_names | plugin_names
    assert (len(plugin_names) > 0) == (state == "on")


def test_generator_step_follows_reconstruction_plus_weighted_feature_matching():
    """G's gradient is that of MSE(G(x), x) + w_adv * MSE(f_D(G(x)), f_D(x)) with f_D(x) a
    constant and D as the D phase left it: recomputed on a copy, with D unfrozen."""
    det = _detector("off", "backbone.w_adv=0.3")
    bb = det.backbone
    x = torch.randn(8, 16, C)
    seen = {}

    def record(loss, group=None):
        if group == "generator":  # D already stepped; G's parameters not yet
            ref = copy.deepcopy(bb)
            xc = x.transpose(1, 2)
            x_hat = ref.generate(xc)[0]
            feat_fake = ref.discriminator(x_hat)[1]
            feat_real = ref.discriminator(xc)[1].detach()
            target = F.mse_loss(x_hat, xc) + 0.3 * F.mse_loss(feat_fake, feat_real)
            target.backward()
            seen["ref"] = {n: p.grad for n, p in ref.named_parameters()}
            seen["loss"] = (loss.item(), target.item())
        det._optimize(loss, group)
        if group == "generator":
            seen["got"] = {n: p.grad for n, p in bb.named_parameters()}

    bb.training_step(x, StepContext(0, det._plugin_loss, record, True))
    assert seen["loss"][0] == pytest.approx(seen["loss"][1], rel=1e-6)
    for name, grad in seen["got"].items():
        if name.startswith("discriminator."):
            assert grad is None  # D frozen in the G phase: no weight gradient computed
        else:
            torch.testing.assert_close(grad, seen["ref"][name], rtol=1e-5, atol=1e-7)


def test_discriminator_is_reinitialised_when_its_loss_falls_below_the_threshold():
    det = _detector("off", "backbone.d_reinit_below=1e9")  # every step counts as "too good"
    bb = det.backbone
    x = torch.randn(8, 16, C)
    torch.manual_seed(1)
    logs = det.training_step(x, 0)
    assert logs["d_reinit"] == 1.0
    # fresh reference init: BatchNorm weights ~ N(1, 0.02), biases 0, conv weights Xavier-normal
    bns = [m for m in bb.discriminator.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert all(torch.equal(m.bias.detach(), torch.zeros_like(m.bias)) for m in bns)
    torch.manual_seed(1)
    det2 = _detector("off", "backbone.d_reinit_below=null")
    assert det2.training_step(x, 0)["d_reinit"] == 0.0
    # without re-initialisation the D phase's Adam step leaves BN biases off zero
    assert any(
        not torch.equal(m.bias.detach(), torch.zeros_like(m.bias))
        for m in det2.backbone.discriminator.modules()
        if isinstance(m, torch.nn.BatchNorm1d)
    )


def test_both_networks_use_the_reference_adam_betas_and_nu_keeps_the_default():
    det = _detector("on")
    assert set(det.optimizers) == {"generator", "discriminator"}
    for opt in det.optimizers.values():
        groups = [g for g in opt.param_groups if g.get("name") != "madcluster_nu"]
        assert all(g["betas"] == (0.5, 0.999) for g in groups)
    nu = [g for g in det.optimizers["generator"].param_groups if g.get("name") == "madcluster_nu"]
    assert len(nu) == 1 and nu[0]["betas"] == (0.9, 0.999)
    host = det.optimizers["generator"].param_groups[0]["params"]
    assert any(det.plugin.center is p for p in host)


def test_validation_loss_is_the_reconstruction_error():
    det = _detector("off")
    det.eval()
    x = torch.randn(8, 16, C)
    logs = det.evaluate_loss(x)
    out = det.backbone(x)
    assert logs["loss"] == pytest.approx(F.mse_loss(out.aux["x_hat"], x).item(), rel=1e-6)
