"""MADCluster: a learnable center, a distance mapping and sequence-wise clustering.

The plug-in sees only per-step embeddings z [B, T, f]; it never knows which backbone made them.

- k = 1 (:class:`MADCluster`): center c (He-normal init), q = (1 + cos(h, c)) / 2, OD loss with a
  learnable threshold nu kept inside (0, 1) by construction (a bounded sigmoid of a free
  parameter), trained by its own optimizer.
- k > 1 (:class:`MultiMADCluster`): k centers, Student-t assignment, DEC target, KL loss;
  the loss maps every step to all k centers (appendix eq. 27), the score to the nearest:
  score = KL_t + distance to the nearest center.

Distance mapping: one-class ||h - c||^2, or soft-boundary R^2 + (1/nu_R) max(0, ||h - c||^2 - R^2)
with R refitted each epoch as the (1 - nu_R)-quantile of ||h - c|| over *training* embeddings.
Total plug-in loss as in the reference: log(mean_batch sum_t (mapping_t + cluster_t) + 1e-8).
Score: clustering term + ||h - c||^2 under either objective (method.md section 1): the
soft-boundary mapping is a loss, flat (= R^2) inside the radius, so as a score it would rank
every step inside R alike.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Optional

import torch
from torch import nn

from madcluster_exp.config.schema import MADClusterConfig
from madcluster_exp.madcluster import fast, losses
from madcluster_exp.utils.nn import QuantileSample, radius_due

# nu lives in [NU_MARGIN, 1 - NU_MARGIN] whatever its raw parameter does: at nu = 1 the slope of
# f1 is 0/0, and a plain sigmoid rounds to exactly 1.0 in float32 once its input passes ~17.
NU_MARGIN = 1e-4


def he_normal(shape, fan_in: int, generator: torch.Generator) -> torch.Tensor:
    """He-normal init (std sqrt(2 / fan_in)), drawn from a private generator so that turning the
    plug-in on never changes the backbone's initialisation or the data order."""
    return torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_in)


class _PluginBase(nn.Module):
    """Distance mapping, radius fitting and loss assembly shared by k = 1 and k > 1."""

    def __init__(self, embed_dim: int, cfg: MADClusterConfig):
        super().__init__()
        self.embed_dim = embed_dim
        self.objective = cfg.objective
        self.nu_r = float(cfg.nu_r)
        self.radius_warmup_epochs = int(cfg.radius_warmup_epochs)
        self.register_buffer("radius", torch.zeros(()))
        self._dist_sample = QuantileSample()
        # The paper's component ablation: distance mapping only, clustering only, or both.
        self.use_mapping = cfg.components in ("both", "mapping")
        self.use_cluster = cfg.components in ("both", "clustering")
        self.compile = bool(getattr(cfg, "compile", False))
        self._compiled_loss = None  # built on the first training step with compile=true
        self.variant, self.k = cfg.variant, int(cfg.k)

    # -- pieces the subclasses provide ----------------------------------------------------
    def terms(self, z: torch.Tensor):
        """(squared distance to the nearest center, clustering term), each [B, T], sharing
        the work both need."""  # pragma: no cover - abstract
        raise NotImplementedError

    def cluster_terms(self, z: torch.Tensor) -> torch.Tensor:
        return self.terms(z)[1]

    def nu_parameters(self) -> Iterable[nn.Parameter]:
        return []

    def center_parameters(self) -> Iterable[nn.Parameter]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------
    def mapping_terms(self, dist2: torch.Tensor) -> torch.Tensor:
        """Per-step distance mapping [B, T] from squared distances [B, T]."""
        return losses.distance_mapping(dist2, self._radius2(), self.nu_r)

    def _radius2(self) -> Optional[torch.Tensor]:
        return None if self.objective == "one-class" else self.radius**2

    def loss(self, z: torch.Tensor) -> Dict[str, torch.Tensor]:
        """mapping and cluster (mean over the batch of per-window sums) and the total term;
        the composition through ``torch.compile`` while training with ``madcluster.compile``."""
        if self.compile and self.training and torch.is_grad_enabled():
            if self._compiled_loss is None:
                self._compiled_loss = torch.compile(self._composed_loss)
            return self._compiled_loss(z)
        return self._loss(z)

    def _loss(self, z: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The eager loss: the composition, unless a subclass has a fused op for it."""
        return self._composed_loss(z)

    def _fast_path(self, z: torch.Tensor) -> bool:
        """Whether this embedding takes the compiled op; the rule is
        :func:`madcluster_exp.madcluster.fast.use_fast_path`, asked by every path."""
        return fast.use_fast_path(z, self.variant, self.k)

    def _samples_distances(self) -> bool:
        return self.training and self.objective == "soft-boundary"  # only R needs the sample

    def _record_distances(self, dist2: torch.Tensor) -> None:
        if self._samples_distances():
            self._dist_sample.add(dist2.sqrt())

    def _composed_loss(self, z: torch.Tensor) -> Dict[str, torch.Tensor]:
        dist2, cluster_t = self.terms(z)
        self._record_distances(dist2)
        return self._assemble(self.mapping_terms(dist2).sum(dim=1), cluster_t.sum(dim=1))

    def _assemble(self, mapping: torch.Tensor, cluster: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The loss dict from per-window mapping and cluster sums, each [B]."""
        used = mapping * self.use_mapping + cluster * self.use_cluster
        total = torch.log(used.mean() + 1e-8)
        return {"mapping": mapping.mean(), "cluster": cluster.mean(), "total": total}

    def reference_criterion(self, losses: Dict[str, torch.Tensor], z: torch.Tensor):
        """The plug-in's part of the MADCluster reference solver's validation criterion for one
        batch, from this batch's :meth:`loss`: the mean of the mapping terms over its [B, T, k]
        elements plus the sum of the cluster terms over all of them (``mapping_loss.mean()``
        and ``cluster_loss.sum()`` in its ``validation``), each where its component is on."""
        batch, steps = z.shape[0], z.shape[1]
        mapping = losses["mapping"] / (steps * self.k)  # per-window sums over T (and k)
        cluster = losses["cluster"] * batch  # mean over windows of per-window sums
        return mapping * self.use_mapping + cluster * self.use_cluster

    def score(self, z: torch.Tensor) -> torch.Tensor:
        """Per-step anomaly score [B, T]: clustering term plus ||h - c||^2 (each only when its
        component is enabled). The squared distance itself, not the soft-boundary mapping,
        which is constant inside R."""
        dist2, cluster = self.terms(z)
        score = torch.zeros_like(dist2)
        if self.use_cluster:
            score = score + cluster
        if self.use_mapping:
            score = score + dist2
        return score

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        """Refit R from this epoch's training distances (soft-boundary); report the state."""
        if self.objective == "soft-boundary" and radius_due(epoch, self.radius_warmup_epochs):
            r = self._dist_sample.quantile(1.0 - self.nu_r)
            if r is not None:
                self.radius.fill_(r)
        self._dist_sample.reset()
        return (
            {"madcluster/radius": float(self.radius)} if self.objective == "soft-boundary" else {}
        )


class MADCluster(_PluginBase):
    """k = 1: cosine assignment and the One-directed Adaptive loss with a learnable nu."""

    def __init__(self, embed_dim: int, cfg: MADClusterConfig, generator: torch.Generator):
        super().__init__(embed_dim, cfg)
        self.tau = float(cfg.tau)
        self.center = nn.Parameter(he_normal((embed_dim,), embed_dim, generator))
        nu0 = float(cfg.nu_init)
        if self.variant == "reference":
            # The official code trains nu itself, unconstrained.
            self.nu_raw = nn.Parameter(torch.tensor(nu0))
        else:
            # Inverse of the bounded sigmoid, so nu starts exactly at nu_init.
            s = (nu0 - NU_MARGIN) / (1.0 - 2.0 * NU_MARGIN)
            self.nu_raw = nn.Parameter(torch.tensor(math.log(s / (1.0 - s))))

    def nu_and_complement(self):
        """(nu, 1 - nu), each computed directly so neither loses precision near the bounds."""
        if self.variant == "reference":
            return self.nu_raw, 1.0 - self.nu_raw
        return losses.bounded_nu(self.nu_raw, NU_MARGIN)

    @property
    def nu(self) -> torch.Tensor:
        return self.nu_and_complement()[0]

    def nu_parameters(self):
        return [self.nu_raw]

    def center_parameters(self):
        return [self.center]

    def terms(self, z: torch.Tensor):
        if not self._tracks_grad(z) and self._fast_path(z):
            return fast.paper_terms(z, self.center, self.nu_raw, self.tau, NU_MARGIN)
        u, reps = fast.distinct_steps(z)
        if reps > 1:
            # A per-window code broadcast over time (e.g. USAD's latent): every step is the
            # same, so compute the distinct steps once and broadcast the result.
            dist2, cluster = self.terms(u)
            return dist2.expand(z.shape[:-1]), cluster.expand(z.shape[:-1])
        # One pass over z for both: z.c and |z|^2 give the cosine and |z - c|^2 alike.
        c = self.center
        zc, zz = fast.dot_and_squared_norm(z, c)  # memory order, no copy
        cc = torch.dot(c, c)
        dist2 = losses.distance_from_dot(zc, zz, cc)
        q = losses.cosine_from_dot(zc, zz, cc)
        if self.variant == "reference":
            return dist2, losses.reference_loss_terms(q, self.nu_raw, self.tau)
        nu, omn = self.nu_and_complement()
        return dist2, losses.od_loss_terms(q, nu, omn, self.tau)

    def _tracks_grad(self, z: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (
            z.requires_grad or self.center.requires_grad or self.nu_raw.requires_grad
        )

    def _loss(self, z: torch.Tensor) -> Dict[str, torch.Tensor]:
        if not self._fast_path(z):
            return self._composed_loss(z)
        # The whole paper objective as one op (same values and gradients as the composition,
        # tested): on a small backbone the composition's dispatches cost more than its math.
        sample = self._samples_distances()
        total, mapping, cluster, dist2 = fast.paper_loss(
            z,
            self.center,
            self.nu_raw,
            self.tau,
            NU_MARGIN,
            self._radius2(),
            self.nu_r,
            self.use_mapping,
            self.use_cluster,
            distances=sample,
        )
        if sample:
            self._dist_sample.add(dist2.sqrt())
        return {"mapping": mapping, "cluster": cluster, "total": total}

    def score(self, z: torch.Tensor) -> torch.Tensor:
        if self.variant == "reference":
            # One number per window (mean over steps of the cluster loss), as the official code.
            per_window = self.terms(z)[1].mean(dim=1, keepdim=True)
            return per_window.expand(z.shape[0], z.shape[1])
        return super().score(z)

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        logs = super().on_epoch_end(epoch)
        logs["madcluster/threshold"] = float(self.nu.detach())
        return logs


class MultiMADCluster(_PluginBase):
    """k > 1 (appendix eqs. 25-28): Student-t assignment, DEC target, KL loss; nu unused.

    Loss: the mapping sums over all k centers, sum_t sum_j ||h_t - c_j||^2 (eq. 27; the
    official code reduces its [B, T, k] distances the same way), in both variants; the score
    uses the nearest center only (eq. 28). Soft-boundary: one radius per center, each the
    (1 - nu_R)-quantile of every training embedding's distance to that center (the official
    ``get_radius``, per cluster). The DEC target's cluster frequencies are per window (the
    paper); ``variant=reference`` takes them over the batch's windows and steps and leaves the
    target attached to the graph, as the official code.
    """

    def __init__(self, embed_dim: int, cfg: MADClusterConfig, generator: torch.Generator):
        super().__init__(embed_dim, cfg)
        self.centers = nn.Parameter(he_normal((self.k, embed_dim), embed_dim, generator))
        self.register_buffer("radius", torch.zeros(self.k))
        self._dist_samples = [QuantileSample() for _ in range(self.k)]

    def center_parameters(self):
        return [self.centers]

    def _target(self, q: torch.Tensor) -> torch.Tensor:
        reference = self.variant == "reference"
        return losses.dec_target(q, over_batch=reference, detach=not reference)

    def assignment_and_target(self, z: torch.Tensor):
        q = losses.student_t_assignment(losses.squared_distance(z, self.centers))
        return q, self._target(q)

    def distances_and_cluster(self, z: torch.Tensor):
        """(squared distance of every step to every center [B, T, k], KL term [B, T])."""
        d = losses.squared_distance(z, self.centers)  # once, for both terms
        q = losses.student_t_assignment(d)
        return d, losses.kl_terms(self._target(q), q)

    def terms(self, z: torch.Tensor):
        d, cluster = self.distances_and_cluster(z)
        return d.min(dim=-1).values, cluster

    def _composed_loss(self, z: torch.Tensor) -> Dict[str, torch.Tensor]:
        d, cluster_t = self.distances_and_cluster(z)
        if self._samples_distances():
            for j, sample in enumerate(self._dist_samples):
                sample.add(d[..., j].sqrt())
        mapping = losses.distance_mapping(d, self._radius2(), self.nu_r).sum(dim=(1, 2))
        return self._assemble(mapping, cluster_t.sum(dim=1))

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        """Refit each center's R from this epoch's training distances (soft-boundary)."""
        soft = self.objective == "soft-boundary"
        if soft and radius_due(epoch, self.radius_warmup_epochs):
            for j, sample in enumerate(self._dist_samples):
                r = sample.quantile(1.0 - self.nu_r)
                if r is not None:
                    self.radius[j] = r
        for sample in self._dist_samples:
            sample.reset()
        return (
            {f"madcluster/radius_{j}": float(r) for j, r in enumerate(self.radius)} if soft else {}
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Models saved before the per-center radii kept one shared radius.
        key = prefix + "radius"
        if key in state_dict and state_dict[key].dim() == 0:
            state_dict[key] = state_dict[key].expand(self.k).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def build_plugin(embed_dim: int, cfg: MADClusterConfig, seed: int) -> Optional[_PluginBase]:
    """The configured plug-in, or None with ``madcluster=off``."""
    if not cfg.enabled:
        return None
    generator = torch.Generator().manual_seed(seed + 7919)
    if cfg.k == 1:
        return MADCluster(embed_dim, cfg, generator)
    return MultiMADCluster(embed_dim, cfg, generator)
