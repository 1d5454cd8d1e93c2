"""Sweep reports: ``python -m madcluster_exp.report <sweep>``."""
