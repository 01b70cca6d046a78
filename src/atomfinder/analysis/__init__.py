"""Evaluation, time series, focal series and plots (never imports the simulation stack)."""
