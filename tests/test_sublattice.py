"""Class labels limited to each detection's honeycomb sublattice (MoS2: Mo or S side)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from atomfinder.analysis.calibration import class_bias_summary, fit_class_bias
from atomfinder.detection.peaks import biased_labels, find_atoms
from atomfinder.detection.sublattice import (
    Honeycomb,
    allowed_classes,
    bond_phase,
    grid_cell,
    neighbourhood_sum,
    sublattice_of,
)

A_MOS2 = 3.16  # Å
RULE = Honeycomb(sublattices=((1, 4), (2, 3, 5)), bond=(1.4, 2.3), radius=10.0)  # Mo, S, S1, Mo_vac, S_vac


def honeycomb_sites(a: float, n: int, angle_deg: float = 0.0, origin=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Sites of an n x n honeycomb (lattice constant ``a``), turned by ``angle_deg``; and
    which sublattice each is on (0: the first, e.g. Mo; 1: the second)."""
    a1, a2 = np.array([a, 0.0]), np.array([a / 2, a * np.sqrt(3) / 2])
    basis = [np.zeros(2), (a1 + a2) / 3]
    xy, side = [], []
    for i in range(n):
        for j in range(n):
            for s, b in enumerate(basis):
                xy.append(i * a1 + j * a2 + b)
                side.append(s)
    t = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return np.asarray(xy) @ rot.T + np.asarray(origin), np.asarray(side)


def noisy_probabilities(side: np.ndarray, rng, flip: float = 0.25) -> np.ndarray:
    """Class probabilities (5, n) that favour Mo on side 0 and S on side 1, with a share ``flip`` of
    the detections favouring the wrong species (Mo called S or S called Mo)."""
    n = len(side)
    wrong = rng.random(n) < flip
    mo_like = (side == 0) ^ wrong
    q = np.full((5, n), 0.02)
    q[0, mo_like] = 0.9
    q[1, ~mo_like] = 0.9
    return q / q.sum(axis=0)


def test_bond_phase_is_opposite_on_the_two_sublattices():
    xy, side = honeycomb_sites(A_MOS2, 8, angle_deg=17.0)
    z = bond_phase(xy, RULE.bond)
    interior = np.abs(z) > 0.99  # three bonds, perfect angles
    assert interior.sum() > 60
    ref = z[interior & (side == 0)][0]
    np.testing.assert_allclose(z[interior & (side == 0)], ref, atol=1e-9)
    np.testing.assert_allclose(z[interior & (side == 1)], -ref, atol=1e-9)
    # a lone point has no bonds
    assert bond_phase(np.array([[0.0, 0.0], [10.0, 0.0]]), RULE.bond).tolist() == [0, 0]


def test_neighbourhood_sum_weights_near_points_and_ignores_far_ones():
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [200.0, 0.0]])
    got = neighbourhood_sum(xy, np.array([1.0 + 1.0j, 1.0 + 1.0j, 5.0]), radius=10.0, cell=1.0)
    assert got[0] == pytest.approx(got[1]) and got[0].real == pytest.approx(got[0].imag)
    assert got[0].real > 0 and got[2].real > 0
    # the far point's value (5) does not reach the pair, nor theirs it
    alone = neighbourhood_sum(xy[:2], np.array([1.0 + 1.0j, 1.0 + 1.0j]), radius=10.0, cell=1.0)
    np.testing.assert_allclose(got[:2], alone)
    assert got[2] == pytest.approx(neighbourhood_sum(xy[2:], np.array([5.0]), radius=10.0, cell=1.0)[0])
    assert neighbourhood_sum(np.zeros((0, 2)), np.zeros(0), 10.0, 1.0).shape == (0,)
    # the grid stays small whatever the radius: a damaged rule cannot exhaust the memory
    assert grid_cell(xy, 10.0) == pytest.approx(1.25)
    assert grid_cell(xy, 1e-12) == pytest.approx(200.0 / 1024)


@pytest.mark.parametrize("angle", [0.0, 23.0, 71.0])
def test_the_vote_finds_the_mo_sublattice_despite_a_quarter_of_wrong_peaks(angle):
    rng = np.random.default_rng(int(angle))
    xy, side = honeycomb_sites(A_MOS2, 12, angle_deg=angle)
    q = noisy_probabilities(side, rng)
    plain = biased_labels(q)
    assert np.mean(np.isin(plain, (1, 4)) == (side == 0)) < 0.8  # the argmax is wrong for about a quarter
    found = sublattice_of(xy, q, RULE)
    assert np.mean(found == side) > 0.97 and np.all(found[found >= 0] == side[found >= 0])
    labels = biased_labels(q, None, allowed_classes(found, RULE, 5))
    assert np.mean(np.isin(labels, (1, 4)) == (side == 0)) > 0.97


def test_each_grain_votes_on_its_own():
    """Two grains, turned by 13° against each other and with the Mo sublattice on the other basis site
    of the second: each gets its own reference and vote."""
    rng = np.random.default_rng(3)
    xy1, side1 = honeycomb_sites(A_MOS2, 10)
    xy2, side2 = honeycomb_sites(A_MOS2, 10, angle_deg=13.0, origin=(80.0, 0.0))
    side2 = 1 - side2
    xy, side = np.vstack([xy1, xy2]), np.concatenate([side1, side2])
    found = sublattice_of(xy, noisy_probabilities(side, rng, flip=0.2), RULE)
    assert np.mean(found == side) > 0.95
    assert np.all(found[found >= 0] == side[found >= 0])


def test_detections_without_bonds_keep_every_class():
    xy = np.array([[0.0, 0.0], [20.0, 0.0], [40.0, 5.0]])
    q = np.tile(np.array([[0.1], [0.6], [0.1], [0.1], [0.1]]), (1, 3))
    found = sublattice_of(xy, q, RULE)
    assert found.tolist() == [-1, -1, -1]
    assert allowed_classes(found, RULE, 5).all()
    assert sublattice_of(np.zeros((0, 2)), np.zeros((5, 0)), RULE).shape == (0,)


def test_allowed_classes_and_biased_labels_respect_the_sublattice():
    allowed = allowed_classes(np.array([0, 1, -1]), RULE, 5)
    assert allowed[:, 0].tolist() == [True, False, False, True, False]
    assert allowed[:, 1].tolist() == [False, True, True, False, True]
    assert allowed[:, 2].all()
    q = np.array([[0.1, 0.6, 0.1, 0.1, 0.1]] * 3).T  # S is the argmax everywhere
    assert biased_labels(q, None, allowed).tolist() == [1, 2, 2]  # on the Mo side: the best Mo-side class
    assert biased_labels(q, [0, 0, 0, 5, 0], allowed).tolist() == [4, 2, 4]


def test_honeycomb_rule_checks_its_fields_and_scales():
    with pytest.raises(ValueError, match="disjoint"):
        Honeycomb(sublattices=((1, 2), (2, 3)), bond=(1.4, 2.3), radius=10.0)
    with pytest.raises(ValueError, match="bond range"):
        Honeycomb(sublattices=((1,), (2,)), bond=(2.3, 1.4), radius=10.0)
    with pytest.raises(ValueError, match="radius"):
        Honeycomb(sublattices=((1,), (2,)), bond=(1.4, 2.3), radius=2.0)
    rule = Honeycomb.from_card({"sublattices": [["Mo"], ["S", "S1"]], "bond_A": [1.4, 2.3], "radius_A": 10.0},
                               ("Mo", "S", "S1"))
    assert rule.sublattices == ((1,), (2, 3))
    px = rule.scaled(1 / 0.1)
    assert px.bond == pytest.approx((14.0, 23.0)) and px.radius == pytest.approx(100.0)
    with pytest.raises(ValueError, match="lacks"):
        Honeycomb.from_card({"sublattices": [["Mo"], ["Se"]], "bond_A": [1.4, 2.3], "radius_A": 10.0}, ("Mo", "S"))


def test_find_atoms_labels_by_sublattice_on_a_probability_map():
    """Peaks on a honeycomb (in pixels) whose class maps say S on some Mo sites: find_atoms with the
    rule puts every Mo site back on the Mo side."""
    rng = np.random.default_rng(7)
    sampling = 0.2  # Å per pixel
    xy_A, side = honeycomb_sites(A_MOS2, 6, origin=(3.0, 3.0))
    size = int(np.ceil(xy_A.max() / sampling)) + 16
    q = noisy_probabilities(side, rng, flip=0.2)
    p = np.zeros((6, size, size), np.float32)
    yy, xx = np.mgrid[:size, :size]
    for (x, y), col in zip(xy_A / sampling, q.T):
        blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
        p[1:] += (col[:, None, None] * blob).astype(np.float32)
    p[0] = np.clip(1 - p[1:].sum(axis=0), 0, 1)
    plain = find_atoms(p, min_distance_px=5, threshold=0.5)
    ruled = find_atoms(p, min_distance_px=5, threshold=0.5, honeycomb=RULE.scaled(1 / sampling))
    assert len(ruled) == len(plain) == len(xy_A)
    truth = side[np.argmin(np.linalg.norm(xy_A[None] - ruled.xy[:, None] * sampling, axis=2), axis=1)]
    wrong_plain = np.mean(np.isin(plain.label, (1, 4)) != (truth == 0))
    wrong_ruled = np.mean(np.isin(ruled.label, (1, 4)) != (truth == 0))
    assert wrong_plain > 0.1 and wrong_ruled < 0.05


def test_fit_class_bias_softmax_runs_over_the_allowed_classes():
    rng = np.random.default_rng(0)
    n = 4000
    side = rng.integers(0, 2, n)
    true = np.where(side == 0, 1, 2)
    # the network overrates S (class 2): on the Mo side it says 0.4 Mo / 0.6 S, on the S side 0.1 / 0.9
    q = np.where(side[:, None] == 0, [0.4, 0.6], [0.1, 0.9])
    allowed = np.column_stack([side == 0, side == 1])
    unrestricted = fit_class_bias(q, true)
    restricted = fit_class_bias(q, true, allowed=allowed)
    assert unrestricted[1] < -0.1  # without the rule the prior must push S down
    # with it each side has one allowed class: the labels are right whatever the prior, which stays 0
    assert restricted.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    np.testing.assert_array_equal(fit_class_bias(q, true, allowed=np.ones_like(allowed)), unrestricted)
    # a detection whose true class is not allowed is left out of the fit
    assert fit_class_bias(q, true, allowed=~allowed).tolist() == [0.0, 0.0]
    summary = class_bias_summary({"probabilities": q, "true_label": true, "allowed": allowed}, restricted)
    assert summary["label_accuracy_argmax"] == pytest.approx(0.5, abs=0.05)
    assert summary["label_accuracy_biased"] == 1.0


def test_card_validates_the_honeycomb_rule(tmp_path):
    from atomfinder.nn.card import ModelCard, load_card, save_model
    from atomfinder.nn.unet import UNetConfig, build_model

    cfg = UNetConfig(in_channels=1, n_classes=3, depth=1, width=4)
    base = dict(name="t", version="0", architecture=cfg.to_dict(), in_channels=1, class_names=("Mo", "S"),
                sampling_A=0.1, normalization={"kind": "global"})
    rule = {"sublattices": [["Mo"], ["S"]], "bond_A": [1.4, 2.3], "radius_A": 10.0}
    with pytest.raises(ValueError, match="lacks"):
        ModelCard(**base, detection={"honeycomb": rule | {"sublattices": [["Mo"], ["Se"]]}})
    save_model(build_model(cfg), ModelCard(**base, detection={"honeycomb": rule}), tmp_path / "m")
    assert load_card(tmp_path / "m").detection["honeycomb"] == rule
    for broken in (rule | {"bond_A": [2.3, 1.4]}, rule | {"radius_A": 1.0}, rule | {"sublattices": [["Mo"], ["Mo"]]},
                   rule | {"radius_A": 1e300}, rule | {"bond_A": [0.0, 50.0], "radius_A": 60.0}, rule | {"extra": 1}):
        text = json.loads((tmp_path / "m.json").read_text())
        text["detection"]["honeycomb"] = broken
        (tmp_path / "m.json").write_text(json.dumps(text))
        with pytest.raises(Exception, match="honeycomb"):
            load_card(tmp_path / "m")


def test_a_training_recipe_puts_its_honeycomb_rule_in_the_card(tmp_path):
    from atomfinder.nn.train import TrainConfig, TrainingData, make_card
    from atomfinder.nn.unet import UNetConfig

    (tmp_path / "r.toml").write_text(
        '[train]\nname = "m"\nversion = "0"\ndepth = 1\nwidth = 4\n'
        'honeycomb = { sublattices = [["Mo", "Mo_vacancy"], ["S"]], bond_A = [1.4, 2.3], radius_A = 30.0 }\n')
    cfg = TrainConfig.from_toml(tmp_path / "r.toml")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    data = TrainingData(np.zeros((1, 1, 8, 8), np.float32), np.zeros((1, 4, 8, 8), np.float16), None,
                        np.full(1, 0.1), ("Mo", "S", "Mo_vacancy"))
    card = make_card(cfg, UNetConfig(in_channels=1, n_classes=4, depth=1, width=4), data, {}, {})
    assert card.detection["honeycomb"] == {"sublattices": [["Mo", "Mo_vacancy"], ["S"]], "bond_A": [1.4, 2.3],
                                           "radius_A": 30.0}
    plain = make_card(TrainConfig(name="m", version="0", depth=1, width=4),
                      UNetConfig(in_channels=1, n_classes=4, depth=1, width=4), data, {}, {})
    assert "honeycomb" not in plain.detection


def test_the_shipped_mos2_focal_model_labels_by_sublattice():
    from typer.testing import CliRunner

    from atomfinder.cli import app
    from atomfinder.nn.card import load_card, resolve_model

    card = load_card(resolve_model("mos2-focal"))
    rule = Honeycomb.from_card(card.detection["honeycomb"], card.class_names)
    names = [[card.class_names[c - 1] for c in side] for side in rule.sublattices]
    assert names == [["Mo", "Mo_vacancy"], ["S", "S1", "S_vacancy"]]
    # the bonds of MoS2 (a / √3 = 1.84 Å) fall in the range, the second neighbours (a = 3.19 Å) do not
    assert rule.bond[0] < 3.19 / np.sqrt(3) < rule.bond[1] < 3.19
    result = CliRunner().invoke(app, ["models", "mos2-focal"])
    assert result.exit_code == 0 and "classes by sublattice" in result.output
    assert "test-time augmentation: maps averaged" in result.output  # mos2-focal 0.5's card asks for it
