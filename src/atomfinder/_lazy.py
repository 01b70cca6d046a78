"""Submodules reachable as attributes of their package, imported when first used.

``atomfinder.nn.card.list_models()`` then works right after ``import atomfinder``, as the
docs write it, while importing a package still loads none of its submodules (torch,
abTEM and HyperSpy stay unloaded until something needs them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType


def submodule_getattr(package: str) -> Callable[[str], ModuleType]:
    """A module-level ``__getattr__`` for ``package`` that imports ``package.<name>`` on first access.

    Raises
    ------
    AttributeError
        When ``package`` has no submodule ``name`` (a missing dependency of an existing
        submodule is raised as itself).
    """

    def __getattr__(name: str) -> ModuleType:
        if name.startswith("__"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{package}.{name}":
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
            raise

    return __getattr__
