"""The MLflow pyfunc wrapper of a saved detector, as MLflow's "models from code": this file is
copied into each saved model and run when the model is loaded, so nothing is unpickled.
It imports ``madcluster_exp.model`` (the name saved models keep across versions), which must be
installed where it is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import mlflow.pyfunc
import numpy as np
from mlflow.models import set_model

from madcluster_exp.model import ARTIFACT, TrainedDetector, load_bundle


class DetectorModel(mlflow.pyfunc.PythonModel):
    """``predict(df)`` -> DataFrame ``score`` (higher = more anomalous), ``prediction`` (0/1 at
    the run's threshold); the columns of ``df`` are the channels in training order (matched by
    position) of one contiguous series. A per-entity run needs ``params={"entity": name}``."""

    # The model's signature validates its input; MLflow's type-hint validation (and its warning
    # asking for hints) is not needed.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self._dir = Path(context.artifacts[ARTIFACT])
        self._loaded: Dict[Optional[str], TrainedDetector] = {}

    def predict(self, context, model_input, params=None):
        import pandas as pd

        entity = (params or {}).get("entity") or None
        if entity not in self._loaded:
            self._loaded[entity] = load_bundle(self._dir, entity, "the MLflow model")
        det = self._loaded[entity]
        scores = det.score(np.asarray(model_input, dtype=np.float32))
        return pd.DataFrame(
            {"score": scores, "prediction": det.threshold_scores(scores).astype(np.int64)}
        )


set_model(DetectorModel())
