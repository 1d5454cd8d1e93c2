"""A finished run's detector as a thing to use: saved with the run, loaded, scoring new data.

A run (``protocol=point``) saves ``<run dir>/model/``, an MLflow pyfunc model, and logs it as the
run's MLflow 3 logged model ``model`` (so it outlives ``make clean``; the UI lists it under the
run's "Logged models" with its signature; ``runs:/<run id>/model`` and ``models:/<model id>``
load it). Besides ``MLmodel`` (no absolute path in it: it loads wherever it is copied) and
``pyfunc_model.py`` (the pyfunc wrapper, MLflow's "models from code": nothing is unpickled on
load), its ``artifacts/detector/`` holds everything scoring needs:

- ``detector.json``: the resolved config and, per trained model (one; one per entity with
  ``dataset.mode=per_entity`` or a collection), its entity, channel count, the scaler's
  statistics, the score combiner's rule and validation statistics and the threshold's fitted
  state (taken before it saw a test score, so SPOT streams new data as it streamed test);
- ``weights.pt``: the state dicts (weights and buffers such as centers and radii), read with
  ``torch.load(weights_only=True)``.

:class:`TrainedDetector` applies them in the run's order: scaler -> windows -> per-step score
components -> point scores -> combiner -> threshold. Scores are higher = more anomalous (as
pyod's ``decision_function``). The pyfunc wrapper imports this package, so the project must be
installed where the model is loaded.

``protocol=reference`` runs save no model: their threshold is the best-F1 cut on test labels
over window-mean scores, not a threshold for point scores of new data.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from madcluster_exp.config import Config, from_container
from madcluster_exp.data import Scaler, SeriesSplit
from madcluster_exp.data.series import check_finite
from madcluster_exp.detector import build_detector
from madcluster_exp.errors import ExpectedError
from madcluster_exp.scoring import ScoreCombiner, score_split
from madcluster_exp.scoring.thresholds import threshold_from_state

FORMAT = 1
META, WEIGHTS, ARTIFACT = "detector.json", "weights.pt", "detector"
PYFUNC_CODE = "pyfunc_model.py"  # beside this file
#: What loading and scoring a saved model imports (pyproject's runtime dependencies minus the
#: tracking server's, plotting's and sweeps'); madcluster_exp itself must be installed too.
RUNTIME_PACKAGES = (
    "torch",
    "hydra-core",
    "omegaconf",
    "einops",
    "numpy",
    "numba",
    "pandas",
    "scipy",
    "scikit-learn",
    "mlflow",
)


class ModelError(ExpectedError, ValueError):
    """A trained model that cannot be found, or input it cannot score; says what was expected."""


# ------------------------------------------------------------------------------------ saving
def model_entry(
    entity: Optional[str], entities: Sequence[str], detector, scaler: Scaler, scorer: dict
) -> dict:
    """What one trained model contributes to the saved bundle (weights copied to the CPU)."""
    return {
        "entity": entity,
        "entities": list(entities),
        "n_channels": int(detector.backbone.n_channels),
        "state_dict": {
            k: v.detach().to("cpu", copy=True) for k, v in detector.state_dict().items()
        },
        "scaler": {
            "kind": scaler.kind,
            "shift": [float(v) for v in scaler.shift],
            "scale": [float(v) for v in scaler.scale],
        },
        "scorer": scorer,
    }


def requirements() -> List[str]:
    """The pip requirements of the pyfunc model: this package's runtime stack, pinned as
    installed here (given explicitly: MLflow's inference would load the model in a subprocess,
    seconds per run)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in RUNTIME_PACKAGES:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")  # 2.13.0+cpu -> 2.13.0
        except PackageNotFoundError:
            pins.append(name)
    return pins


def signature(n_channels: Optional[int]):
    """Input: n unnamed float columns (matched by position: any column names work); output:
    ``score`` and ``prediction``; param ``entity`` (which model of a per-entity run)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = (
        Schema([ColSpec("double") for _ in range(n_channels)]) if n_channels is not None else None
    )
    return ModelSignature(
        inputs=inputs,
        outputs=Schema([ColSpec("double", "score"), ColSpec("long", "prediction")]),
        params=ParamSchema([ParamSpec("entity", "string", "")]),
    )


def save_model(
    path: Path,
    config: dict,
    entries: List[dict],
    model_id: Optional[str] = None,
    run_id: Optional[str] = None,
) -> Path:
    """Write the pyfunc model directory ``path`` (replacing an older one) from the run's
    configuration (its plain nested form, ``Settings.container``) and the entries of
    :func:`model_entry`; returns ``path``. ``model_id``, ``run_id``: the MLflow logged model
    the directory becomes and the run that made it (recorded in ``MLmodel``), if tracked."""
    import mlflow.pyfunc
    from mlflow.models import Model

    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / ARTIFACT
        bundle.mkdir()
        torch.save({str(i): e["state_dict"] for i, e in enumerate(entries)}, bundle / WEIGHTS)
        meta = {
            "format": FORMAT,
            "config": config,
            "models": [{k: v for k, v in e.items() if k != "state_dict"} for e in entries],
        }
        (bundle / META).write_text(json.dumps(meta, indent=1))
        widths = {e["n_channels"] for e in entries}
        with warnings.catch_warnings():  # "no input example": one would cost a scoring pass
            warnings.simplefilter("ignore", UserWarning)
            mlflow.pyfunc.save_model(
                str(path),
                python_model=str(Path(__file__).with_name(PYFUNC_CODE)),
                artifacts={ARTIFACT: str(bundle)},
                signature=signature(widths.pop() if len(widths) == 1 else None),
                pip_requirements=requirements(),
                mlflow_model=Model(model_id=model_id, run_id=run_id),
            )
    _relative_paths(path)
    return path


def _relative_paths(path: Path) -> None:
    """``MLmodel`` as MLflow writes it names the code file by its absolute path in this checkout
    and the bundle by the temporary folder it was copied from; a loader reads only the file
    name and the path inside the model (mlflow.pyfunc.model), so both become relative and the
    model holds no path of the machine that saved it."""
    from mlflow.models import Model

    mlmodel = Model.load(str(path / "MLmodel"))
    conf = mlmodel.flavors["python_function"]
    conf["model_code_path"] = PYFUNC_CODE
    for artifact in conf.get("artifacts", {}).values():
        artifact.pop("uri", None)
    mlmodel.save(str(path / "MLmodel"))


# ----------------------------------------------------------------------------------- loading
class TrainedDetector:
    """One trained model with its scaler, combiner and threshold.

    ``score(x)``: x [time, channels] in raw units (one contiguous series) -> float64 [time],
    higher = more anomalous; ``predict(x)``: 0/1 at the run's threshold.
    """

    def __init__(
        self,
        cfg: Config,
        entry: dict,
        state_dict: Dict[str, torch.Tensor],
        source: str,
        device: str = "cpu",
    ):
        self.cfg = cfg
        self.source = source
        self.entity: Optional[str] = entry["entity"]
        self.entities: List[str] = list(entry["entities"])
        self.n_channels = int(entry["n_channels"])
        sc = entry["scaler"]
        self.scaler = Scaler(
            sc["kind"], np.asarray(sc["shift"], np.float32), np.asarray(sc["scale"], np.float32)
        )
        self.combiner = ScoreCombiner.from_state(entry["scorer"]["combiner"])
        self.threshold_state = dict(entry["scorer"]["threshold"])
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):  # building draws weights: leave the RNG alone
            self.detector = build_detector(cfg, self.n_channels)
        self.detector.load_state_dict(state_dict)
        self.detector.to(self.device).eval()

    @property
    def window(self) -> int:
        """Rows per scored window: a series needs at least this many."""
        return int(self.detector.backbone.input_length)

    @property
    def threshold(self) -> float:
        return float(self.threshold_state["value"])

    @property
    def threshold_kind(self) -> str:
        return str(self.threshold_state["kind"])

    def __repr__(self) -> str:
        entity = f", entity={self.entity!r}" if self.entity else ""
        return (
            f"TrainedDetector({self.cfg.backbone.name}, madcluster="
            f"{'on' if self.cfg.madcluster.enabled else 'off'}, {self.n_channels} channels, "
            f"window={self.window}, threshold {self.threshold_kind}={self.threshold:.6g}"
            f"{entity}; from {self.source})"
        )

    # -- input checks --------------------------------------------------------------------
    def as_split(self, x, name: str = "x") -> SeriesSplit:
        """x as a one-entity split of raw values, checked: 2-D, the model's channel count,
        finite, at least one window long."""
        try:
            values = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{name}: not an array of numbers ({exc})") from None
        if values.ndim == 1 and self.n_channels == 1:
            values = values[:, None]
        if values.ndim != 2 or values.shape[1] != self.n_channels:
            raise ModelError(
                f"{name}: shape {values.shape}; this model was trained on "
                f"{self.n_channels} channels, expected an array [time, "
                f"{self.n_channels}] ({self.source})"
            )
        from madcluster_exp.data.series import Segment

        return SeriesSplit(values, [Segment(name, 0, len(values))], None, name)

    def _check(self, split: SeriesSplit) -> None:
        if split.n_channels != self.n_channels:
            raise ModelError(
                f"{split.source}: {split.n_channels} channels; this model was "
                f"trained on {self.n_channels} ({self.source})"
            )
        check_finite(split.values, split.source)
        for seg in split.segments:
            if seg.length < self.window:
                raise ModelError(
                    f"{split.source}[{seg.name}]: {seg.length} rows; this model "
                    f"scores windows of {self.window} rows, expected at least "
                    f"{self.window}"
                )

    # -- scoring -------------------------------------------------------------------------
    def score_split(self, split: SeriesSplit) -> np.ndarray:
        """Point scores of a split of raw values; windows never cross its entity segments
        (what the run did with its test split)."""
        self._check(split)
        sc = self.cfg.scoring
        comps = score_split(
            self.detector,
            self.scaler.transform(split),
            int(sc.stride),
            int(sc.batch_size),
            sc.aggregate,
            self.device,
        )
        return np.asarray(self.combiner.combine(comps), dtype=np.float64)

    def threshold_scores(self, scores: np.ndarray) -> np.ndarray:
        """0/1 of scores at the run's threshold (SPOT: streamed from its validation state)."""
        return threshold_from_state(self.threshold_state).predict(scores).astype(np.int8)

    def score(self, x) -> np.ndarray:
        return self.score_split(self.as_split(x))

    def predict(self, x) -> np.ndarray:
        return self.threshold_scores(self.score(x))


def read_bundle(directory: Path) -> tuple:
    """(config, model entries, weights) of a saved ``artifacts/detector`` directory."""
    meta_path = Path(directory) / META
    if not meta_path.exists():
        raise ModelError(f"{directory}: no {META}; expected the detector bundle a run saves")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ModelError(
            f"{meta_path}: bundle format {meta.get('format')!r}; this version reads format {FORMAT}"
        )
    weights = torch.load(Path(directory) / WEIGHTS, map_location="cpu", weights_only=True)
    return from_container(current_keys(meta["config"])), meta["models"], weights


def current_keys(config: dict) -> dict:
    """A bundle's config with the keys of this version, so older bundles still load: Deep
    SVDD's ``backbone.warmup_epochs`` became ``radius_warmup_epochs`` (one less: the old rule
    fitted the radius one epoch sooner than its value said), ``madcluster.combine`` became
    ``scoring.combine``. Neither changes a score of a trained model."""
    backbone, mc = config.get("backbone", {}), config.get("madcluster", {})
    if "warmup_epochs" in backbone:
        backbone["radius_warmup_epochs"] = max(0, int(backbone.pop("warmup_epochs")) - 1)
    if "combine" in mc:
        config.setdefault("scoring", {}).setdefault("combine", mc.pop("combine"))
    return config


def load_bundle(
    directory: Path, entity: Optional[str] = None, source: Optional[str] = None, device: str = "cpu"
) -> TrainedDetector:
    """The model of ``entity`` (needed when the run trained one per entity) from a bundle."""
    cfg, models, weights = read_bundle(directory)
    source = source or str(directory)
    index = choose_model(models, entity, source)
    return TrainedDetector(cfg, models[index], weights[str(index)], source, device)


def choose_model(models: List[dict], entity: Optional[str], source: str) -> int:
    """Index of the model for ``entity``: a per-entity run needs one; a single (concat) model
    accepts none or any entity it was trained on."""
    if len(models) == 1 and models[0]["entity"] is None:
        if entity is None or entity in models[0]["entities"]:
            return 0
        raise ModelError(
            f"entity={entity!r}: {source} was trained on "
            f"{_names(models[0]['entities'])}; one model serves them all, so "
            "entity= may be left out"
        )
    names = [m["entity"] for m in models]
    if entity is None:
        if len(models) == 1:
            return 0
        raise ModelError(
            f"{source} holds one model per entity ({len(models)}); choose one "
            f"with entity=<name>: {_names(names)}"
        )
    if entity not in names:
        raise ModelError(
            f"entity={entity!r}: no model of that entity in {source}; have {_names(names)}"
        )
    return names.index(entity)


def _names(names: Sequence[str], shown: int = 10) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
