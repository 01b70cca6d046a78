"""Neural-network part of atomfinder: U-Net, losses, normalisation, model cards, tiled inference.

Kept import-free on purpose: ``import atomfinder.nn`` loads nothing heavy; import the
submodules (``atomfinder.nn.unet``, ``atomfinder.nn.infer``, ...) where you need them.
"""

from atomfinder._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
