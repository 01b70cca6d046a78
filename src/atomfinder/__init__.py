"""atomfinder: find atoms and atomic columns in HRTEM images.

Networks trained only on multislice simulations (after Madsen et al., Adv. Theory
Simul. 2018) turn noisy micrographs into per-class probability maps; peaks in those
maps are the atoms. ``import atomfinder`` is light: it loads neither abTEM nor ase.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "detect", "to_atomap", "to_signal"]

#: Lazy top-level names -> the module that defines them.
_LAZY = {
    "detect": "atomfinder.detection.micrograph",
    "to_signal": "atomfinder.detection.signals",  # HyperSpy, imported when called
    "to_atomap": "atomfinder.detection.signals",  # Atomap, imported when called
}


def __getattr__(name: str):
    """Lazy top-level API: ``atomfinder.detect`` imports torch only when first used."""
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBPACKAGES:  # atomfinder.nn.card... works without importing it first
        return importlib.import_module(f"atomfinder.{name}")
    raise AttributeError(f"module 'atomfinder' has no attribute {name!r}")


#: Subpackages reachable as attributes, imported when first used.
_SUBPACKAGES = ("analysis", "datasets", "detection", "imaging", "napari", "nn", "structures")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBPACKAGES))
