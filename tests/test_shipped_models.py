"""The shipped models on the bundled real micrograph (real data are the final judge)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from atomfinder.nn.card import list_models, load_card, resolve_model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "graphene_defect_hrtem.tif"
SAMPLING_A = 0.108  # measured from the example's lattice (examples/README.md)


def test_shipped_models_have_complete_cards():
    for name in list_models():
        stem = resolve_model(name)
        card = load_card(stem)
        assert card.name == name
        assert Path(f"{stem}.safetensors").stat().st_size < 20e6
        assert card.training.get("time_s", 0) > 0 and card.training.get("data", {}).get("seed") is not None
        assert card.evaluation.get("overall"), f"{name}: the card carries no evaluation"


def _clean_region_detections():
    """Detections of the shipped graphene model in a clean lattice region of the real example."""
    import atomfinder

    tifffile = pytest.importorskip("tifffile")
    image = tifffile.imread(EXAMPLE).astype(np.float32)
    region = image[300:460, 250:410]  # clean lattice, away from the line defect and contamination
    table, maps = atomfinder.detect(region, model="graphene", sampling=SAMPLING_A)
    xy = table[["x_angstrom", "y_angstrom"]].to_numpy()
    inner = np.all((xy > 2.0) & (xy < 160 * SAMPLING_A - 2.0), axis=1)
    expected = 0.382 * (160 * SAMPLING_A - 4.0) ** 2  # graphene holds 0.382 atoms per Å²
    return xy, inner, expected, maps


needs_graphene = pytest.mark.skipif("graphene" not in list_models(), reason="no shipped graphene model")


@needs_graphene
def test_graphene_detections_sit_on_the_lattice_of_the_real_example():
    """Detections are atoms, not hexagon centres: neighbours 1.42 Å apart (C-C), none closer
    than 1.1 Å, and no more detections than the lattice has atoms."""
    xy, inner, expected, maps = _clean_region_detections()
    d, _ = cKDTree(xy).query(xy[inner], k=2)
    assert np.median(d[:, 1]) == pytest.approx(1.42, abs=0.08)
    assert d[:, 1].min() > 1.1
    assert inner.sum() <= 1.05 * expected
    assert maps["probabilities"].shape[0] == 2


@needs_graphene
def test_graphene_finds_every_atom_of_a_clean_real_lattice():
    """At least 95 % of the atoms the lattice holds (67 of 67.4 measured). Until the
    peak finder looked for candidates in a disk of the full minimum distance, a
    neighbour's saturated disk hid ~12 % of them."""
    xy, inner, expected, _ = _clean_region_detections()
    assert inner.sum() >= 0.95 * expected


@needs_graphene
def test_bfloat16_finds_the_same_atoms_as_float32_on_the_real_example():
    """Reduced precision (the default on CPUs with native bfloat16) changes no atom."""
    from atomfinder.detection.pipeline import detect_array
    from atomfinder.nn.card import load_model, resolve_model

    tifffile = pytest.importorskip("tifffile")
    image = tifffile.imread(EXAMPLE).astype(np.float32)[:400, :400]
    model, card = load_model(resolve_model("graphene"))
    exact = detect_array(model, card, image, SAMPLING_A, precision="float32").atoms
    fast = detect_array(model, card, image, SAMPLING_A, precision="bfloat16").atoms
    assert len(exact) > 300
    d, _ = cKDTree(fast.xy).query(exact.xy)
    assert abs(len(fast) - len(exact)) <= 0.01 * len(exact)
    assert np.mean(d * SAMPLING_A < 0.05) >= 0.99  # the same atoms, within 0.05 Å


def test_shipped_cards_state_the_validity_range_of_their_recipe():
    """The ``validity`` key is the range read from the card's own training simulation config,
    plus the contrast-to-noise range of images simulated with that config."""
    from atomfinder.nn.validity import validity_range

    for name in list_models():
        card = load_card(resolve_model(name))
        derived = validity_range(card.training["data"]["simulation"])
        assert {k: v for k, v in card.validity.items() if k != "contrast_to_noise"} == derived
        cnr = card.validity["contrast_to_noise"]
        assert 0 < cnr["low"] < cnr["median"] < cnr["high"] and cnr["n_images"] >= 200


def test_models_lists_one_line_per_model_with_its_range():
    from typer.testing import CliRunner

    from atomfinder.cli import app

    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == len(list_models())
    for name, line in zip(list_models(), lines):
        card = load_card(resolve_model(name))
        assert line.startswith(f"{name} {card.version} ") and " kV" in line and "e/Å²" in line


@needs_graphene
def test_models_name_prints_the_card():
    from typer.testing import CliRunner

    from atomfinder.cli import app

    card = load_card(resolve_model("graphene"))
    result = CliRunner().invoke(app, ["models", "graphene"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.startswith(f"graphene {card.version}")
    assert "classes: C; input channels: 1" in text and "validity range:" in text
    assert f"peak threshold: {card.detection['threshold']:g}" in text
    assert f"calibration: per-atom confidence and error bar, fitted on {card.calibration['n_detections']} detections" in text
    assert "60, 80, 120, 200, 300 kV" in text and "Scherzer -250…+250 Å" in text and "dose: 1e2–1e5 e/Å²" in text
    assert "Cs: corrected -35…35 µm; uncorrected none" in text and "0.1 Å/px ±5%" in text
    assert f"time: {card.training['time_s'] / 60:.0f} min" in text and card.training["data"]["store"] in text
    assert f"evaluation on {card.evaluation['data']['store']}" in text
    f1 = card.evaluation["overall"]["0.5"]["f1"]
    assert f"{f1:.3f}" in text


def test_models_name_lists_the_class_log_priors():
    """A card with class priors (mos2-focal's detection.class_log_bias) lists them; the others say nothing."""
    from typer.testing import CliRunner

    from atomfinder.cli import app

    with_priors = []
    for name in list_models():
        card = load_card(resolve_model(name))
        text = CliRunner().invoke(app, ["models", name], env={"COLUMNS": "200"}).output
        assert ("class log-priors" in text) == bool(card.detection.get("class_log_bias")), (name, text)
        if card.detection.get("class_log_bias"):
            with_priors.append(name)
            assert all(c in text for c in card.class_names), text
    assert with_priors == ["mos2-focal"]


@pytest.mark.parametrize("name", ["gold-focal", "mos2-focal"])
def test_models_prints_the_focal_steps_a_focal_model_was_trained_on(name):
    """The input-channel line said "defocus offsets 0, 80, 160 Å", the offsets at the mean step only,
    for models trained on steps of 40-120 Å: it gives the trained range of steps."""
    from typer.testing import CliRunner

    from atomfinder.cli import app

    card = load_card(resolve_model(name))
    lo, hi = card.validity["focal_step_A"]
    result = CliRunner().invoke(app, ["models", name], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    (line,) = [t for t in result.output.splitlines() if "input channels" in t]
    assert f"input channels: 3 (a focal series, trained on focal steps of {lo:g}…{hi:g} Å between frames" in line
    assert "nominal defocus offsets 0, 80, 160 Å at the mean step" in line


def test_models_unknown_name_is_a_one_line_error():
    from typer.testing import CliRunner

    from atomfinder.cli import app

    result = CliRunner().invoke(app, ["models", "no-such-model"])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "no-such-model" in result.output


def test_models_says_when_a_version_reuses_earlier_weights():
    """gold 0.5 is gold 0.4's weights with other detection settings: `models gold` says so."""
    from typer.testing import CliRunner

    from atomfinder.cli import app

    for name in list_models():
        card = load_card(resolve_model(name))
        trained_as = str(card.training.get("config", {}).get("version", card.version))
        out = CliRunner().invoke(app, ["models", name]).output
        assert (f"those trained as {card.name} {trained_as}; {card.version}" in out) == (trained_as != str(card.version))
