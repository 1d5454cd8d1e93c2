"""Where saved models find their loader: every saved model's ``pyfunc_model.py`` (written by
this version or an older one) imports ``madcluster_exp.model``. The code lives in
:mod:`madcluster_exp.serving.bundle`; this name stays so that older run directories load."""

from madcluster_exp.serving.bundle import (  # noqa: F401 - the names saved models import
    ARTIFACT,
    META,
    ModelError,
    TrainedDetector,
    current_keys,
    load_bundle,
    read_bundle,
)
