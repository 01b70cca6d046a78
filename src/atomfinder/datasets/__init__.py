"""Training data: targets from site positions, the zarr store and its generator.

``atomfinder.datasets.store`` and ``atomfinder.datasets.labels`` need no simulation
dependencies; ``atomfinder.datasets.generate`` does (abTEM, ase).
"""
