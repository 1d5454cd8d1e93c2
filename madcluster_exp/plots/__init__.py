"""Every figure the project draws, as PNG files. Callers compute the numbers; these modules
only draw them:

- :mod:`.run`: a job's score timeline and training curves (also the report's timelines);
- :mod:`.sweep`: a sweep report's on/off bars, k curves and training curves per configuration;
- :mod:`.rank`: the detectors' critical-difference diagram;
- :mod:`.backend`: matplotlib with the Agg backend, and saving a figure.
"""

from madcluster_exp.plots.run import plot_score_timeline, plot_training_curves

__all__ = ["plot_score_timeline", "plot_training_curves"]
