"""Evaluation, time series, focal series and plots (never imports the simulation stack)."""

from atomfinder._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
