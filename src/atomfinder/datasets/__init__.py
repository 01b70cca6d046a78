"""Training data: targets from site positions, the zarr store and its generator.

``atomfinder.datasets.store`` and ``atomfinder.datasets.labels`` need no simulation
dependencies; ``atomfinder.datasets.generate`` does (abTEM, ase).
"""

from atomfinder._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
