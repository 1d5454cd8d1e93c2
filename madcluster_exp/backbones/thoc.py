"""THOC (Shen, Li and Kwok, NeurIPS 2020, "Timeseries Anomaly Detection using Temporal
Hierarchical One-Class Network"), per time step.

There is no official code release. Read for this module: the paper's method section (eqs. 4-13
as quoted by the re-implementations; the PDF itself was not reachable from this workplace) and
the public re-implementations
- wagner-d/TimeSeAD @ a9795fb, ``timesead/models/other/thoc.py`` (model, loss, trainer) and
  ``timesead_experiments/other/train_thoc.py`` (settings); it quotes the authors' code in
  several comments ("Authors implementation") and is the reference for every default here;
- carrtesy/THOC-Pytorch @ 5699146 ``model.py``, oksjjj/THOC @ d689762 ``thoc/model.py``
  (which maps its lines to the paper's equation numbers) and kyeongjun1007/thoc-pytorch @
  1c9d205 ``THOC_Module/THOC.py``, to cross-check the equations.

Model (L layers, K^l centers at layer l, hidden size H):
1. Dilated RNN (eq. 4): layer l is an RNN whose recurrence skips s(l) = ``dilations[l]`` steps
   (1, 2, 4: f^l_t = RNN(f^{l-1}_t, f^l_{t-s(l)})), computed by folding the s(l) interleaved
   sub-sequences into the batch; zero padding at the end only, so every step stays causal.
2. Hierarchical clustering, per step t (eqs. 5-8, 10): the input of layer 1 is f̄^0 = f^1_t
   (one "previous cluster"). At layer l, P^l_{j|i} = softmax_j(cos(f̄^{l-1}_i, c^l_j) / tau)
   assigns each of the K^{l-1} previous fused features to the K^l centers; the update is
   f̂^l_j = sum_i P^l_{j|i} ReLU(W^l f̄^{l-1}_i + b^l); the relevance is R^l = softmax_j(
   sum_i R^{l-1}_i P^l_{j|i}) (R^1 = softmax_j P^1_{j|1}); below the top layer the update is
   fused with the next scale, f̄^l_j = Linear([f̂^l_j ; f^{l+1}_t]); at the top f̄^L = f̂^L.
3. Loss (eq. 13): L_MVDD + lambda_orth L_orth + lambda_TSS L_TSS, with
   L_MVDD = mean_t sum_j R^L_{t,j} d(f̄^L_{t,j}, c^L_j), d = 1 - cos (eq. 9);
   L_orth = 1/L sum_l ||C^l C^l^T - I||_F (eq. 11, centers not normalised);
   L_TSS = 1/L sum_l MSE(V^l f^l_t, x_{t+s(l)}) (eq. 12: layer l predicts s(l) steps ahead).
   Weight decay (the paper's Omega(W)) is the optimizer's.
4. Score per step = the fused distance of the loss, sum_j R^L_{t,j} d(f̄^L_{t,j}, c^L_j).
   ``mvdd_layers=all`` sums the same term over every layer (carrtesy's reading).
Centers start from k-means (scikit-learn) of each layer's assignment inputs on training windows,
layer by layer; tau is multiplied by ``tau_decay`` every ``tau_decay_epochs`` epochs down to
``tau_min``, moving the soft assignment towards a hard one (TimeSeAD's trainer).

MADCluster: THOC is itself a multi-center one-class model: sum_l K^l centers (6 + 6 + 6 by
default), compared by cosine, organised as a hierarchy, living in the fused feature spaces after
the per-layer update and fusion maps. The plug-in's learnable center c (k = 1; k centers with
``madcluster.k``) is one more hypersphere, Euclidean (||h - c||^2) with the cosine OD
clustering, on the tapped embedding h_t:
- ``drnn`` (default): the top dilated-RNN layer's output f^L_t [H], the longest-range scale and
  the representation both THOC objectives (clustering via the fusion, TSS) train. Here c is a
  coarse single sphere (the root above THOC's hierarchy) in a space where THOC has no center, so
  the two objectives shape the same encoder without competing for the same parameters; THOC
  keeps its own objective and score (unlike Deep SVDD, whose one center c would replace).
- ``multiscale``: the concatenation of every layer's f^l_t [L * H] (all scales at once).
- ``fused``: THOC's own final representation sum_j R^L_{t,j} f̄^L_{t,j} [H]. THOC's top
  centers pull its directions towards K^L different directions while c pulls it towards one,
  so with this tap the plug-in fights THOC's multi-center structure (offered for comparison).

Deviations from the paper and the re-implementations
- Hidden size 32 by default (TimeSeAD: 128): the clustering costs sum_l K^{l-1} H^2 per step
  on top of the RNN, and the default synthetic run must take minutes on CPU.
  ``backbone.hidden=128`` restores the reference size; the window stays the paper's 100.
- Score per step for every t of a window (the framework folds overlapping windows into point
  scores); TimeSeAD scores only each window's last step, carrtesy and oksjjj cluster only the
  last step of each window.
- tau starts at 1 as in carrtesy, oksjjj and kyeongjun1007 (the paper's eq. 5 temperature; its
  value was not readable here); TimeSeAD starts at 100, which keeps the assignment uniform for
  ~60 epochs. The annealing (x 2/3 every 5 epochs, TimeSeAD and kyeongjun1007) is applied once
  per ``tau_decay_epochs`` epochs; TimeSeAD's trainer multiplies on every batch of such epochs.
- R^l is re-normalised by a softmax (eq. 10 as TimeSeAD and oksjjj read it); carrtesy and
  kyeongjun1007 propagate sum_i R^{l-1}_i P^l_{j|i} without it.
- The update uses P directly (the paper, as TimeSeAD); TimeSeAD reports that the authors'
  code applies a second softmax over the previous clusters there.
- d = 1 - cos as in the paper (TimeSeAD: 0.5 (1 - cos), the authors' scaling by its account);
  the MVDD term sums over the K^L clusters (TimeSeAD averages, i.e. divides by K^L).
- L_orth on the raw centers, Frobenius norm, as eq. 11 quoted by oksjjj and carrtesy and the
  authors' code by TimeSeAD's account (TimeSeAD normalises the centers and takes the mean of
  the squared entries).
- TimeSeAD feeds batch-first windows to its sequence-first RNN (the recurrence then appears to
  run over the batch axis); the recurrence here runs over time, as the paper.
- Fusion is one linear map per layer (TimeSeAD); carrtesy/oksjjj share a 3-layer MLP.
  TimeSeAD trains it with a second Adam of identical settings; one optimizer here is the same.
- k-means runs on an evenly spaced subsample of the training windows (``center_init_windows``)
  and of their steps, layer by layer so that layer l's inputs use the initialised centers of the
  layers below (TimeSeAD: the first 20 shuffled batches, all layers from one pass with random
  centers). The subsample needs no random numbers, so MADCluster on/off see the same init.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from madcluster_exp.backbones.base import Backbone, BackboneOutput
from madcluster_exp.config.schema import BackboneConfig

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
MVDD_LAYERS = ("last", "all")
KMEANS_MAX_POINTS = 20_000
COS_EPS = 1e-8


def dilate(x: torch.Tensor, d: int) -> torch.Tensor:
    """[B, T, H] -> [B * d, ceil(T / d), H]: the d interleaved sub-sequences (steps r, r + d,
    r + 2d, ...) become batch rows, so an ordinary RNN over them recurs from t - d to t. The
    zero padding goes at the end, after every real step: it never reaches an earlier output."""
    b, t, h = x.shape
    pad = -t % d
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    return x.reshape(b, (t + pad) // d, d, h).transpose(1, 2).reshape(b * d, (t + pad) // d, h)


def undilate(y: torch.Tensor, d: int, t: int) -> torch.Tensor:
    """Inverse of :func:`dilate`: [B * d, n, H] -> [B, t, H] (padding dropped)."""
    bd, n, h = y.shape
    return y.reshape(bd // d, d, n, h).transpose(1, 2).reshape(bd // d, n * d, h)[:, :t]


class DilatedRNN(nn.Module):
    """Stack of single-layer RNNs, layer l recurring with skip ``dilations[l]`` (eq. 4)."""

    def __init__(self, n_in: int, hidden: int, dilations: List[int], cell: str):
        super().__init__()
        self.dilations = [int(d) for d in dilations]
        sizes = [n_in] + [hidden] * len(self.dilations)
        self.layers = nn.ModuleList(
            CELLS[cell](sizes[i], hidden, batch_first=True) for i in range(len(self.dilations))
        )

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Every layer's per-step output, each [B, T, H]."""
        outs, h, t = [], x, x.shape[1]
        for rnn, d in zip(self.layers, self.dilations):
            y, _ = rnn(dilate(h, d))
            h = undilate(y, d, t)
            outs.append(h)
        return outs


def _norm(f: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(f, dim=-1).clamp_min(COS_EPS)


def cosine_to_centers(f: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """cos(f_i, c_j) for f [B, T, P, H] and c [K, H] -> [B, T, K, P] (eq. 6). Dividing the
    products by |f_i| costs a [B, T, K, P] division instead of normalising all of f."""
    dots = torch.einsum("btph,kh->btkp", f, F.normalize(c, dim=-1, eps=COS_EPS))
    return dots / _norm(f).unsqueeze(2)


def paired_cosine_distance(f: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """d(f_j, c_j) = 1 - cos(f_j, c_j) for f [B, T, K, H], c [K, H] -> [B, T, K] (eq. 9)."""
    dots = torch.einsum("btkh,kh->btk", f, F.normalize(c, dim=-1, eps=COS_EPS))
    return 1.0 - dots / _norm(f)


def orthogonality(centers: Iterable[torch.Tensor]) -> torch.Tensor:
    """1/L sum_l ||C^l C^l^T - I||_F over the layers' center matrices C^l [K^l, H] (eq. 11)."""
    terms = [
        torch.linalg.matrix_norm(c @ c.T - torch.eye(len(c), dtype=c.dtype, device=c.device))
        for c in centers
    ]
    return torch.stack(terms).mean()


class HierarchicalClustering(nn.Module):
    """Assignment, update, relevance and fusion across the layers (eqs. 5-8, 10)."""

    def __init__(self, hidden: int, clusters: List[int]):
        super().__init__()
        self.clusters = [int(k) for k in clusters]
        # Replaced by k-means at the start of training (on_fit_start); uniform in [-1, 1] as
        # TimeSeAD's initial values until then.
        self.centers = nn.ParameterList(
            nn.Parameter(torch.rand(k, hidden) * 2 - 1) for k in self.clusters
        )
        self.update = nn.ModuleList(nn.Linear(hidden, hidden) for _ in self.clusters)
        self.fuse = nn.ModuleList(nn.Linear(2 * hidden, hidden) for _ in self.clusters[:-1])

    def fused_input(
        self, l: int, p: torch.Tensor, u: torch.Tensor, f_next: torch.Tensor
    ) -> torch.Tensor:
        """f̄^l_j = Linear([f̂^l_j ; f^{l+1}_t]) for every j (eq. 8), with f̂^l_j = sum_i
        p_{j|i} u_i. The map is linear, so its f̂ half is applied to the K^{l-1} updates u_i
        before the mixing (K^{l-1} instead of K^l products; 1 instead of 6 at the first layer),
        and its next-scale half once per step instead of once per cluster."""
        h = u.shape[-1]
        w, b = self.fuse[l].weight, self.fuse[l].bias
        mixed = torch.einsum("btkp,btph->btkh", p, F.linear(u, w[:, :h]))
        return mixed + F.linear(f_next, w[:, h:], b).unsqueeze(2)

    def forward(
        self, feats: List[torch.Tensor], tau: Union[float, torch.Tensor], stop_at: int = -1
    ) -> Dict[str, List[torch.Tensor]]:
        """Per layer l: ``inputs`` f̄^{l-1} [B, T, K^{l-1}, H], ``fused`` f̄^l [B, T, K^l, H]
        and ``relevance`` R^l [B, T, K^l]. ``stop_at=l`` returns once layer l's input exists
        (the k-means initialisation needs no more)."""
        f_bar = feats[0].unsqueeze(2)
        r_prev = None
        out: Dict[str, List[torch.Tensor]] = {"inputs": [], "fused": [], "relevance": []}
        for l, c in enumerate(self.centers):
            out["inputs"].append(f_bar)
            if l == stop_at:
                return out
            p = torch.softmax(cosine_to_centers(f_bar, c) / tau, dim=2)  # [B, T, K, P]
            r_tilde = p[..., 0] if r_prev is None else torch.einsum("btkp,btp->btk", p, r_prev)
            r_prev = torch.softmax(r_tilde, dim=-1)
            u = torch.relu(self.update[l](f_bar))  # [B, T, P, H]
            if l == len(self.centers) - 1:
                f_bar = torch.einsum("btkp,btph->btkh", p, u)  # f̄^L = f̂^L (eq. 7)
            else:
                f_bar = self.fused_input(l, p, u, feats[l + 1])
            out["fused"].append(f_bar)
            out["relevance"].append(r_prev)
        return out


class THOC(Backbone):
    name = "thoc"
    family = "one_class"
    embed_taps = ("drnn", "multiscale", "fused")

    def __init__(self, n_channels: int, cfg: BackboneConfig):
        super().__init__(n_channels, cfg)
        dilations, clusters = list(cfg.dilations), list(cfg.clusters)
        if cfg.cell not in CELLS:
            raise ValueError(f"backbone.cell={cfg.cell!r}: expected one of {', '.join(CELLS)}")
        if cfg.mvdd_layers not in MVDD_LAYERS:
            raise ValueError(
                f"backbone.mvdd_layers={cfg.mvdd_layers!r}: expected one of "
                f"{', '.join(MVDD_LAYERS)}"
            )
        if not dilations or any(int(d) < 1 for d in dilations):
            raise ValueError(
                f"backbone.dilations={dilations}: expected one or more integers "
                ">= 1 (one per layer)"
            )
        if max(dilations) >= self.window:
            raise ValueError(
                f"backbone.dilations={dilations}: the largest skip must be shorter "
                f"than backbone.window={self.window} (its prediction target "
                "lies inside the window)"
            )
        if len(clusters) != len(dilations) or any(int(k) < 1 for k in clusters):
            raise ValueError(
                f"backbone.clusters={clusters}: expected one count >= 1 per layer "
                f"of backbone.dilations={dilations}"
            )
        if not 0.0 < cfg.tau_decay <= 1.0 or cfg.tau <= 0 or cfg.tau_min <= 0:
            raise ValueError(
                f"backbone.tau={cfg.tau}, tau_min={cfg.tau_min}, tau_decay="
                f"{cfg.tau_decay}: expected tau, tau_min > 0 and tau_decay in "
                "(0, 1]"
            )
        hidden = int(cfg.hidden)
        self.dilations = [int(d) for d in dilations]
        self.drnn = DilatedRNN(n_channels, hidden, self.dilations, cfg.cell)
        self.hierarchy = HierarchicalClustering(hidden, clusters)
        self.predict = nn.ModuleList(
            nn.Linear(hidden, n_channels, bias=False) for _ in self.dilations
        )
        self.lambda_orth, self.lambda_tss = float(cfg.lambda_orth), float(cfg.lambda_tss)
        self.mvdd_layers = cfg.mvdd_layers
        self.tau_decay, self.tau_min = float(cfg.tau_decay), float(cfg.tau_min)
        self.tau_decay_epochs = int(cfg.tau_decay_epochs)
        self.init_windows = int(cfg.center_init_windows)
        # A buffer: checkpoints, resume and best-epoch restore carry the annealed value.
        self.register_buffer("tau", torch.tensor(float(cfg.tau)))
        self.embed_dim = hidden * (len(self.dilations) if self.embed_tap == "multiscale" else 1)

    # -- forward, loss, score ------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> BackboneOutput:
        feats = self.drnn(x)
        h = self.hierarchy(feats, self.tau)  # the 0-d buffer: no device-to-host copy per step
        centers = self.hierarchy.centers
        layers = range(len(centers)) if self.mvdd_layers == "all" else [len(centers) - 1]
        dist = sum(
            (h["relevance"][l] * paired_cosine_distance(h["fused"][l], centers[l])).sum(-1)
            for l in layers
        )
        if self.embed_tap == "drnn":
            z = feats[-1]
        elif self.embed_tap == "multiscale":
            z = torch.cat(feats, dim=-1)
        else:
            z = torch.einsum("btk,btkh->bth", h["relevance"][-1], h["fused"][-1])
        return BackboneOutput(z=z, aux={"dist": dist, "feats": torch.stack(feats)})

    def tss_loss(self, x: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Layer l predicts x_{t + s(l)} from f^l_t (eq. 12), mean over layers."""
        terms = [
            F.mse_loss(head(f[:, :-d]), x[:, d:])
            for head, f, d in zip(self.predict, feats, self.dilations)
        ]
        return torch.stack(terms).mean()

    def loss(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        return (
            out.aux["dist"].mean()
            + self.lambda_orth * orthogonality(self.hierarchy.centers)
            + self.lambda_tss * self.tss_loss(x, out.aux["feats"])
        )

    def score(self, x: torch.Tensor, out: BackboneOutput) -> torch.Tensor:
        return out.aux["dist"]

    # -- schedule hooks ------------------------------------------------------------------
    @torch.no_grad()
    def on_fit_start(
        self, train_batches: Callable[[], Iterable[torch.Tensor]], uses_own_objective: bool
    ) -> None:
        """k-means centers per layer, bottom up, on evenly spaced training windows."""
        windows = _evenly_spaced_windows(train_batches, self.init_windows)
        if windows is None:
            return
        was_training = self.training
        self.eval()
        seed = int(torch.initial_seed() % 2**32)  # reads the seed, draws nothing
        steps = windows.shape[0] * windows.shape[1]
        for l, c in enumerate(self.hierarchy.centers):
            # Every `stride`-th assignment input of layer l, chunk by chunk: the inputs of all
            # windows at once ([N, T, K^{l-1}, H]) would not fit in memory on large settings.
            per_step = 1 if l == 0 else self.hierarchy.clusters[l - 1]
            stride = max(1, steps * per_step // KMEANS_MAX_POINTS)
            inputs = torch.cat(
                [
                    self.hierarchy(self.drnn(w), self.tau, stop_at=l)["inputs"][l].reshape(
                        -1, c.shape[1]
                    )[::stride]
                    for w in windows.split(256)
                ]
            )
            c.copy_(kmeans_centers(inputs, len(c), seed).to(c))
        self.train(was_training)

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        if (epoch + 1) % self.tau_decay_epochs == 0:
            self.tau.fill_(max(float(self.tau) * self.tau_decay, self.tau_min))
        return {"backbone/tau": float(self.tau)}


def _evenly_spaced_windows(train_batches: Callable[[], Iterable[torch.Tensor]], n: int):
    """Up to n training windows at evenly spaced positions over the whole training set (two
    passes: count, then pick), without random numbers."""
    total = sum(len(x) for x in train_batches())
    if total == 0:
        return None
    wanted = set(np.linspace(0, total - 1, min(n, total)).round().astype(int).tolist())
    picked, seen = [], 0
    for x in train_batches():
        idx = [i - seen for i in range(seen, seen + len(x)) if i in wanted]
        if idx:
            picked.append(x[idx])
        seen += len(x)
    return torch.cat(picked)


def kmeans_centers(points: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """k centers of ``points`` [N, H] by k-means (scikit-learn, one k-means++ start)."""
    from sklearn.cluster import KMeans  # here: every run imports the backbones, few need it

    sample = points.double().cpu().numpy()
    n_distinct = len(np.unique(sample, axis=0))
    km = KMeans(n_clusters=min(k, n_distinct), n_init=1, random_state=seed).fit(sample)
    centers = torch.from_numpy(km.cluster_centers_)
    if len(centers) < k:  # fewer distinct points than centers (tiny data): repeat them
        centers = centers[torch.arange(k) % len(centers)]
    return centers.float()
