"""Dataclass schemas for every config group (registered in Hydra's ConfigStore by store.py).

Each YAML option under ``conf/<group>/`` starts from one of these schemas
(``defaults: [<schema>]``), so a misspelt key fails at composition with Hydra's own message
instead of being silently ignored. A closed choice is an Enum-typed field (a :class:`Choice`),
so a value outside it fails at composition too, with a message naming the key and the allowed
values. What a type cannot express (ranges, cross-field rules) is checked by :func:`validate`
before any work starts, with a message naming the key and the expected values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Union

from omegaconf import MISSING


# ------------------------------------------------------------------------------ closed choices
class Choice(enum.StrEnum):
    """A closed set of values for one config key.

    OmegaConf checks a value against the members when the config is composed, converting a
    string by member *name*, so every member is named by its value. A member is its plain
    string everywhere else (``==``, hashing, ``str()``, JSON, MLflow params, run names), and
    its repr is the string's, so messages read ``'point'`` rather than ``<Protocol.point>``.
    """

    def __repr__(self) -> str:
        return repr(self.value)


def _choice(name: str, *values: str) -> type[Choice]:
    """A :class:`Choice` whose members are ``values`` (dashes allowed), named by their value."""
    return Choice(name, [(v, v) for v in values], module=__name__, qualname=name)


Device = _choice("Device", "cpu", "cuda", "auto")
Protocol = _choice("Protocol", "point", "reference", "tsbad")
Normalize = _choice("Normalize", "standard", "minmax", "none")
DatasetMode = _choice("DatasetMode", "concat", "per_entity")
NanPolicy = _choice("NanPolicy", "error", "zero")
TestPart = _choice("TestPart", "rest", "whole")
# Deep SVDD's objective and the plug-in's distance mapping: one-class | soft-boundary
Objective = _choice("Objective", "one-class", "soft-boundary")
Variant = _choice("Variant", "paper", "reference")
Components = _choice("Components", "both", "mapping", "clustering")
Combine = _choice("Combine", "sum", "product", "madcluster_only", "backbone_only")
ProgressMode = _choice("ProgressMode", "auto", "bar", "line", "none")
Init = _choice("Init", "default", "he")
Aggregate = _choice("Aggregate", "mean", "max")
ThresholdKind = _choice("ThresholdKind", "val_percentile", "pot", "spot", "transductive", "oracle")
TrackingBackend = _choice("TrackingBackend", "mlflow", "none")
MetricsDefinition = _choice("MetricsDefinition", "vus006", "tsbad")
Spread = _choice("Spread", "center", "last", "all")
KNNMethod = _choice("KNNMethod", "largest", "mean")
KNNAlgorithm = _choice("KNNAlgorithm", "auto", "brute", "kd_tree", "ball_tree")
ChannelReduce = _choice("ChannelReduce", "mean", "max")
# What the model is validated (and early-stopped) on: the tail of each training series, or the
# test split as the MADCluster reference code does (the reference pipeline only).
Validation = _choice("Validation", "train_tail", "test")
# Early stopping's criterion: the training objective on validation windows, or the MADCluster
# reference solver's sum (backbone loss + mapping mean + cluster sum, mean over batches).
StopCriterion = _choice("StopCriterion", "objective", "reference")
# Which of the paper's two pipelines a run is (setup=paper | setup=paper_honest); a label that
# the checks hold to what the run does with test data.
Pipeline = _choice("Pipeline", "reference", "honest")


#: Anomaly kinds ``search.inject.kinds`` may name (data/inject.py plants them).
INJECTED_KINDS = ("spike", "level_shift", "contextual", "collective")


# --------------------------------------------------------------------------------------- paths
@dataclass
class PathsConfig:
    # None -> the directory the command was started from (Hydra's original cwd).
    root_dir: Optional[str] = None
    # Relative paths are resolved against root_dir.
    output_dir: str = "outputs"
    data_dir: str = "datasets"


# ------------------------------------------------------------------------------------- dataset
@dataclass
class DatasetConfig:
    name: str = MISSING
    # standard (z-score) | minmax | none; statistics come from the training part only.
    normalize: Normalize = Normalize.standard
    # Validation = this fraction at the tail of the training series, after a one-window gap.
    val_fraction: float = 0.2
    # train_tail: validation (early stopping, the score combiner, thresholds) is the tail of
    # each training series (val_fraction, after a one-window gap), the scaler is fitted on the
    # rest. test: the MADCluster reference code's -- the model trains on 100 % of each training
    # series (the scaler fitted on all of it) and validates and early-stops on the TEST split,
    # which the run unseals before training; logged "validates on test". Only with
    # protocol=reference (the reference pipeline, setup=paper), never a default.
    validation: Validation = Validation.train_tail
    # Stride between training windows (1 = every window).
    train_stride: int = 1
    # Entities to keep (None = all).
    entities: Optional[List[str]] = None
    # concat: one model over all entities (windows never cross entities);
    # per_entity: one model per entity in one run, metrics per entity + mean + pooled.
    mode: DatasetMode = DatasetMode.concat
    # Folder of the dataset (None = <paths.data_dir>/<name>); relative to the launch directory.
    path: Optional[str] = None
    # Missing or infinite cells: error (name file, row, column) | zero (fill with 0, counted).
    nan_policy: NanPolicy = NanPolicy.error
    # Debugging caps for any dataset (debug=fast): the first N entities (after `entities`), and
    # the first N training and N test rows of each. None = no cap.
    max_entities: Optional[int] = None
    max_length: Optional[int] = None


@dataclass
class SyntheticDatasetConfig(DatasetConfig):
    SCHEMA: ClassVar[str] = "synthetic"
    name: str = "synthetic"
    n_entities: int = 3
    n_channels: int = 8
    train_length: int = 3000
    test_length: int = 3000
    # Fraction of test points inside planted anomalies (approximate, never exceeded by > 1 event).
    anomaly_ratio: float = 0.05
    noise: float = 0.1
    # The data seed is independent of the training seed: seeds vary the model, not the benchmark.
    seed: int = 0


@dataclass
class SMDConfig(DatasetConfig):
    SCHEMA: ClassVar[str] = "SMD"
    name: str = "SMD"


@dataclass
class TelemanomConfig(DatasetConfig):
    SCHEMA: ClassVar[str] = "telemanom"
    # MSL or SMAP: the spacecraft column of labeled_anomalies.csv.
    name: str = MISSING
    # Channels to leave out (e.g. to match a published channel count).
    exclude: List[str] = field(default_factory=list)


@dataclass
class PSMConfig(DatasetConfig):
    SCHEMA: ClassVar[str] = "PSM"
    name: str = "PSM"
    # The published train.csv has missing cells; the reference code fills them with 0.
    nan_policy: NanPolicy = NanPolicy.zero


@dataclass
class CSVDatasetConfig(DatasetConfig):
    SCHEMA: ClassVar[str] = "csv"
    name: str = "csv"
    # TimeEval format: timestamp, features..., is_anomaly. `path` is the test file (or the only
    # file); `train_path` a separate training file (its labels are never used).
    path: Optional[str] = MISSING
    train_path: Optional[str] = None
    # With a single file: the leading fraction used for training (its labels are ignored).
    train_fraction: float = 0.5
    label_column: str = "is_anomaly"


@dataclass
class CollectionDatasetConfig(DatasetConfig):
    SCHEMA: ClassVar[str] = "collection"
    name: str = "collection"
    # A folder of series files (TSB-AD CSV, UCR .txt, TimeEval CSV [+ <name>.train.csv]); each
    # file is one entity with its own model and its own MLflow child run (data/collection.py).
    path: Optional[str] = MISSING
    mode: DatasetMode = DatasetMode.per_entity
    # Test part: rest (rows after the training prefix; never overlaps training) | whole (the
    # whole series, TSB-AD's published protocol, which also scores the training prefix).
    test_part: TestPart = TestPart.rest
    # TimeEval files without a <name>.train.csv beside them: the leading fraction trains.
    train_fraction: float = 0.5


# ------------------------------------------------------------------------------------ backbone
@dataclass
class BackboneConfig:
    name: str = MISSING
    # one_class | reconstruction | transformer | hybrid (documentation + MLflow tag)
    family: str = MISSING
    window: int = 64
    # Which per-step representation MADCluster taps; each backbone lists its choices.
    embed_tap: str = MISSING
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    # Per-epoch multiplicative learning-rate factor (None = constant): the learning rate of
    # (0-based) epoch e is lr * lr_decay ** max(0, e - lr_decay_delay). The MADCluster reference
    # uses LambdaLR(0.9 ** epoch) (decay 0.9, delay 0); the Anomaly Transformer and DCdetector
    # references halve it after every epoch from their second on (decay 0.5, delay 1). The plug-in's
    # nu keeps its constant learning rate (its own optimizer has no scheduler in the reference).
    lr_decay: Optional[float] = None
    lr_decay_delay: int = 0


@dataclass
class DeepSVDDConfig(BackboneConfig):
    SCHEMA: ClassVar[str] = "deepsvdd"
    name: str = "deepsvdd"
    family: str = "one_class"
    embed_tap: str = "encoder"
    hidden: int = 64
    embed_dim: int = 32
    kernel_size: int = 5
    layers: int = 2
    objective: Objective = Objective["one-class"]
    # Soft-boundary nu (fraction of training embeddings allowed outside the radius).
    nu: float = 0.1
    # Soft-boundary: complete epochs trained before the radius is first fitted (Deep SVDD's
    # warm-up; the rule is radius_due in madcluster_exp/utils/nn.py, shared with the plug-in).
    radius_warmup_epochs: int = 0
    weight_decay: float = 1e-6


@dataclass
class LSTMAEConfig(BackboneConfig):
    SCHEMA: ClassVar[str] = "lstm_ae"
    name: str = "lstm_ae"
    family: str = "reconstruction"
    embed_tap: str = "encoder"
    window: int = 100
    hidden: int = 64
    layers: int = 1


@dataclass
class USADConfig(BackboneConfig):
    SCHEMA: ClassVar[str] = "usad"
    name: str = "usad"
    family: str = "reconstruction"
    embed_tap: str = "latent"
    window: int = 12
    # Latent size per window step: the code has window * hidden units, as the reference notebook
    # (z_size = window_size * hidden_size, hidden_size = 100).
    hidden: int = 100
    alpha: float = 0.5
    beta: float = 0.5


@dataclass
class AnomalyTransformerConfig(BackboneConfig):
    SCHEMA: ClassVar[str] = "anomaly_transformer"
    name: str = "anomaly_transformer"
    family: str = "transformer"
    embed_tap: str = "encoder"
    window: int = 100
    d_model: int = 512
    n_heads: int = 8
    layers: int = 3
    d_ff: int = 512
    dropout: float = 0.0
    # lambda of the minimax association-discrepancy term
    k: float = 3.0
    temperature: float = 50.0
    lr: float = 1e-4
    batch_size: int = 256
    # The reference (thuml/Anomaly-Transformer solver.py, adjust_learning_rate after each epoch)
    # halves the learning rate after every epoch from the second on.
    lr_decay: Optional[float] = 0.5
    lr_decay_delay: int = 1


@dataclass
class DCdetectorConfig(BackboneConfig):
    SCHEMA: ClassVar[str] = "dcdetector"
    name: str = "dcdetector"
    family: str = "transformer"
    embed_tap: str = "patch_attention"
    window: int = 100
    d_model: int = 256
    n_heads: int = 1
    layers: int = 3
    patch_sizes: List[int] = field(default_factory=lambda: [2, 5, 10])
    dropout: float = 0.0
    temperature: float = 50.0
    # Instance normalisation of each window (non-affine, as the original).
    revin: bool = True
    lr: float = 1e-4
    batch_size: int = 128


@dataclass
class SLMRConfig(BackboneConfig):
    SCHEMA: ClassVar[str] = "slmr"
    name: str = "slmr"
    family: str = "hybrid"
    embed_tap: str = "se"
    # Lookback L (must be even: the window is split into even and odd steps).
    window: int = 10
    # Res2Net block: 1x1 conv to groups * width channels, split into `scales` chunks.
    groups: int = 6
    width: int = 150
    scales: int = 5
    kernels: List[int] = field(default_factory=lambda: [1, 3, 5, 7])
    dilation: int = 1
    se_reduction: int = 16
    gru_hidden: int = 150
    dropout: float = 0.3
    gamma: float = 0.8
    mask_ratio: float = 0.03
    mask_mean_run: float = 3.0
    # Columns the forecast and reconstruction heads model, and so the columns the score reads
    # (null = every column; the encoder always reads every column). Default as the reference
    # code (utils.get_target_dims): reference_targets[dataset.name] where listed, else every column.
    target_channels: Optional[List[int]] = "${oc.select:.reference_targets.${dataset.name},null}"  # type: ignore[assignment]
    # The reference's targets per dataset: column 0, the telemetry value, on MSL and SMAP (their
    # other columns are one-hot command flags).
    reference_targets: Dict[str, List[int]] = field(
        default_factory=lambda: {"MSL": [0], "SMAP": [0]}
    )
    lr: float = 1e-3
    batch_size: int = 256


@dataclass
class THOCConfig(BackboneConfig):
    SCHEMA: ClassVar[str] = "thoc"
    name: str = "thoc"
    family: str = "one_class"
    # drnn (top dilated-RNN layer) | multiscale (all layers concatenated) | fused (THOC's
    # relevance-weighted top fused feature); see madcluster_exp/backbones/thoc.py.
    embed_tap: str = "drnn"
    # The paper's window (TimeSeAD uses 64).
    window: int = 100
    # Recurrent cell of the dilated RNN: lstm (TimeSeAD) | gru | rnn
    cell: str = "lstm"
    # TimeSeAD uses 128; 32 keeps the default synthetic run at minutes on CPU (the clustering
    # costs sum_l K^{l-1} H^2 per step on top of the RNN). backbone.hidden=128 for the reference.
    hidden: int = 32
    # Skip length of each layer's recurrence (one entry per layer).
    dilations: List[int] = field(default_factory=lambda: [1, 2, 4])
    # Hypersphere centers per layer (one entry per layer).
    clusters: List[int] = field(default_factory=lambda: [6, 6, 6])
    # Assignment temperature; multiplied by tau_decay every tau_decay_epochs, floored at tau_min.
    tau: float = 1.0
    tau_decay: float = 2 / 3
    tau_decay_epochs: int = 5
    tau_min: float = 1 / 300
    lambda_orth: float = 1.0
    lambda_tss: float = 10.0
    # Layers whose fused distances form the loss and score: last (the paper) | all
    mvdd_layers: str = "last"
    # Training windows (evenly spaced) whose features seed the k-means centers.
    center_init_windows: int = 2560
    weight_decay: float = 1e-6


@dataclass
class OmniAnomalyConfig(BackboneConfig):
    SCHEMA: ClassVar[str] = "omnianomaly"
    # Reference: NetManAIOps/OmniAnomaly main.py ExpConfig (commit 7fb0e0a).
    name: str = "omnianomaly"
    family: str = "reconstruction"
    embed_tap: str = "encoder"
    window: int = 100
    z_dim: int = 3
    # GRU units of the q-net and the p-net, and the width of the linear layers after each GRU.
    # The code's 500 costs ~40x more GRU work; 64 keeps the default run short (setup=paper: 172).
    rnn_hidden: int = 64
    dense_dim: int = 64
    dense_layers: int = 2
    # Planar normalizing-flow layers on the posterior (0 = none, the code's flow type None)
    nf_layers: int = 20
    # Floor added to every softplus standard deviation
    std_epsilon: float = 1e-4
    # Per-tensor gradient clip by norm (tf.clip_by_norm); null = none
    grad_clip_norm: Optional[float] = 10.0
    lr: float = 1e-3
    batch_size: int = 50


@dataclass
class BeatGANConfig(BackboneConfig):
    SCHEMA: ClassVar[str] = "beatgan"
    name: str = "beatgan"
    family: str = "reconstruction"
    # latent (encoder code, broadcast to every step) | decoder (last hidden decoder map per step)
    embed_tap: str = "latent"
    # The MADCluster paper's T; the reference's ECG beats are 320 long.
    window: int = 100
    # Size of the latent code (reference nz).
    latent: int = 50
    # Filters of the first encoder / discriminator conv (ndf) and of the last decoder block
    # (ngf); each strided layer doubles them.
    ndf: int = 32
    ngf: int = 32
    # Strided (kernel 4, stride 2) conv layers; the window must be >= 2^layers.
    layers: int = 5
    # Weight of the feature-matching adversarial term in the generator's loss.
    w_adv: float = 1.0
    # tanh (reference, for data scaled to [-1, 1]) | identity
    output_activation: str = "tanh"
    # Adam's beta1 for both networks (beta2 = 0.999).
    beta1: float = 0.5
    # Re-initialise the discriminator when its loss falls below this (None = never).
    d_reinit_below: Optional[float] = 5e-6
    lr: float = 1e-4
    batch_size: int = 64


# ----------------------------------------------------------------------- classical detectors
@dataclass
class ClassicalConfig:
    """Detectors fitted once on training windows (madcluster_exp/classical), no training loop."""

    name: str = MISSING
    family: str = "classical"
    window: int = 64
    # How one score per window reaches the points: center (the window's middle point, edges
    # padded with the nearest score, as TSB-AD) | last (its last point) | all (every point of
    # the window, overlaps folded by scoring.aggregate).
    spread: Spread = Spread.center


@dataclass
class KNNConfig(ClassicalConfig):
    SCHEMA: ClassVar[str] = "knn"
    name: str = "knn"
    # pyod's KNN defaults: the distance to the 5th nearest training window.
    n_neighbors: int = 5
    # largest (k-th distance) | mean (of the k distances)
    method: KNNMethod = KNNMethod.largest
    # scikit-learn's index, every choice exact: auto | brute | kd_tree | ball_tree
    algorithm: KNNAlgorithm = KNNAlgorithm.auto


@dataclass
class IForestConfig(ClassicalConfig):
    SCHEMA: ClassVar[str] = "iforest"
    name: str = "iforest"
    n_estimators: int = 100
    # Windows per tree (None = scikit-learn's auto: min(256, n)).
    max_samples: Optional[int] = None


@dataclass
class PCAConfig(ClassicalConfig):
    SCHEMA: ClassVar[str] = "pca"
    name: str = "pca"
    # < 1: the fraction of training variance kept; >= 1: the number of components.
    n_components: float = 0.95


@dataclass
class MatrixProfileConfig(ClassicalConfig):
    SCHEMA: ClassVar[str] = "matrix_profile"
    name: str = "matrix_profile"
    # z-normalised subsequence distances (stumpy's default) or plain Euclidean ones.
    normalize: bool = True
    # How per-channel discord distances become one: mean | max
    channels: ChannelReduce = ChannelReduce.mean


@dataclass
class RandomConfig(ClassicalConfig):
    SCHEMA: ClassVar[str] = "random"
    name: str = "random"


@dataclass
class ConstantConfig(ClassicalConfig):
    SCHEMA: ClassVar[str] = "constant"
    name: str = "constant"
    value: float = 0.0


# ---------------------------------------------------------------------------------- madcluster
@dataclass
class MADClusterConfig:
    enabled: bool = True
    # 1 = cosine assignment + OD loss with learnable nu; >1 = Student-t assignment + DEC target.
    k: int = 1
    # paper (default) | reference (the official code's: k = 1 loss and per-window score; k > 1
    # DEC target over the whole batch, attached to the graph)
    variant: Variant = Variant.paper
    # Distance mapping: one-class | soft-boundary
    objective: Objective = Objective["one-class"]
    nu_init: float = 0.5
    # Label smoothing of the hard target p = 1[q >= nu].
    tau: float = 0.01
    # Soft-boundary: R is the (1 - nu_r)-quantile of ||h - c|| over training embeddings.
    nu_r: float = 0.01
    # Soft-boundary: complete epochs trained before R is first fitted (the same rule as Deep
    # SVDD's backbone.radius_warmup_epochs: radius_due in madcluster_exp/utils/nn.py).
    radius_warmup_epochs: int = 0
    # Learning rate of nu's own parameter group (None = the backbone's lr, as in the reference).
    nu_lr: Optional[float] = None
    # Ablation of the plug-in's parts (loss and score): both | mapping | clustering. The
    # paper's "distance only" row is the backbone alone (madcluster=off), not mapping: see
    # docs/method.md; mapping is refused where the plug-in replaces the objective (Deep SVDD).
    components: Components = Components.both
    # torch.compile the plug-in's training loss (one fused kernel per direction instead of ~100
    # small ops): worth it on a GPU, where small ops are launch-bound; costs seconds of
    # compilation at start and needs a C++ compiler on CPU (Triton on CUDA).
    compile: bool = False


# --------------------------------------------------------------------------------------- train
@dataclass
class TrainConfig:
    epochs: int = 10
    # Early stopping on the validation loss; None disables it.
    patience: Optional[int] = 3
    min_delta: float = 0.0
    # Restore the weights of the best validation epoch before scoring (false: the last epoch's
    # weights are tested, as the MADCluster reference code does).
    restore_best: bool = True
    # What early stopping reads: objective (the training objective's mean over validation
    # windows) | reference (the MADCluster reference solver's valid_total_loss: per validation
    # batch, the backbone loss + the mean mapping term + the summed cluster terms of the batch,
    # averaged over batches; strict improvement by more than min_delta, no tie or flat-loss
    # rule, a NaN stops training). Logged as val/criterion_reference.
    stop_criterion: StopCriterion = StopCriterion.objective
    grad_clip: Optional[float] = None
    # Adam's fused kernel (one op per step for all parameters; CPU and CUDA): ~10 % faster steps
    # on small backbones. false = torch's per-parameter loop (rounding differs in the last bits).
    fused_optimizer: bool = True
    # AMSGrad on the backbone's optimizer(s) (the MADCluster reference: Adam(amsgrad=True)).
    # The plug-in's nu is always trained with AMSGrad, as in the reference.
    amsgrad: bool = False
    # Weight initialisation of the backbone after it is built. default: each layer's own PyTorch
    # init | he: He-normal (Kaiming, fan_in, ReLU gain: std sqrt(2 / fan_in)) on every Linear,
    # Conv2d and Conv3d weight, zero biases, as the MADCluster reference's he_init_normal. 1-D and
    # transposed convs, RNNs, norms, layers a backbone initialises as its reference does
    # (utils.nn.keep_own_init) and the plug-in's center (He-normal anyway) keep their init.
    init: Init = Init.default
    # Cap on batches per epoch (debugging); None = all.
    max_batches_per_epoch: Optional[int] = None
    # torch threads; None = leave torch's default.
    num_threads: Optional[int] = None
    # auto (bar on a terminal, a line per epoch otherwise) | bar | line | none
    progress: ProgressMode = ProgressMode.auto
    # Mixed precision (bf16 autocast) for training steps; CUDA only, ignored with a warning on CPU.
    amp: bool = False
    # Write an atomic checkpoint after every epoch (<run dir>/checkpoints/).
    checkpoint: bool = True
    # true: continue from the checkpoint in the run directory if there is one (re-run the command
    # with hydra.run.dir=<that directory>, what Ctrl-C prints); false: start over; last: continue
    # the newest run of this same configuration (seed included; train.epochs may grow) under
    # <paths.output_dir>/runs that did not finish and has a checkpoint, found by run_info.json.
    resume: Union[bool, str] = True


# ------------------------------------------------------------------------------------- scoring
@dataclass
class ScoringConfig:
    # Stride between scored windows; every point is covered, the tail by an end-aligned window.
    stride: int = 1
    # How overlapping window scores become one score per point: mean | max
    aggregate: Aggregate = Aggregate.mean
    batch_size: int = 512
    # How the plug-in score meets the backbone score:
    # sum (of validation-standardised scores) | product | madcluster_only | backbone_only.
    # None = by protocol: sum under protocol=point, product (the reference code's rule) under
    # protocol=reference; resolved by combine_rule, and runs log the resolved rule.
    # backbone_only with MADCluster on is the control arm of an on/off comparison
    # (madcluster=on_backbone_only): the plug-in trains the embedding, the backbone's own score
    # is used (no second score to ensemble).
    combine: Optional[Combine] = None


# ----------------------------------------------------------------------------------- threshold
@dataclass
class ThresholdConfig:
    # val_percentile | pot (label-free, fitted on validation scores) | spot (streaming: validation
    # init, causal updates on the test stream) | transductive (percentile of val + test scores)
    # | oracle (best F1 on test labels)
    kind: ThresholdKind = ThresholdKind.val_percentile
    percentile: float = 99.0
    # POT/SPOT: initial threshold at this quantile; tail risk q.
    level: float = 0.98
    q: float = 1e-3


# ------------------------------------------------------------------------------------- metrics
@dataclass
class MetricsConfig:
    # Metric set logged beside the default keys (point protocol): vus006 = the MADCluster
    # paper's set with vus 0.0.6's definitions (test/<name>); tsbad = also TSB-AD 1.5's
    # get_metrics set as test/tsbad/<key> at the run's threshold and test/tsbad/<key>_oracle at
    # TSB-AD's own best-threshold search (see madcluster_exp/metrics/tsbad.py).
    definition: MetricsDefinition = MetricsDefinition.vus006
    # Sliding window of R_AUC (and the largest window of VUS), as vus's slidingWindow: an integer
    # >= 0, or auto = TSB-AD's period rule on each scored series' first channel (its benchmark's
    # window, metrics/period.py tsbad_vus_window), resolved per series and logged as the metric
    # range_window. Checked in config/checks.py (an int or "auto"; any other value is refused).
    range_window: Any = 100
    # Point-adjusted F1 (labelled *_pa, never the headline).
    point_adjust: bool = True
    # Best-F1 over all test thresholds (labelled *_oracle).
    oracle: bool = True
    # Save raw scores and labels so metrics can be recomputed without retraining.
    save_scores: bool = True


# ------------------------------------------------------------------------------------ tracking
@dataclass
class TrackingConfig:
    # mlflow | none
    backend: TrackingBackend = TrackingBackend.mlflow
    # None -> $MLFLOW_TRACKING_URI if set, else sqlite:///<output_dir>/mlflow.db
    uri: Optional[str] = None
    experiment: str = "madcluster_exp"
    # Extra run-name suffix (e.g. a study name); the name is {backbone}-{dataset}-{on|off}-s{seed}.
    run_name_suffix: Optional[str] = None
    log_artifacts: bool = True
    # Save the trained detector (weights, config, scaler, score combiner, threshold) as the
    # MLflow pyfunc model `model/` that `python -m madcluster_exp.predict` and
    # mlflow.pyfunc.load_model score new data with (protocol=point runs).
    log_model: bool = True
    plots: bool = True


# -------------------------------------------------------------------------------------- search
#: search.objective -> (the metric a job returns to a sweeper, the direction a search takes).
SEARCH_OBJECTIVES = {
    "val_loss": ("val/best_loss", "minimize"),
    "val_injected_vus_pr": ("val_injected/vus_pr", "maximize"),
}
SearchObjective = _choice("SearchObjective", *SEARCH_OBJECTIVES)


@dataclass
class InjectConfig:
    """Synthetic anomalies planted in a copy of the scaled validation split (data/inject.py)."""

    # Its own seed: every trial of a search is scored on the same injected series.
    seed: int = 0
    # Fraction of validation points inside injected anomalies (reached up to one event).
    ratio: float = 0.1
    # spike | level_shift | contextual | collective, planted in turn.
    kinds: List[str] = field(
        default_factory=lambda: ["spike", "level_shift", "contextual", "collective"]
    )


@dataclass
class SearchConfig:
    # What a job returns to a sweeper: val_loss (the best validation loss; minimise) |
    # val_injected_vus_pr (VUS-PR of the detector on the validation split with injected
    # anomalies; maximise). Test data never enters either.
    objective: SearchObjective = SearchObjective.val_loss
    inject: InjectConfig = field(default_factory=InjectConfig)
    # The Optuna trial this job is; set by the project's Optuna sweeper, None outside a search.
    trial: Optional[int] = None


# --------------------------------------------------------------------------------------- root
@dataclass
class Config:
    seed: int = 0
    # cpu | cuda | auto
    device: Device = Device.cpu
    # Deterministic kernels (torch.use_deterministic_algorithms): CPU runs are reproducible
    # anyway; on CUDA this makes them so at some speed cost.
    deterministic: bool = False
    # point: one score per time point, honest thresholds (default).
    # reference: the MADCluster code's evaluation (stride-1 window scores, window label = any
    # anomaly inside, best-F1 threshold on test, range metrics on the binarised prediction);
    # its metrics are logged under ref/ so they never mix with test/.
    # tsbad: TSB-AD's benchmark (a preset, conf/protocol/tsbad.yaml): the whole series scored
    # (dataset=collection: dataset.test_part=whole), the period-rule window per series
    # (metrics.range_window=auto), TSB-AD's metric set (metrics.definition=tsbad), classical
    # detectors with a TSB-AD counterpart run as TSB-AD ran them (TSBAD_DETECTORS).
    # Chosen as a config group (protocol=<name>), which sets this key.
    protocol: Protocol = Protocol.point
    # Which of the paper's pipelines this run is (None: neither): reference = the official
    # code's (setup=paper: validates on test, tests the last epoch, oracle threshold);
    # honest = the same models and schedule under this project's protocol (setup=paper_honest).
    # Logged as a param and a tag; checked against dataset.validation and protocol.
    pipeline: Optional[Pipeline] = None
    # Printed and logged as the run's description.
    notes: Optional[str] = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    dataset: Any = MISSING
    backbone: Any = MISSING
    madcluster: MADClusterConfig = field(default_factory=MADClusterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)


# ------------------------------------------------------------------------ by-protocol defaults
#: scoring.combine when unset: the rule each protocol implies.
PROTOCOL_COMBINE = {
    Protocol.point: Combine.sum,
    Protocol.reference: Combine.product,
    Protocol.tsbad: Combine.sum,
}

#: metrics.range_window's rule besides an integer: TSB-AD's period rule, per scored series.
RANGE_WINDOW_RULE = "auto"

#: protocol=tsbad: the classical backbones TSB-AD's benchmark has, and the columns of its
#: tables they run as (univariate, multivariate; None: TSB-AD has none), with TSB-AD's
#: published hyper-parameters and period-rule windows (madcluster_exp/classical/tsbad.py).
TSBAD_DETECTORS = {
    "iforest": ("IForest", "IForest"),
    "pca": ("Sub-PCA", "PCA"),
    "knn": ("Sub-KNN", "KNN"),
    "matrix_profile": ("MatrixProfile", None),
}
