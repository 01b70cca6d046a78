"""Per-image validity checks (detection.validity) and the validity range of model cards (nn.validity).

The shipped graphene model on the bundled real example passes every check; the same
image at twice and half its pixel size, white noise and a simulated Au particle warn.
The detections are made once per module (about a second each).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from atomfinder.cli import app
from atomfinder.detection.io import write_tiff_calibrated
from atomfinder.detection.validity import (
    MAX_AMBIGUOUS_SHARE,
    MIN_ATOMS,
    ImageValidity,
    ValidityWarning,
    ambiguous_share,
    card_reference,
    check_image,
    nearest_neighbour_distances_A,
    relative_spread,
    spacing_share,
    validity_record,
    warning_lines,
)
from atomfinder.nn.card import list_models
from atomfinder.nn.validity import (
    GOLD_LATTICE_A,
    GOLD_ZONE_AXES,
    GRAPHENE_BOND_A,
    MOS2_LATTICE_A,
    contrast_reference,
    contrast_to_noise,
    expected_neighbour_distances_A,
    validity_range,
    validity_summary,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "graphene_defect_hrtem.tif"
SAMPLING_A = 0.108  # measured from the example's lattice (examples/README.md)

needs_graphene = pytest.mark.skipif("graphene" not in list_models(), reason="no shipped graphene model")


def _honeycomb_A(n: int = 12, bond_A: float = GRAPHENE_BOND_A) -> np.ndarray:
    """Graphene atom positions (Å): two atoms per cell of a triangular lattice."""
    a = bond_A * math.sqrt(3.0)
    a1, a2 = np.array([a, 0.0]), np.array([a / 2, a * math.sqrt(3.0) / 2])
    i, j = np.meshgrid(np.arange(n), np.arange(n))
    cells = i.reshape(-1, 1) * a1 + j.reshape(-1, 1) * a2
    return np.concatenate([cells, cells + np.array([0.0, bond_A])])


def _table(xy_A: np.ndarray, scores: np.ndarray | None = None, column: str = "probability") -> pd.DataFrame:
    scores = np.full(len(xy_A), 0.95) if scores is None else scores
    return pd.DataFrame({"x_angstrom": xy_A[:, 0], "y_angstrom": xy_A[:, 1], column: scores})


# --------------------------------------------------------------------------- pure functions


def test_nearest_neighbours_of_a_honeycomb_are_the_bond_length():
    nn = nearest_neighbour_distances_A(_honeycomb_A())
    np.testing.assert_allclose(nn, GRAPHENE_BOND_A, rtol=1e-9)
    assert relative_spread(nn) == pytest.approx(0.0, abs=1e-12)
    assert spacing_share(nn, [GRAPHENE_BOND_A]) == 1.0
    assert spacing_share(nn * 1.15, [GRAPHENE_BOND_A]) == 0.0  # a pixel size 15 % off
    assert spacing_share(nn * 1.05, [2.04, GRAPHENE_BOND_A]) == 1.0  # any expected distance counts
    assert nearest_neighbour_distances_A(np.zeros((1, 2))).size == 0


def test_ambiguous_share_counts_the_open_band():
    assert ambiguous_share(np.array([0.1, 0.2, 0.5, 0.79, 0.8, 0.95])) == pytest.approx(2 / 6)
    assert math.isnan(ambiguous_share(np.array([np.nan])))


def test_contrast_to_noise_is_zero_for_noise_and_grows_with_dose():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256] * 0.1
    lattice = np.cos(2 * np.pi * xx / 2.13) + np.cos(2 * np.pi * yy / 2.13)
    assert contrast_to_noise(rng.normal(0, 1, (256, 256)), 0.1) == pytest.approx(0.0, abs=0.05)
    low = contrast_to_noise(lattice + rng.normal(0, 2.0, lattice.shape), 0.1)
    high = contrast_to_noise(lattice + rng.normal(0, 0.5, lattice.shape), 0.1)
    assert low == pytest.approx(0.5, rel=0.1) and high == pytest.approx(2.0, rel=0.1)  # std of the lattice is 1
    assert contrast_to_noise(5.0 * lattice + 7.0 + rng.normal(0, 2.5, lattice.shape), 0.1) == pytest.approx(
        contrast_to_noise(lattice + rng.normal(0, 0.5, lattice.shape), 0.1), rel=0.1)  # gain and offset free


def test_check_image_passes_a_lattice_and_fails_ambiguity_and_too_few_atoms():
    ref = {"neighbour_distances_A": {"graphene": GRAPHENE_BOND_A}, "contrast_to_noise": {"low": 0.5, "high": 10.0}}
    good = check_image(_table(_honeycomb_A()), ref, contrast_to_noise_ratio=3.0, sampling_A=0.1,
                       model_sampling_A=0.1, source="a.tif")
    assert good.passed and not good.failed
    unsure = _table(_honeycomb_A(), scores=np.full(2 * 144, 0.5), column="confidence")
    bad = check_image(unsure, ref, contrast_to_noise_ratio=0.1, sampling_A=0.1, model_sampling_A=0.1, source="a.tif")
    assert {c.name for c in bad.failed} == {"ambiguous_detections", "contrast_to_noise"}
    assert "confidence" in next(c.reason for c in bad.failed if c.name == "ambiguous_detections")
    assert bad.warnings == [f"a.tif: {c.reason}" for c in bad.failed]
    assert bad.to_dict()["checks"]["contrast_to_noise"]["warning"].startswith("a.tif: contrast-to-noise ratio 0.10")
    few = check_image(_table(_honeycomb_A()[: MIN_ATOMS - 1]), ref, sampling_A=0.1, model_sampling_A=0.1,
                      source="a.tif")
    checks = {c.name: c for c in few.checks}
    assert checks["atom_count"].passed is False
    assert checks["lattice_spacing"].passed is None and checks["contrast_to_noise"].passed is None  # not evaluated
    empty = check_image(_table(np.zeros((0, 2))), {}, sampling_A=0.1, model_sampling_A=0.1, source="a.tif")
    assert [c.name for c in empty.failed] == ["atom_count"]


def test_warning_lines_name_the_file_and_gather_the_frames_of_a_stack():
    ref = {"neighbour_distances_A": {"graphene": GRAPHENE_BOND_A}}
    good = _table(_honeycomb_A())
    unsure = _table(_honeycomb_A(), scores=np.full(2 * 144, 0.5))
    frames = [check_image(t, ref, sampling_A=0.1, model_sampling_A=0.1, source="s.tif", frame=i)
              for i, t in enumerate([good, unsure, unsure])]
    lines = warning_lines(frames)
    assert len(lines) == 1 and lines[0].startswith("s.tif frames 1, 2 (2 of 3): ") and "\n" not in lines[0]
    record = validity_record(frames)
    assert record["passed"] is False and [im["frame"] for im in record["images"]] == [0, 1, 2]
    assert record["images"][0]["checks"]["ambiguous_detections"]["passed"] is True
    assert record["thresholds"]["max_ambiguous_share"] == MAX_AMBIGUOUS_SHARE
    assert record["images"][1]["checks"]["ambiguous_detections"]["warning"].startswith("s.tif frame 1: 100% ")
    single = warning_lines([ImageValidity("a.tif", None, frames[1].checks)])
    assert single == [f"a.tif: {c.reason}" for c in frames[1].failed]


# --------------------------------------------------------------------------- validity range


def test_material_constants_agree_with_the_structure_builders():
    pytest.importorskip("ase")
    from atomfinder.structures.gold import FCC_ZONES, GoldConfig
    from atomfinder.structures.graphene import GrapheneConfig
    from atomfinder.structures.mos2 import MoS2Config

    assert GrapheneConfig().bond_length_A == GRAPHENE_BOND_A
    assert GoldConfig().lattice_constant_A == GOLD_LATTICE_A and tuple(GoldConfig().zone_axes) == GOLD_ZONE_AXES
    assert set(GOLD_ZONE_AXES) <= set(FCC_ZONES)
    assert MoS2Config().lattice_constant_A == MOS2_LATTICE_A


def test_expected_distances_are_the_projected_nearest_columns():
    gold = expected_neighbour_distances_A("gold")
    assert gold == pytest.approx({"Au [100]": 2.04, "Au [110]": 2.4985, "Au [111]": 1.6657}, abs=1e-4)
    assert expected_neighbour_distances_A("mos2") == pytest.approx({"MoS2 Mo-S": 3.19 / math.sqrt(3.0)}, abs=1e-4)
    assert expected_neighbour_distances_A("gold", {"zone_axes": ["111"], "lattice_constant_A": 4.0}) == pytest.approx(
        {"Au [111]": 4.0 / math.sqrt(6.0)}, abs=1e-4)


def test_validity_range_reads_the_microscope_ranges_in_user_units():
    from atomfinder.datasets.generate import default_config
    from atomfinder.imaging.microscope import MicroscopeRanges

    mic = MicroscopeRanges(energies_eV=(80e3, 300e3), p_corrected=0.5, sampling_A=0.1, sampling_jitter=0.05,
                           Cs_corrected_A=(-2e5, 2e5), Cs_uncorrected_A=(0.5e7, 1.2e7),
                           defocus_around_scherzer_A=(-100.0, 150.0), dose_e_per_A2=(1e3, 1e4))
    sim = default_config("mos2").replace(microscope=mic).to_dict()
    v = validity_range(sim)
    assert v["energies_kV"] == [80.0, 300.0]
    assert v["Cs_corrected_um"] == [-20.0, 20.0] and v["Cs_uncorrected_um"] == [500.0, 1200.0]
    assert v["uncorrected_min_energy_kV"] == pytest.approx(mic.uncorrected_min_energy_eV / 1e3)
    assert v["defocus_around_scherzer_A"] == [-100.0, 150.0] and v["dose_e_per_A2"] == [1e3, 1e4]
    assert v["sampling_range_A"] == pytest.approx([0.095, 0.105])
    assert v["frames"] == sim["frames"] > 1 and v["focal_step_A"] == list(sim["focal_step_A"])
    assert v["neighbour_distances_A"] == expected_neighbour_distances_A("mos2")
    only_corrected = validity_range(default_config("graphene").to_dict())
    assert only_corrected["Cs_uncorrected_um"] is None and only_corrected["frames"] is None
    assert "60–300 kV" in validity_summary(only_corrected) and "±5%" in validity_summary(only_corrected)
    with pytest.raises(ValueError, match="microscope"):
        validity_range({"system": "graphene"})


def test_training_stores_the_validity_in_the_card():
    from atomfinder.datasets.generate import default_config
    from atomfinder.nn.train import TrainConfig, TrainingData, make_card, training_validity
    from atomfinder.nn.unet import UNetConfig

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64] * 0.1
    lattice = np.cos(2 * np.pi * xx / 2.13) + np.cos(2 * np.pi * yy / 2.13)
    images = np.stack([lattice + rng.normal(0, s, lattice.shape) for s in (0.5, 1.0, 2.0, 50.0)])[:, None]
    targets = np.zeros((4, 2, 64, 64), np.float16)
    targets[:3, 1, 30:33, 30:33] = 1  # the last image is an empty field
    data = TrainingData(images.astype(np.float32), targets, None, np.full(4, 0.1), ("C",))
    sim = default_config("graphene").to_dict()
    validity = training_validity(data, {"store": "x.zarr", "simulation": sim})
    # the recipe's ranges, in the card's units
    assert validity["energies_kV"] == [e / 1e3 for e in sim["microscope"]["energies_eV"]]
    assert validity["Cs_corrected_um"] == [c / 1e4 for c in sim["microscope"]["Cs_corrected_A"]]
    assert validity["dose_e_per_A2"] == list(sim["microscope"]["dose_e_per_A2"])
    assert validity["neighbour_distances_A"] == expected_neighbour_distances_A("graphene")
    # the contrast-to-noise range of the three images that hold atoms: the empty field (noise 50) left out
    cnr = validity["contrast_to_noise"]
    assert cnr["n_images"] == 3 and cnr["source"] == "training images of x.zarr that hold atoms"
    assert 0.3 < cnr["low"] <= cnr["median"] <= cnr["high"]
    with_empty = contrast_reference(images, np.full(4, 0.1))
    assert with_empty["n_images"] == 4 and with_empty["low"] < 0.1 < 0.3 < cnr["low"]
    assert training_validity(data, {"simulation": sim})["contrast_to_noise"]["source"] == (
        "training images of the training store that hold atoms")
    cfg = TrainConfig(name="t", version="0", depth=2, width=4)
    card = make_card(cfg, UNetConfig(in_channels=1, n_classes=2, depth=2, width=4), data, {}, {}, (), validity)
    assert card.validity == validity and card_reference(card) == validity


# --------------------------------------------------------------------------- the shipped graphene model


def _detect(image, sampling: float | None = None):
    import atomfinder

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table, _ = atomfinder.detect(image, model="graphene", sampling=sampling)
    lines = [str(w.message) for w in caught if issubclass(w.category, ValidityWarning)]
    return table, lines


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Detections of the shipped graphene model: the example as shipped, at 2x and 0.5x its
    pixel size, white noise saved as a calibrated TIFF (0.1 Å/px), and a simulated Au particle."""
    if "graphene" not in list_models():
        pytest.skip("no shipped graphene model")
    tmp = tmp_path_factory.mktemp("validity")
    noise = write_tiff_calibrated(tmp / "noise.tif",
                                  np.random.default_rng(0).normal(100, 10, (384, 384)).astype(np.float32), 0.1)
    out = {"shipped": _detect(EXAMPLE, SAMPLING_A), "2x": _detect(EXAMPLE, 2 * SAMPLING_A),
           "0.5x": _detect(EXAMPLE, SAMPLING_A / 2), "noise": _detect(noise)}
    return out


@pytest.fixture(scope="module")
def gold_image(tmp_path_factory):
    """A simulated Au particle (`atomfinder simulate --system gold --seed 5`, first image) and its Å/px."""
    pytest.importorskip("abtem")
    from atomfinder.datasets.generate import default_config, simulate_to_store
    from atomfinder.datasets.store import DatasetStore

    path = simulate_to_store(default_config("gold"), 1, tmp_path_factory.mktemp("gold") / "g.zarr", seed=5, workers=0)
    store = DatasetStore(path)
    return store.array("images")[0, 0].astype(np.float32), float(store.array("sampling_A")[0])


@needs_graphene
def test_the_real_example_as_shipped_passes_every_check(cases):
    table, lines = cases["shipped"]
    record = table.attrs["validity"]
    assert lines == [] and record["passed"] is True and record["warnings"] == []
    checks = record["images"][0]["checks"]
    assert all(c["passed"] is True for c in checks.values()), checks  # every check evaluated and passed


@needs_graphene
@pytest.mark.parametrize("case", ["2x", "0.5x", "noise"])
def test_wrong_pixel_size_and_noise_warn(cases, case):
    table, lines = cases[case]
    record = table.attrs["validity"]
    assert record["passed"] is False and lines == record["warnings"] and lines
    name = "noise.tif" if case == "noise" else EXAMPLE.name
    assert all(name in line and "\n" not in line for line in lines)
    failed = {k for k, c in record["images"][0]["checks"].items() if c["passed"] is False}
    if case == "noise":
        assert "contrast_to_noise" in failed  # white noise has no contrast, whatever the model finds in it
    else:
        assert failed & {"lattice_spacing", "lattice_order", "ambiguous_detections", "atom_count"}


@needs_graphene
def test_a_gold_particle_given_to_the_graphene_model_warns(gold_image):
    image, sampling = gold_image
    table, lines = _detect(image, sampling)
    assert lines and table.attrs["validity"]["passed"] is False
    assert all(line.startswith("<array>: ") for line in lines)


@needs_graphene
def test_each_frame_of_a_stack_is_checked(cases):
    import tifffile

    crop = tifffile.imread(EXAMPLE).astype(np.float32)[:256, :256]
    noise = np.random.default_rng(1).normal(float(crop.mean()), float(crop.std()), crop.shape).astype(np.float32)
    table, lines = _detect(np.stack([crop, noise]), SAMPLING_A)
    images = table.attrs["validity"]["images"]
    assert [im["frame"] for im in images] == [0, 1]
    assert images[0]["passed"] is True and images[1]["passed"] is False
    assert lines and all(line.startswith("<array> frame 1 (1 of 2): ") for line in lines)


@needs_graphene
def test_cli_prints_one_warning_line_per_failed_check(tmp_path):
    noise = write_tiff_calibrated(tmp_path / "noise.tif",
                                  np.random.default_rng(2).normal(100, 10, (256, 256)).astype(np.float32), 0.1)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["detect", str(noise), "--model", "graphene", "--out", str(out)])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    import json

    sidecar = json.loads((out / "noise.json").read_text())
    assert len(warned) == len(sidecar["validity"]["warnings"]) >= 1
    assert all(str(noise) in line for line in warned)
