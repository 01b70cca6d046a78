"""HRTEM imaging (needs the ``simulate`` extra: abTEM): microscope, exit waves, lens, detector."""

from atomfinder._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
