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

    # The default set is deterministic (the same examples every run) and writes no
    # .hypothesis/ database into the repository; the fuzz profile stays random.
    settings.register_profile("atomfinder-fast", max_examples=25, deadline=None, derandomize=True, database=None)
    # make fuzz: a case that runs over 10 s counts as a hang (issue 17.2) and fails.
    settings.register_profile("atomfinder-fuzz", max_examples=10000, deadline=10_000)
    settings.load_profile(os.environ.get("ATOMFINDER_HYPOTHESIS_PROFILE", "atomfinder-fast"))
except ImportError:  # hypothesis is in the `test` extra; only test_fuzz.py needs it
    pass


@pytest.fixture(scope="session", autouse=True)
def _hypothesis_files_outside_the_repository(tmp_path_factory):
    """With the fast profile, Hypothesis's other files (its cache of the code's constants) go to a
    temporary folder too, not to ``.hypothesis/`` in the working directory."""
    try:
        from hypothesis import settings
        from hypothesis.configuration import set_hypothesis_home_dir
    except ImportError:
        yield
        return
    if settings.default.database is None:
        set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield


def lattice_image(shape=(64, 64), spacing_px: float = 7.0, seed: int = 0):
    """A square lattice of Gaussian atoms (sigma 1.5 px) on an offset of 100 with unit Gaussian noise, float32."""
    import numpy as np

    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    img = np.zeros(shape)
    for cy in np.arange(3, shape[0], spacing_px):
        for cx in np.arange(3, shape[1], spacing_px):
            img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 1.5**2))
    return (100 + 50 * img + np.random.default_rng(seed).normal(0, 1.0, shape)).astype(np.float32)


def save_untrained_model(path, sampling_A: float, *, in_channels: int = 1, class_names=("C",),
                         focal_step_A: float = 50.0, name: str = "tiny", validity: dict | None = None):
    """An untrained two-class U-Net (depth 2, width 4, seed 0) saved at ``path`` that keeps every peak
    (threshold 0); a focal-series model (``in_channels`` > 1) has frames ``focal_step_A`` apart."""
    import torch

    from atomfinder.nn.card import ModelCard, save_model
    from atomfinder.nn.unet import UNetConfig, build_model

    cfg = UNetConfig(in_channels=in_channels, n_classes=2, depth=2, width=4)
    torch.manual_seed(0)
    card = ModelCard(
        name=name, version="0", architecture=cfg.to_dict(), in_channels=in_channels, class_names=tuple(class_names),
        sampling_A=sampling_A, normalization={"kind": "local", "window_A": 6.0},
        defocus_offsets_A=tuple(focal_step_A * i for i in range(in_channels)) if in_channels > 1 else (),
        detection={"threshold": 0.0, "min_distance_A": 1.0}, validity=dict(validity or {}),
    )
    save_model(build_model(cfg).eval(), card, path)
    return path


def pytest_terminal_summary(terminalreporter):
    """After a run of tests/test_fuzz.py: the number of cases each property ran, and the total.

    The counts come as the ``cases`` user property of the tests' teardown reports.
    """
    cases: dict[str, int] = {}
    outcomes: dict[str, str] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            n = dict(getattr(report, "user_properties", ())).get("cases")
            if n:
                cases[report.nodeid] = n
            if getattr(report, "when", "") == "call":
                outcomes[report.nodeid] = report.outcome
    if cases:
        terminalreporter.section("fuzz cases")
        for nodeid, n in cases.items():
            terminalreporter.write_line(f"{n:8d}  {outcomes.get(nodeid, '?'):6s}  {nodeid}")
        failed = sum(outcomes.get(nodeid) != "passed" for nodeid in cases)
        terminalreporter.write_line(f"{sum(cases.values()):8d}  in all ({failed} properties not passed)")
