"""BeatGAN (Zhou, Liu, Hooi, Cheng and Ye, IJCAI 2019, "BeatGAN: Anomalous Rhythm Detection
using Adversarially Generated Time Series"); reference code github.com/Vniex/BeatGAN at commit
0db64c0 (experiments/ecg/network.py, experiments/ecg/model.py, experiments/ecg/options.py).

Generator G = decoder(encoder(x)), a 1-D convolutional autoencoder:
- encoder: ``layers`` strided convs (kernel 4, stride 2, padding 1, no bias) with ndf * 2^i
  filters, LeakyReLU(0.2), BatchNorm after every conv but the first; a last conv whose kernel
  spans the remaining length maps to the latent code [B, latent, 1];
- decoder: the mirror image with transposed convs (a first one back to the remaining length,
  then kernel 4 / stride 2), BatchNorm + ReLU, Tanh on the output.
Discriminator D: the encoder's shape with one output channel; its features f_D are the output
of the last strided block (before the final conv), its classifier the final conv + sigmoid.

Training, one batch (the reference's ``optimize``): first D, then G, each with its own Adam
(lr 1e-4, betas (0.5, 0.999)):
  L_D = BCE(D(x), 1) + BCE(D(G(x)), 0)
  L_G = mean (x - G(x))^2 + w_adv * mean (f_D(G(x)) - f_D(x))^2   (pairwise feature matching)
The paper writes both terms as squared norms weighted by lambda; the reference (and this code)
takes both as means over their elements, with w_adv = lambda = 1 for ECG (0.01 in its mocap
MLP). D is re-initialised when L_D falls below 5e-6 (the reference's guard against a perfect D;
its Adam state is kept, as there). Weights are initialised as the reference's ``weights_init``.
The schedule lives in :meth:`BeatGAN.training_step`; with MADCluster on, its term joins the G
phase, whose optimizer also carries the plug-in's center.
Score per step: mean over channels of (x_t - G(x)_t)^2, the paper's anomaly score
||x - G(x)||^2 resolved per time tick (its Fig. 1 heat map); point scores follow from the
framework's aggregation over overlapping windows.

MADCluster tap (``embed_tap``):
- ``latent`` (default): the encoder's code G_E(x) [B, latent], the representation the paper
  builds (and regularises adversarially), broadcast to every step of the window as USAD's tap;
  per-point variation comes from the stride-1 windows that cover a point.
- ``decoder``: the last hidden decoder map [B, ngf, L_1] (L_1 = window // 2), the one step before
  the output; output step t is read from position t // 2, the position whose central kernel
  taps (1 and 2 of the stride-2 transposed conv) produce step t. A per-step representation
  trained by the reconstruction loss, for comparison.
The discriminator is never tapped: it is the adversary, not the detector's representation.

Deviations from paper and reference code (each stated so the numbers can be read):
1. Window length. The reference architecture is written for ECG beats of 320 samples (5 strided
   convs, 320 -> 10, then a kernel-10 conv). Here the final kernel is the length left after
   ``layers`` strided convs and each transposed conv gets the output_padding that undoes its
   encoder conv's rounding, so G(x) has exactly the window's length for any window
   >= 2^layers; at window 320 and layers 5 this is the reference network, layer for layer. The
   default window is 100 (the MADCluster paper's T), where the convs run 100 -> 50 -> 25 -> 12
   -> 6 -> 3 and the last kernel is 3.
2. Multivariate input. The reference ECG model reads 1 channel (nc=1); its mocap model is a
   separate MLP for 4 channels. Here every channel of the window is an input channel of the
   conv network (nc = number of channels), the paper's formulation for multivariate series.
3. No time-warping augmentation (the paper's data augmentation; ``data_aug`` in the reference,
   off by default there too: ``n_aug=0`` in options.py and run_ecg.sh).
4. Scaling. The reference ECG pipeline min-max scales every beat and channel to [-1, 1] (a
   per-window normalisation, which fits the Tanh output). Here the framework's dataset-level
   scaling applies (``dataset.normalize``, fitted on training data); per-window scaling would
   erase level-shift anomalies. ``dataset.normalize=minmax`` keeps training data inside the
   Tanh's range; ``output_activation=identity`` drops the Tanh for unbounded (z-scored) data.
5. Model selection and schedule. The reference trains 100 epochs and keeps the epoch with the
   best AUC on a labelled validation set. That uses labels, so here validation is label-free:
   ``loss`` (the validation objective for early stopping, ``train.*`` sets epochs and patience)
   is the reconstruction MSE, the quantity the score measures. The adversarial term is left out
   of it because its value moves with the discriminator, not with G's fit.
6. D's output: BCE is computed from D's logit (``binary_cross_entropy_with_logits``), the same
   function as the reference's sigmoid + BCELoss without its log clamp at -100.
7. In the G phase, f_D(x) is computed without a gradient and D's weights are frozen; G's
   gradient is the reference's (its extra gradient into D was discarded by zero_grad anyway).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from madcluster_exp.backbones.base import Backbone, BackboneOutput, StepContext, loss_logs
from madcluster_exp.config.schema import BackboneConfig

OUTPUT_ACTIVATIONS = ("tanh", "identity")


def strided_lengths(window: int, layers: int) -> List[int]:
    """Lengths before and after each kernel-4, stride-2, padding-1 conv: [window, .., L_layers].
    Each conv maps L to floor(L / 2)."""
    lengths = [window]
    for _ in range(layers):
        lengths.append(lengths[-1] // 2)
    return lengths


def init_weights(module: nn.Module) -> None:
    """The reference's ``weights_init``: Xavier-normal conv weights (transposed too), BatchNorm
    weight ~ N(1, 0.02) and bias 0."""
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
        nn.init.xavier_normal_(module.weight)
    elif isinstance(module, nn.BatchNorm1d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def conv_body(n_channels: int, filters: int, layers: int) -> nn.Sequential:
    """The strided part shared by G's encoder and D: [B, C, T] -> [B, filters 2^(layers-1), L]."""
    blocks: List[nn.Module] = []
    ch = n_channels
    for i in range(layers):
        out = filters * 2**i
        blocks.append(nn.Conv1d(ch, out, 4, 2, 1, bias=False))
        if i > 0:
            blocks.append(nn.BatchNorm1d(out))
        blocks.append(nn.LeakyReLU(0.2))
        ch = out
    return nn.Sequential(*blocks)


class Decoder(nn.Module):
    """Latent [B, latent, 1] -> [B, C, window], the encoder's mirror; ``hidden`` is the last
    hidden map [B, ngf, L_1], kept for the ``decoder`` tap."""

    def __init__(
        self, n_channels: int, latent: int, filters: int, lengths: List[int], output_activation: str
    ):
        super().__init__()
        layers = len(lengths) - 1
        top = filters * 2 ** (layers - 1)
        blocks: List[nn.Module] = [
            nn.ConvTranspose1d(latent, top, lengths[-1], 1, 0, bias=False),
            nn.BatchNorm1d(top),
            nn.ReLU(),
        ]
        for i in range(layers - 1, 0, -1):  # back from L_{i+1} to L_i
            pad = lengths[i] - 2 * lengths[i + 1]
            blocks += [
                nn.ConvTranspose1d(
                    filters * 2**i, filters * 2 ** (i - 1), 4, 2, 1, output_padding=pad, bias=False
                ),
                nn.BatchNorm1d(filters * 2 ** (i - 1)),
                nn.ReLU(),
            ]
        self.hidden = nn.Sequential(*blocks)
        self.out = nn.ConvTranspose1d(
            filters, n_channels, 4, 2, 1, output_padding=lengths[0] - 2 * lengths[1], bias=False
        )
        self.activation = nn.Tanh() if output_activation == "tanh" else nn.Identity()

    def forward(self, code: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden(code)
        return self.activation(self.out(hidden)), hidden


class Discriminator(nn.Module):
    """Encoder-shaped critic: (logit [B], features [B, ndf 2^(layers-1), L_layers])."""

    def __init__(self, n_channels: int, filters: int, lengths: List[int]):
        super().__init__()
        layers = len(lengths) - 1
        self.features = conv_body(n_channels, filters, layers)
        self.classifier = nn.Conv1d(filters * 2 ** (layers - 1), 1, lengths[-1], 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.classifier(features).reshape(-1), features


def discriminator_loss(
    logit_real: torch.Tensor, logit_fake: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(BCE of real windows against 1, BCE of generated windows against 0), batch means."""
    real = F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
    fake = F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
    return real, fake


def feature_matching_loss(feat_fake: torch.Tensor, feat_real: torch.Tensor) -> torch.Tensor:
    """Pairwise feature matching: mean squared difference of D's features of G(x) and of x
    (each generated window against its own input, not batch means)."""
    return F.mse_loss(feat_fake, feat_real)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No weight gradients for ``module`` inside the block (gradients still flow through it)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class BeatGAN(Backbone):
    name = "beatgan"
    family = "reconstruction"
    embed_taps = ("latent", "decoder")

    def __init__(self, n_channels: int, cfg: BackboneConfig):
        super().__init__(n_channels, cfg)
        layers = int(cfg.layers)
        if layers < 1:
            raise ValueError(f"backbone.layers={layers}: expected at least 1 strided conv layer")
        if self.window < 2**layers:
            raise ValueError(
                f"backbone.window={self.window} is too short for backbone.layers="
                f"{layers}: each strided conv halves the length, so the window must "
                f"be at least 2^{layers} = {2**layers}"
            )
        if cfg.output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"backbone.output_activation={cfg.output_activation!r}: expected one "
                f"of {', '.join(OUTPUT_ACTIVATIONS)}"
            )
        if cfg.w_adv < 0:
            raise ValueError(f"backbone.w_adv={cfg.w_adv}: expected a weight >= 0")
        if not 0.0 <= cfg.beta1 < 1.0:
            raise ValueError(f"backbone.beta1={cfg.beta1}: expected a value in [0, 1)")
        self.lengths = strided_lengths(self.window, layers)
        top = int(cfg.ndf) * 2 ** (layers - 1)
        self.encoder = nn.Sequential(
            conv_body(n_channels, int(cfg.ndf), layers),
            nn.Conv1d(top, int(cfg.latent), self.lengths[-1], 1, 0, bias=False),
        )
        self.decoder = Decoder(
            n_channels, int(cfg.latent), int(cfg.ngf), self.lengths, cfg.output_activation
        )
        self.discriminator = Discriminator(n_channels, int(cfg.ndf), self.lengths)
        self.apply(init_weights)
        self.w_adv = float(cfg.w_adv)
        self.beta1 = float(cfg.beta1)
        self.d_reinit_below: Optional[float] = (
            None if cfg.d_reinit_below is None else float(cfg.d_reinit_below)
        )
        self.embed_dim = int(cfg.latent) if self.embed_tap == "latent" else int(cfg.ngf)
        # Output step t reads hidden position t // 2 (the last step, added by output_padding
        # at odd windows, reads the last position).
        steps = torch.clamp(torch.arange(self.window) // 2, max=self.lengths[1] - 1)
        self.register_buffer("tap_index", steps, persistent=False)

    # -- optimisation layout -------------------------------------------------------------------
    def generator_parameters(self) -> List[nn.Parameter]:
        return list(self.encoder.parameters()) + list(self.decoder.parameters())

    def optimizer_groups(self) -> Dict[str, List[nn.Parameter]]:
        # The generator first: the plug-in's center joins the first group (its term is in L_G).
        return {
            "generator": self.generator_parameters(),
            "discriminator": list(self.discriminator.parameters()),
        }

    def optimizer_options(self) -> Dict[str, object]:
        return {"betas": (self.beta1, 0.999)}

    def extra_log_params(self) -> Dict[str, object]:
        """The lengths through the strided stack (the last is the final conv's kernel)."""
        return {"beatgan/conv_lengths": ",".join(map(str, self.lengths))}

    # -- the contract --------------------------------------------------------------------------
    def generate(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, C, T] -> (G(x) [B, C, T], latent code [B, latent, 1], last hidden decoder map)."""
        code = self.encoder(x)
        x_hat, hidden = self.decoder(code)
        return x_hat, code, hidden

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        x_hat, code, hidden = self.generate(rearrange(x, "b t c -> b c t"))
        if self.embed_tap == "latent":
            z = rearrange(code, "b f 1 -> b 1 f").expand(-1, x.shape[1], -1)
        else:
            z = rearrange(hidden.index_select(2, self.tap_index), "b f t -> b t f")
        return BackboneOutput(z=z, aux={"x_hat": rearrange(x_hat, "b c t -> b t c")})

    def loss(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        """Validation objective: the reconstruction MSE (deviation 4 of the module docstring)."""
        return F.mse_loss(out.aux["x_hat"], x)

    def score(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        return ((x - out.aux["x_hat"]) ** 2).mean(dim=-1)

    # -- the two-phase schedule ----------------------------------------------------------------
    def reinitialize_discriminator(self) -> None:
        self.discriminator.apply(init_weights)

    def training_step(self, x: torch.Tensor, ctx: StepContext) -> Dict[str, float]:
        x_ct = rearrange(x, "b t c -> b c t")
        # Phase D: real windows against generated ones (G's output as a constant).
        with torch.no_grad():
            fake = self.generate(x_ct)[0]
        logit_real, _ = self.discriminator(x_ct)
        logit_fake, _ = self.discriminator(fake)
        d_real, d_fake = discriminator_loss(logit_real, logit_fake)
        loss_d = d_real + d_fake
        ctx.optimize(loss_d, "discriminator")
        # Phase G: reconstruction + feature matching against the updated D (+ the plug-in).
        out = self(x)
        with frozen(self.discriminator):
            _, feat_fake = self.discriminator(rearrange(out.aux["x_hat"], "b t c -> b c t"))
            with torch.no_grad():
                _, feat_real = self.discriminator(x_ct)
        rec = self.loss(x, out)
        adv = feature_matching_loss(feat_fake, feat_real)
        loss_g = rec + self.w_adv * adv
        plugin = ctx.plugin_loss(out.z)
        total = ctx.combine(loss_g, plugin)
        ctx.optimize(total, "generator")
        logs = loss_logs(
            total,
            loss_g,
            plugin,
            loss_rec=rec,
            loss_adv=adv,
            loss_d=loss_d,
            loss_d_real=d_real,
            loss_d_fake=d_fake,
        )
        reinit = self.d_reinit_below is not None and logs["loss_d"] < self.d_reinit_below
        if reinit:
            self.reinitialize_discriminator()
        logs["d_reinit"] = float(reinit)
        return logs
