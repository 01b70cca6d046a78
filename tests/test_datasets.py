"""Targets, the generator and the zarr store: determinism, resume, dask."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("abtem")

from atomfinder.datasets.generate import (  # noqa: E402
    SimulationConfig,
    default_config,
    generate_job,
    iter_structure_images,
    job_structure,
    load_config,
    simulate_to_store,
)
from atomfinder.datasets.labels import class_maps, height_map  # noqa: E402
from atomfinder.datasets.store import DatasetStore, StoreError  # noqa: E402


from conftest import tiny_config as tiny  # noqa: E402


# -- labels ---------------------------------------------------------------------------


def test_disk_maps_are_one_hot_with_the_right_area():
    maps = class_maps(np.array([[20.3, 15.7], [40.0, 40.0]]), np.array([1, 2]), (64, 64), 2, 4.0)
    assert maps.shape == (3, 64, 64)
    np.testing.assert_allclose(maps.sum(axis=0), 1.0)
    assert set(np.unique(maps)) <= {0.0, 1.0}
    assert maps[1].sum() == pytest.approx(np.pi * 16, rel=0.1)
    assert maps[1, 16, 20] == 1 and maps[2, 40, 40] == 1 and maps[0, 0, 0] == 1
    # the disk is centred on the sub-pixel position
    yy, xx = np.nonzero(maps[1])
    assert xx.mean() == pytest.approx(20.3, abs=0.15) and yy.mean() == pytest.approx(15.7, abs=0.15)


def test_gaussian_maps_peak_at_the_site_and_overlaps_go_to_the_nearer():
    maps = class_maps(np.array([[10.0, 10.0], [13.0, 10.0]]), np.array([1, 2]), (24, 24), 2, 1.5, kind="gaussian")
    assert maps[1, 10, 10] == pytest.approx(1.0)
    assert maps[2, 10, 13] == pytest.approx(1.0)
    assert maps[1, 10, 11] > 0 and maps[2, 10, 11] == 0  # pixel 11 is nearer site 1
    assert maps[1, 10, 12] == 0 and maps[2, 10, 12] > 0
    np.testing.assert_allclose(maps.sum(axis=0), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="label kind"):
        class_maps(np.zeros((1, 2)), np.ones(1, int), (8, 8), 1, 1.0, kind="square")


def test_height_map_paints_column_heights():
    h = height_map(np.array([[5.0, 5.0], [15.0, 5.0]]), np.array([3, 7]), (12, 20), 2.0)
    assert h.shape == (1, 12, 20) and h.dtype == np.uint8
    assert h[0, 5, 5] == 3 and h[0, 5, 15] == 7 and h[0, 0, 0] == 0


# -- configs --------------------------------------------------------------------------


@pytest.mark.parametrize("system", ["graphene", "gold", "mos2"])
def test_config_round_trips_through_toml_and_json(system, tmp_path):
    cfg = default_config(system)
    assert SimulationConfig.from_toml(cfg.to_toml()) == cfg
    assert SimulationConfig.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "c.toml"
    text = cfg.to_toml().replace("[microscope]", "[simulation.microscope]").replace("[structure]", "[simulation.structure]")
    path.write_text("[simulation]\n" + text)
    assert load_config(path, system) == cfg


def test_config_errors():
    with pytest.raises(ValueError, match="unknown system"):
        default_config("silicon")
    with pytest.raises(ValueError, match="too small"):
        default_config("graphene").replace(box_px=(100,))
    with pytest.raises(ValueError, match="unknown simulation setting"):
        SimulationConfig.from_dict({"system": "graphene", "voltage": 3})
    with pytest.raises(ValueError, match="p_uniform_crop"):
        default_config("gold").replace(p_uniform_crop=1.5)


BAD_SETTINGS = [
    # (the [simulation] table, or its [simulation.microscope] table as "microscope"), the message
    ({"draws_per_wave": 0}, "draws_per_wave (images per exit wave) must be an integer >= 1; got 0"),
    ({"draws_per_wave": -3}, "draws_per_wave (images per exit wave) must be an integer >= 1; got -3"),
    ({"label_radius_A": 0.0}, "label_radius_A (Å) must be a number > 0; got 0.0"),
    ({"label_radius_A": -0.4}, "label_radius_A (Å) must be a number > 0"),
    ({"margin_A": -50.0}, "margin_A (Å) must be a number >= 0; got -50.0"),
    ({"wave_oversampling": 0}, "wave_oversampling (exit-wave pixels per output pixel) must be an integer >= 1"),
    ({"frames": 2.5}, "frames (images per sample) must be an integer >= 1; got 2.5"),
    ({"frames": "3"}, "frames (images per sample) must be an integer >= 1; got '3'"),
    ({"image_px": "128"}, "image_px (pixels) must be an integer >= 16; got '128'"),
    ({"image_px": 128.0}, "image_px (pixels) must be an integer >= 16; got 128.0"),
    ({"image_px": 8}, "image_px (pixels) must be an integer >= 16; got 8"),
    ({"samples_per_job": 0}, "samples_per_job (samples) must be an integer >= 1; got 0"),
    ({"samples_per_job": -8}, "samples_per_job (samples) must be an integer >= 1; got -8"),
    ({"max_sites": 0}, "max_sites (sites per sample) must be an integer >= 1"),
    ({"frozen_phonons": -1}, "frozen_phonons (configurations) must be an integer >= 0"),
    ({"slice_thickness_A": 0.0}, "slice_thickness_A (Å) must be a number > 0"),
    ({"drift_px": -1.0}, "drift_px (pixels) must be a number >= 0"),
    ({"focal_step_A": [100.0]}, "focal_step_A (Å) must be [low, high] (equal bounds fix it), two finite numbers; got [100.0]"),
    ({"focal_step_A": 100.0}, "focal_step_A (Å) must be [low, high]"),
    ({"focal_step_A": [120.0, 40.0]}, "focal_step_A (Å) must be [low, high] with low <= high; got [120.0, 40.0]"),
    ({"carbon_thickness_A": [20.0, 3.0]}, "carbon_thickness_A (Å) must be [low, high] with low <= high"),
    ({"contamination_radius_A": [-5.0, 20.0]}, "contamination_radius_A (Å) must be [low, high] with both numbers >= 0"),
    ({"box_px": 360}, "box_px (pixels) must be a list of integers, e.g. [360]; got 360"),
    ({"box_px": []}, "box_px (pixels) must be a list of integers"),
    ({"box_px": [360.5]}, "box_px (pixels) must be an integer >= 1; got 360.5"),
    ({"p_empty_field": "0.1"}, "p_empty_field (probability) must be a number in [0, 1]; got '0.1'"),
    ({"label_kind": "box"}, "unknown label_kind 'box': use 'disk' or 'gaussian'"),
    ({"structure": {"hole_densty_nm2": [0.0, 0.01]}}, "structure (graphene): unknown GrapheneConfig setting(s): hole_densty_nm2"),
    ({"system": "gold", "box_px": [200], "image_px": 32, "margin_A": 1.0, "microscope": {"sampling_A": 0.12}},
     "box_px 200 is too small for a gold structure: the box is 22.8 Å at the smallest pixel size, the builder needs >= 25.5 Å"),
    # the microscope ranges
    ({"microscope": {"dose_e_per_A2": [0.0, 100.0]}}, "dose_e_per_A2 (e/Å²) must be [low, high] with both numbers > 0"),
    ({"microscope": {"dose_e_per_A2": [-5.0, 100.0]}}, "dose_e_per_A2 (e/Å²) must be [low, high] with both numbers > 0"),
    ({"microscope": {"dose_e_per_A2": [100.0, float("inf")]}}, "[inf, inf] for no shot noise"),
    ({"microscope": {"dose_e_per_A2": [1e5, 1e2]}}, "dose_e_per_A2 (e/Å²) must be [low, high] with low <= high"),
    ({"microscope": {"dose_e_per_A2": 1000.0}}, "dose_e_per_A2 (e/Å²) must be [low, high] (equal bounds fix it)"),
    ({"microscope": {"C5_A": [5e6, 0.0]}}, "C5_A (Å) must be [low, high] with low <= high"),
    ({"microscope": {"astigmatism_A": [30.0, 0.0]}}, "astigmatism_A (Å) must be [low, high] with low <= high"),
    ({"microscope": {"astigmatism_A": [-1.0, 0.0]}}, "astigmatism_A (Å) must be [low, high] with both numbers >= 0"),
    ({"microscope": {"coma_A": [300.0, 0.0]}}, "coma_A (Å) must be [low, high] with low <= high"),
    ({"microscope": {"focal_spread_A": 25.0}}, "focal_spread_A (Å) must be [low, high]"),
    ({"microscope": {"angular_spread_mrad": [0.5, 0.05]}}, "angular_spread_mrad (mrad) must be [low, high] with low <= high"),
    ({"microscope": {"aperture_resolution_A": [0.0, 1.1]}}, "aperture_resolution_A (Å) must be [low, high] with both numbers > 0"),
    ({"microscope": {"defocus_around_scherzer_A": [250.0, -250.0]}}, "defocus_around_scherzer_A (Å) must be [low, high] with low <= high"),
    ({"microscope": {"corrected_defocus_A": [150.0, -150.0]}}, "corrected_defocus_A (Å) must be [low, high] with low <= high"),
    ({"microscope": {"corrected_defocus_A": [1.0, 2.0, 3.0]}}, "corrected_defocus_A (Å) must be [] or [low, high]"),
    ({"microscope": {"Cs_corrected_A": [35e4, -35e4]}}, "Cs_corrected_A (Å) must be [low, high] with low <= high"),
    ({"microscope": {"Cs_uncorrected_A": [1.2e7, 0.5e7]}}, "Cs_uncorrected_A (Å) must be [low, high] with low <= high"),
    ({"microscope": {"Cs_uncorrected_A": [1.2, 1.2]}}, "1.2 looks like mm typed as Å"),
    ({"microscope": {"defocus_curvature_A": [60.0, -60.0]}}, "defocus_curvature_A (Å) must be [low, high] with low <= high"),
    ({"microscope": {"mtf_c0": [0.0, 1.5]}}, "mtf_c0 (MTF at high frequency) must be [low, high] with both numbers in [0, 1]"),
    ({"microscope": {"mtf_c1": [0.0, 1.0]}}, "mtf_c1 (Nyquist) must be [low, high] with both numbers > 0"),
    ({"microscope": {"mtf_c2": [3.0, 1.5]}}, "mtf_c2 (exponent) must be [low, high] with low <= high"),
    ({"microscope": {"blur_px": [-0.1, 0.6]}}, "blur_px (pixels) must be [low, high] with both numbers >= 0"),
    ({"microscope": {"gain": [0.0, 20.0]}}, "gain (counts per electron) must be [low, high] with both numbers > 0"),
    ({"microscope": {"gain": [20.0, 0.5]}}, "gain (counts per electron) must be [low, high] with low <= high"),
    ({"microscope": {"offset": [0.5, -0.2]}}, "offset (times the mean counts) must be [low, high] with low <= high"),
    ({"microscope": {"energies_eV": []}}, "energies_eV (eV) must be a list of numbers, e.g. [300000.0] for 300 kV; got []"),
    ({"microscope": {"energies_eV": 300e3}}, "energies_eV (eV) must be a list of numbers"),
    ({"microscope": {"energies_eV": ["80 kV"]}}, "energies_eV (eV) must be a list of numbers"),
    ({"microscope": {"energies_eV": [300.0]}}, "300 looks like kV typed as eV"),
    ({"microscope": {"energies_eV": [0.0]}}, "energies_eV (eV) must be electron energies in eV (>= 1000"),
    ({"microscope": {"energies_eV": [-80e3]}}, "energies_eV (eV) must be electron energies in eV (>= 1000"),
    ({"microscope": {"sampling_A": 0.0}}, "sampling_A (Å / pixel) must be a number > 0; got 0.0"),
    ({"microscope": {"sampling_A": -0.1}}, "sampling_A (Å / pixel) must be a number > 0"),
    ({"microscope": {"sampling_jitter": 2.0}}, "sampling_jitter (relative) must be a number in [0, 0.5); got 2.0"),
    ({"microscope": {"sampling_jitter": 0.5}}, "sampling_jitter (relative) must be a number in [0, 0.5)"),
    ({"microscope": {"sampling_jitter": -0.05}}, "sampling_jitter (relative) must be a number in [0, 0.5)"),
    ({"microscope": {"p_corrected": 1.5}}, "p_corrected must be a probability in [0, 1]; got 1.5"),
    ({"microscope": {"p_objective_aperture": -0.1}}, "p_objective_aperture must be a probability in [0, 1]"),
    ({"microscope": {"p_defocus_variation": "0.3"}}, "p_defocus_variation must be a probability in [0, 1]"),
    ({"microscope": {"uncorrected_min_energy_eV": -1.0}}, "uncorrected_min_energy_eV (eV) must be a number >= 0"),
    ({"microscope": {"defocus_gradient_max": -1.5}}, "defocus_gradient_max (Å per Å) must be a number >= 0"),
]


@pytest.mark.parametrize("settings, message", BAD_SETTINGS)
def test_bad_settings_are_one_line_errors_naming_the_field(settings, message):
    with pytest.raises(ValueError) as info:
        SimulationConfig.from_dict({"system": "graphene", **settings})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_draws_per_wave_zero_is_refused_not_a_hang():
    with pytest.raises(ValueError, match="draws_per_wave"):
        generate_job({"system": "graphene", "draws_per_wave": 0}, 0, 0, 2)


@pytest.mark.parametrize("n, seed, message", [(2, -1, "seed must be an integer >= 0; got -1"),
                                              (2, 1.5, "seed must be an integer >= 0"),
                                              (0, 0, "n (samples) must be an integer >= 1; got 0")])
def test_simulate_to_store_checks_n_and_seed_before_making_the_store(tmp_path, n, seed, message):
    with pytest.raises(ValueError) as info:
        simulate_to_store(tiny(), n, tmp_path / "s.zarr", seed=seed, workers=0)
    assert message in str(info.value)
    assert not list(tmp_path.iterdir())


def test_edge_values_that_are_valid_stay_valid():
    from atomfinder.imaging.microscope import MicroscopeRanges

    # no shot noise, from TOML (inf) or JSON (the string "inf"); equal bounds fix a parameter
    for dose in ([float("inf"), float("inf")], ["inf", "inf"]):
        assert MicroscopeRanges.from_dict({"dose_e_per_A2": dose}).dose_e_per_A2 == (float("inf"),) * 2
    fixed = SimulationConfig.from_dict({"system": "graphene", "margin_A": 0.0, "focal_step_A": [50.0, 50.0],
                                        "microscope": {"dose_e_per_A2": [1e3, 1e3], "sampling_jitter": 0.0,
                                                       "uncorrected_min_energy_eV": 0.0, "p_corrected": 0.0}})
    assert fixed.microscope.dose_e_per_A2 == (1e3, 1e3) and fixed.margin_A == 0.0
    for system in ("graphene", "gold", "mos2"):
        default_config(system)


@pytest.mark.parametrize("name, text, message", [
    ("c.toml", "[simulation]\nimage_px = 128\n[microscope]\nenergies_eV = [300000.0]\n",
     "unknown top-level table(s) or key(s) [microscope] beside [simulation]: simulation settings go in [simulation], "
     "microscope settings in [simulation.microscope]"),
    ("c.toml", "[simulation]\nimage_px = 128\n[simulaton.microscope]\nenergies_eV = [300000.0]\n",
     "unknown top-level table(s) or key(s) [simulaton] beside [simulation]"),
    ("c.toml", "image_px = 128\n[simulation]\nframes = 1\n", "unknown top-level table(s) or key(s) image_px"),
    ("c.toml", "[simulaton]\nimage_px = 128\n", "unknown table(s) [simulaton] and no [simulation] table"),
    ("c.toml", "[simulation]\nimage_px = \n", "c.toml: not valid TOML (Invalid value"),
    ("c.json", '{"simulation": {"image_px": 128,}}', "c.json: not valid JSON"),
    ("c.json", "[1, 2]", "c.json: a JSON config must be a table of settings"),
    ("c.yaml", "simulation:\n  image_px: 128\n", "c.yaml: not valid TOML"),
    ("c.toml", "[simulation]\ndraws_per_wave = 0\n", "c.toml: draws_per_wave (images per exit wave) must be"),
])
def test_config_file_errors_name_the_file(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_config(path, "graphene")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_config_file_may_hold_a_train_table_and_top_level_fields(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[simulation]\nimage_px = 128\n[train]\nepochs = 1\n")
    assert load_config(path, "graphene").image_px == 128
    path.write_text("image_px = 128\n[microscope]\nenergies_eV = [300000.0]\n")  # the layout of to_toml()
    assert load_config(path, "graphene").microscope.energies_eV == (300000.0,)


def test_structure_table_overrides_single_fields_of_the_recipe(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[simulation]\nsystem = "gold"\n[simulation.structure]\np_support = 0.0\n')
    assert load_config(path, "gold").structure == {"column_rule": "density_peaks", "p_support": 0.0}
    path.write_text("[simulation]\n[simulation.structure]\np_clean = 0.0\n")
    assert load_config(path, "graphene").structure == default_config("graphene").structure | {"p_clean": 0.0}
    # a store's recorded config is rebuilt as it is
    assert SimulationConfig.from_dict({"system": "gold", "structure": {"p_support": 0.8}}).structure == {"p_support": 0.8}


def test_recipes_written_for_a_replaced_structure_table_keep_their_structures():
    """gold 0.1-0.3 were made with GoldConfig's column rule, graphene 0.2 with GrapheneConfig's holes."""
    from pathlib import Path

    from atomfinder.structures.gold import GoldConfig
    from atomfinder.structures.graphene import GrapheneConfig

    configs = Path(__file__).parent.parent / "configs"
    for name in ("gold-0.1-simulation", "gold-0.2-simulation", "gold-0.3-simulation"):
        structure = GoldConfig.from_dict(load_config(configs / f"{name}.toml", "gold").structure)
        assert structure.column_rule == "separation" == GoldConfig().column_rule, name
    graphene = load_config(configs / "graphene-0.2-simulation.toml", "graphene").structure
    assert GrapheneConfig.from_dict(graphene) == GrapheneConfig()


# -- generation -----------------------------------------------------------------------


def test_generate_job_is_deterministic_and_labelled():
    cfg = tiny()
    a = generate_job(cfg, 7, 0, 2)
    b = generate_job(cfg, 7, 0, 2)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    c = generate_job(cfg, 8, 0, 2)
    assert not np.array_equal(a["images"], c["images"])
    assert a["images"].shape == (2, 1, 48, 48) and a["targets"].shape == (2, 2, 48, 48)
    assert np.all(a["n_sites"] > 10)
    # targets mark the ground-truth sites
    for i in range(2):
        n = a["n_sites"][i]
        xy = np.round(a["sites_A"][i, :n] / a["sampling_A"][i]).astype(int)
        inside = (xy >= 0).all(1) & (xy < 48).all(1)
        assert np.all(a["targets"][i, 1, xy[inside, 1], xy[inside, 0]] == 1)
        assert np.isnan(a["sites_A"][i, n:]).all()


def test_negatives_empty_fields_and_contamination():
    from atomfinder.datasets.generate import build_structure

    rng = np.random.default_rng(0)
    carbon = build_structure(tiny(p_empty_field=1.0, p_empty_carbon=1.0), rng, 20.0)
    vacuum = build_structure(tiny(p_empty_field=1.0, p_empty_carbon=0.0), rng, 20.0)
    assert len(carbon.sites) == 0 and len(vacuum.sites) == 0
    assert len(carbon.atoms) > 50 and set(carbon.atoms.get_chemical_symbols()) == {"C"}
    assert len(vacuum.atoms) == 0 and carbon.info["empty_field"]
    # contamination: more atoms on top of the same sheet, every sheet site still labelled
    plain = build_structure(tiny(p_empty_field=0.0, p_contamination=0.0), np.random.default_rng(1), 30.0)
    dirty = build_structure(tiny(p_empty_field=0.0, p_contamination=1.0), np.random.default_rng(1), 30.0)
    np.testing.assert_array_equal(dirty.sites.positions_A, plain.sites.positions_A)
    assert len(dirty.atoms) > len(plain.atoms)
    assert dirty.atoms.positions[len(plain.atoms):, 2].min() >= plain.atoms.positions[:, 2].max()
    # an empty field images as a sample without sites and with blank targets
    job = generate_job(tiny(p_empty_field=1.0), 3, 0, 2)
    assert np.all(job["n_sites"] == 0) and job["targets"][:, 1].sum() == 0
    assert np.all(np.isfinite(job["images"])) and job["images"].std() > 0  # shot noise
    with pytest.raises(ValueError, match="p_empty_field"):
        tiny(p_empty_field=1.5)


def test_job_structure_is_the_structure_a_job_images():
    cfg = tiny()
    _, imaged = next(iter_structure_images(cfg, np.random.default_rng([7, 3]), 1))
    rebuilt = job_structure(cfg, 7, 3)
    np.testing.assert_array_equal(rebuilt.atoms.positions, imaged.atoms.positions)
    np.testing.assert_array_equal(rebuilt.sites.positions_A, imaged.sites.positions_A)
    assert not np.array_equal(job_structure(cfg, 7, 4).atoms.positions[:5], rebuilt.atoms.positions[:5])


def test_focal_series_and_heights():
    mos2 = generate_job(tiny("mos2"), 1, 0, 2)
    assert mos2["images"].shape == (2, 3, 48, 48) and mos2["targets"].shape[1] == 6
    assert mos2["microscope"].shape[1] == 3
    fields = list(__import__("atomfinder.datasets.generate", fromlist=["x"]).MICROSCOPE_FIELDS)
    df = mos2["microscope"][:, :, fields.index("defocus_A")]
    steps = np.diff(df, axis=1)
    assert np.all((steps >= 40) & (steps <= 120))  # the recipe's focal-step range (issue 14)
    np.testing.assert_allclose(steps[:, 0], steps[:, 1])  # one step per series
    assert np.all(mos2["drift_px"][:, 0] == 0) and np.any(mos2["drift_px"][:, 1:] != 0)


@pytest.mark.slow
def test_gold_heights():
    gold = generate_job(tiny("gold", box_px=(240,), wave_oversampling=1), 1, 0, 2)
    assert "heights" in gold and gold["heights"].max() >= 2


# -- the store ------------------------------------------------------------------------


def _arrays(path):
    store = DatasetStore(path)
    return {k: store.array(k) for k in ("images", "targets", "sites_A", "sites_label", "microscope")}


def test_store_resumes_after_an_interrupted_run(tmp_path):
    cfg = tiny()
    full = simulate_to_store(cfg, 6, tmp_path / "full.zarr", seed=3, workers=0)

    calls = []

    def stop_after_first(done, total):
        calls.append(done)
        if done >= 2:
            raise KeyboardInterrupt

    part = tmp_path / "part.zarr"
    with pytest.raises(KeyboardInterrupt):
        simulate_to_store(cfg, 6, part, seed=3, workers=0, progress=stop_after_first)
    assert len(DatasetStore(part)) == 2  # the finished job is kept, the rest is not visible
    simulate_to_store(cfg, 6, part, seed=3, workers=0)
    a, b = _arrays(full), _arrays(part)
    assert len(DatasetStore(part)) == 6
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # a store cannot be resumed with another seed or size
    with pytest.raises(StoreError, match="different configuration, seed or size; choose another --out"):
        simulate_to_store(cfg, 6, part, seed=4, workers=0)


def test_a_store_without_a_finished_sample_says_so_when_its_configuration_differs(tmp_path):
    """A first run whose first job failed leaves an empty store: the message says it holds nothing."""
    from atomfinder.datasets.store import create_or_resume

    meta = {"n": 2, "frames": 1, "image_px": 8, "class_names": ["C"], "max_sites": 4, "microscope_fields": ["x"],
            "has_heights": False, "samples_per_job": 2, "seed": 0, "config": {}}
    create_or_resume(tmp_path / "s.zarr", meta)
    with pytest.raises(StoreError, match="it holds no finished sample .* delete it and run again"):
        create_or_resume(tmp_path / "s.zarr", meta | {"seed": 1})


TINY_META = {"n": 2, "frames": 1, "image_px": 8, "class_names": ["C"], "max_sites": 4, "microscope_fields": ["x"],
             "has_heights": False, "samples_per_job": 2, "seed": 0, "config": {}}


@pytest.mark.parametrize("kind", ["folder with files", "empty folder", "file", "other zarr group"])
def test_an_existing_path_that_is_not_a_store_is_refused_before_anything_is_written(tmp_path, kind):
    import zarr

    from atomfinder.datasets.store import create_or_resume

    out = tmp_path / "out"
    if kind == "folder with files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif kind == "empty folder":
        out.mkdir()
    elif kind == "file":
        out.write_text("mine")
    else:
        zarr.open_group(str(out), mode="w").attrs["other"] = 1
    before = sorted(p.name for p in out.rglob("*")) if out.is_dir() else out.read_text()
    with pytest.raises(StoreError, match="not a dataset store") as info:
        create_or_resume(out, TINY_META)
    assert "different configuration" not in str(info.value) and "\n" not in str(info.value)
    assert (sorted(p.name for p in out.rglob("*")) if out.is_dir() else out.read_text()) == before


@pytest.mark.parametrize("version, message", [(2, "store version 2 is newer than this atomfinder reads (1)"),
                                              ("1", "store version '1' is unknown"),
                                              (None, "store version None is unknown")])
def test_a_store_of_another_version_is_refused_on_open_and_resume(tmp_path, version, message):
    import zarr

    from atomfinder.datasets.store import create_or_resume

    path = tmp_path / "s.zarr"
    create_or_resume(path, TINY_META)
    DatasetStore(path)  # this version's store opens
    group = zarr.open_group(str(path), mode="a")
    if version is None:
        del group.attrs["store_version"]
    else:
        group.attrs["store_version"] = version
    for open_it in (lambda: DatasetStore(path), lambda: create_or_resume(path, TINY_META)):
        with pytest.raises(StoreError) as info:
            open_it()
        assert message in str(info.value) and "\n" not in str(info.value)


def test_store_survives_kill_9(tmp_path):
    """A real ``kill -9`` of the writing process at a known point (just after its first job of two was
    written: the process SIGKILLs itself from the progress callback, so no clean-up code runs), then the
    same run again: the store holds the first job's samples, then all of them, equal to an unbroken run.
    (test_kill.py kills the `simulate` command at random moments, in the slow set.)"""
    cfg = tiny()
    reference = simulate_to_store(cfg, 4, tmp_path / "ref.zarr", seed=5, workers=0)
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(cfg.to_toml())
    out = tmp_path / "killed.zarr"
    code = ("import os, signal, sys\n"
            "from atomfinder.datasets.generate import SimulationConfig, simulate_to_store\n"
            "def die(done, total):\n"
            "    if done >= 2:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "cfg = SimulationConfig.from_toml(open(sys.argv[1], encoding='utf-8').read())\n"
            "simulate_to_store(cfg, 4, sys.argv[2], seed=5, workers=0, progress=die)\n")
    done = subprocess.run([sys.executable, "-c", code, str(cfg_path), str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert len(DatasetStore(out)) == 2  # the first job is published, the second never began
    simulate_to_store(cfg, 4, out, seed=5, workers=0)
    a, b = _arrays(reference), _arrays(out)
    assert len(DatasetStore(out)) == 4
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no writer's temporaries left


def test_local_pool_and_dask_cluster_give_the_same_samples(tmp_path):
    distributed = pytest.importorskip("distributed")
    cfg = tiny()
    pool = simulate_to_store(cfg, 4, tmp_path / "pool.zarr", seed=11, workers=2)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        dask = simulate_to_store(cfg, 4, tmp_path / "dask.zarr", seed=11, scheduler=cluster.scheduler_address)
    a, b = _arrays(pool), _arrays(dask)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_reading_errors(tmp_path):
    with pytest.raises(StoreError, match="no such"):
        DatasetStore(tmp_path / "missing.zarr")
    (tmp_path / "junk.zarr").mkdir()
    with pytest.raises(StoreError):
        DatasetStore(tmp_path / "junk.zarr")


@pytest.mark.parametrize("system", ["graphene", "gold", "mos2"])
def test_cli_simulate_with_preview(system, tmp_path):
    from typer.testing import CliRunner

    from atomfinder.cli import app

    changes = {"box_px": (240,), "wave_oversampling": 1} if system == "gold" else {}
    cfg = tmp_path / "c.toml"
    cfg.write_text(tiny(system, **changes).to_toml())
    out, png = tmp_path / "d.zarr", tmp_path / "p.png"
    result = CliRunner().invoke(app, ["simulate", "--system", system, "--n", "2", "--out", str(out), "--config", str(cfg),
                                      "--workers", "0", "--preview", str(png)])
    assert result.exit_code == 0, result.output
    assert len(DatasetStore(out)) == 2 and png.stat().st_size > 5000
    # a config for another system is refused in one line
    result = CliRunner().invoke(app, ["simulate", "--system", "graphene" if system != "graphene" else "gold", "--n", "2",
                                      "--out", str(tmp_path / "x.zarr"), "--config", str(cfg)])
    assert result.exit_code == 2 and "config is for system" in result.output


@pytest.mark.parametrize("args, config, message", [
    (["--seed", "-1"], None, "--seed -1: give an integer >= 0"),
    (["--preview", "p.gif"], None, "--preview p.gif: a figure file must end in one of .png"),
    ([], "[simulation]\n[simulation.structure]\nhole_densty_nm2 = [0.0, 0.01]\n", "unknown GrapheneConfig setting(s): hole_densty_nm2"),
    ([], "[simulation]\ndraws_per_wave = 0\n", "draws_per_wave (images per exit wave) must be an integer >= 1"),
    ([], "[simulation]\nimage_px = 128\n[microscope]\nenergies_eV = [300000.0]\n", "microscope settings in [simulation.microscope]"),
    ([], "[simulation]\n[simulation.microscope]\nenergies_eV = [300.0]\n", "300 looks like kV typed as eV"),
    (["--workers", "0", "--scheduler", "tcp://nowhere:8786"], None, "give --workers or --scheduler, not both"),
])
def test_cli_simulate_refuses_bad_input_before_making_a_store(tmp_path, args, config, message):
    from typer.testing import CliRunner

    from atomfinder.cli import app

    if config is not None:
        (tmp_path / "c.toml").write_text(config)
        args = args + ["--config", str(tmp_path / "c.toml")]
    out = tmp_path / "d.zarr"
    result = CliRunner().invoke(app, ["simulate", "--system", "graphene", "--n", "2", "--out", str(out)] + args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists() and not list(tmp_path.glob(".d.zarr*"))


def test_cli_simulate_into_a_folder_that_is_not_a_store_leaves_it_alone(tmp_path):
    from typer.testing import CliRunner

    from atomfinder.cli import app

    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["simulate", "--system", "graphene", "--n", "2", "--out", str(folder)])
    assert result.exit_code == 2 and "not a dataset store" in result.output, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
