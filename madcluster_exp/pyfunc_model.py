"""The MLflow pyfunc entry point of a saved detector (MLflow's models from code: this file is
copied into the model directory and run when the model is loaded, so nothing is unpickled)."""
from mlflow.models import set_model

from madcluster_exp.model import DetectorModel

set_model(DetectorModel())
