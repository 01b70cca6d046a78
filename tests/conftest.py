"""Shared fixtures: tiny simulation configs and stores (seconds to make)."""

from __future__ import annotations

import pytest


def tiny_config(system: str = "graphene", **changes):
    """A small, fast config: 48-px images in an 80-px box, 2 samples per job."""
    from atomfinder.datasets.generate import default_config
    from atomfinder.imaging.microscope import MicroscopeRanges

    base = default_config(system)
    settings = dict(
        image_px=48,
        box_px=(80,),
        margin_A=1.0,
        samples_per_job=2,
        draws_per_wave=2,
        max_sites=256,
        microscope=MicroscopeRanges.from_dict(base.microscope.to_dict() | {"sampling_A": 0.12}),
    )
    return base.replace(**(settings | changes))


@pytest.fixture(scope="session")
def tiny_graphene_store(tmp_path_factory):
    """An 8-sample graphene store (48 x 48 px, 0.12 Å/px)."""
    pytest.importorskip("abtem")
    from atomfinder.datasets.generate import simulate_to_store

    path = tmp_path_factory.mktemp("stores") / "graphene.zarr"
    return simulate_to_store(tiny_config(), 8, path, seed=0, workers=0)


# Hypothesis profiles of tests/test_fuzz.py: the fast set by default, many more examples
# with `make fuzz` (`--hypothesis-profile=atomfinder-fuzz`, or the environment variable
# ATOMFINDER_HYPOTHESIS_PROFILE).
try:
    import os

    from hypothesis import settings

    settings.register_profile("atomfinder-fast", max_examples=25, deadline=None)
    settings.register_profile("atomfinder-fuzz", max_examples=10000, deadline=None)
    settings.load_profile(os.environ.get("ATOMFINDER_HYPOTHESIS_PROFILE", "atomfinder-fast"))
except ImportError:  # hypothesis is in the `test` extra; only test_fuzz.py needs it
    pass
