"""Tests of the structure builders (graphene, gold, MoS2, supports): seeded, fast, on real properties."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial import cKDTree

from atomfinder.structures.base import Structure
from atomfinder.structures.gold import SHAPES, GoldConfig, build_gold, resolved_columns
from atomfinder.structures.graphene import DEFECT_KINDS, GrapheneConfig, build_graphene
from atomfinder.structures.mos2 import CLASS_NAMES as MOS2_CLASSES
from atomfinder.structures.mos2 import MoS2Config, build_mos2
from atomfinder.structures.support import CEO2_ORIENTATIONS, amorphous_carbon, ceria_slab

BOX = (40.0, 40.0)
BOND_CUTOFF = 1.75


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def min_distance_pbc(positions: np.ndarray, cell: np.ndarray) -> float:
    """Smallest interatomic distance with periodic x and y (z is not periodic)."""
    pos = np.array(positions, dtype=float)
    box = np.array([cell[0], cell[1], pos[:, 2].max() + 100.0])
    pos[:, 2] -= pos[:, 2].min()
    d, _ = cKDTree(np.mod(pos, box), boxsize=box).query(np.mod(pos, box), k=2)
    return float(d[:, 1].min())


def check_common(s: Structure) -> None:
    """Contract shared by all builders: orthogonal cell, pbc, atoms inside, consistent sites, JSON info."""
    cell = s.atoms.cell[:]
    assert np.allclose(cell, np.diag(np.diag(cell)))
    assert s.atoms.pbc.all()
    lengths = np.diag(cell)
    pos = s.atoms.positions
    assert np.all(pos >= 0) and np.all(pos < lengths)
    assert pos[:, 2].min() >= 2.0 and lengths[2] - pos[:, 2].max() >= 2.0  # vacuum along z
    n = len(s.sites)
    assert s.sites.positions_A.shape == (n, 2)
    assert np.all((s.sites.labels >= 1) & (s.sites.labels <= len(s.class_names)))
    assert np.all(s.sites.heights >= 0)
    json.dumps(s.info)


def same_structure(a: Structure, b: Structure) -> bool:
    return (
        len(a.atoms) == len(b.atoms)
        and np.array_equal(a.atoms.positions, b.atoms.positions)
        and a.atoms.get_chemical_symbols() == b.atoms.get_chemical_symbols()
        and np.array_equal(a.sites.positions_A, b.sites.positions_A)
        and np.array_equal(a.sites.labels, b.sites.labels)
        and np.array_equal(a.sites.heights, b.sites.heights)
        and json.dumps(a.info) == json.dumps(b.info)
    )


def sheet_xy(s: Structure, box=BOX) -> np.ndarray:
    """Projected positions of the sheet atoms (adatoms, well above the sheet, left out)."""
    z = s.atoms.positions[:, 2]
    return s.atoms.positions[z < np.median(z) + 1.5, :2]


def interior(xy: np.ndarray, box=BOX, margin: float = 4.0) -> np.ndarray:
    return np.all((xy > margin) & (xy < np.array(box) - margin), axis=1)


def coordination(xy: np.ndarray) -> np.ndarray:
    pairs = cKDTree(xy).query_pairs(BOND_CUTOFF, output_type="ndarray")
    return np.bincount(pairs.ravel(), minlength=len(xy))


def ring_sizes(xy: np.ndarray, box=BOX, margin: float = 4.0, max_size: int = 10) -> Counter:
    """Sizes of the rings (faces of the planar bond graph) whose centre lies in the interior."""
    pairs = cKDTree(xy).query_pairs(BOND_CUTOFF, output_type="ndarray")
    nbrs: list[list[int]] = [[] for _ in range(len(xy))]
    for i, j in pairs:
        nbrs[i].append(int(j))
        nbrs[j].append(int(i))
    order = []
    for v, ns in enumerate(nbrs):
        ang = [math.atan2(xy[n, 1] - xy[v, 1], xy[n, 0] - xy[v, 0]) for n in ns]
        order.append([n for _, n in sorted(zip(ang, ns))])
    seen: set[tuple[int, int]] = set()
    sizes: Counter = Counter()
    for u in range(len(xy)):
        for v in nbrs[u]:
            if (u, v) in seen:
                continue
            face, a, b = [u], u, v
            while True:
                seen.add((a, b))
                ns = order[b]
                c = ns[(ns.index(a) - 1) % len(ns)]
                a, b = b, c
                if (a, b) == (u, v):
                    break
                face.append(a)
                if len(face) > max_size:
                    break
            if len(face) <= max_size and interior(xy[face].mean(axis=0)[None], box, margin)[0]:
                sizes[len(face)] += 1
    return sizes


# --------------------------------------------------------------------------------------
# graphene
# --------------------------------------------------------------------------------------
def only(kind: str | None, density: float = 0.3, **kw) -> GrapheneConfig:
    """A config with one defect kind forced on (or none), no ripples."""
    dens = {f"{k}_density_nm2": (0.0, 0.0) for k in DEFECT_KINDS}
    if kind is not None:
        dens[f"{kind}_density_nm2"] = (density, density)
    base = dict(p_clean=0.0, p_each_kind=1.0, p_grain_boundary=0.0, ripple_rms_A=(0.0, 0.0))
    base.update(kw)
    return GrapheneConfig(**dens, **base)


def test_graphene_is_deterministic():
    a = build_graphene(rng(3), BOX)
    b = build_graphene(rng(3), BOX)
    c = build_graphene(rng(4), BOX)
    assert same_structure(a, b)
    assert not same_structure(a, c)


@pytest.mark.parametrize("seed", range(6))
def test_graphene_contract_and_min_distance(seed):
    s = build_graphene(rng(seed), BOX)
    check_common(s)
    assert s.class_names == ("C",)
    # one site per atom (adatoms and substituents included), exactly at the atom
    assert len(s.sites) == len(s.atoms)
    assert np.array_equal(s.sites.positions_A, s.atoms.positions[:, :2])
    assert np.all(s.sites.labels == 1) and np.all(s.sites.heights == 1)
    assert min_distance_pbc(s.atoms.positions, np.diag(s.atoms.cell[:])) > 1.1
    # C density close to graphene's 0.382 atoms/Å² (defects remove a few)
    assert 0.30 < len(s.atoms) / (BOX[0] * BOX[1]) < 0.40


def test_graphene_heavy_disorder_keeps_atoms_apart():
    cfg = GrapheneConfig(p_clean=0.0, p_each_kind=1.0, p_grain_boundary=1.0, **{
        f"{k}_density_nm2": (0.1, 0.2) for k in DEFECT_KINDS})
    for seed in range(3):
        s = build_graphene(rng(seed), BOX, cfg)
        check_common(s)
        assert min_distance_pbc(s.atoms.positions, np.diag(s.atoms.cell[:])) > 1.1
        assert s.info["n_domains"] >= 2
        xy = sheet_xy(s)
        assert 3 not in ring_sizes(xy) and 4 not in ring_sizes(xy)


def test_graphene_clean_sheet_is_perfect():
    s = build_graphene(rng(0), BOX, GrapheneConfig(p_clean=1.0, ripple_rms_A=(0.0, 0.0)))
    assert s.info["clean"]
    xy = s.atoms.positions[:, :2]
    assert np.all(coordination(xy)[interior(xy)] == 3)
    rings = ring_sizes(xy)
    assert set(rings) == {6} and rings[6] > 50
    assert set(s.atoms.get_chemical_symbols()) == {"C"}


def _counts(s: Structure, kind: str) -> int:
    value = s.info["counts"][kind]
    return sum(value.values()) if isinstance(value, dict) else value


@pytest.mark.parametrize(
    "kind, check",
    [
        ("vacancy", "dangling"),
        ("divacancy", "dangling"),
        ("stone_wales", {5, 7}),
        ("divacancy_585", {5, 8}),
        ("divacancy_555777", {5, 7}),
        ("ring_reconstruction", "non6"),
        ("rotated_patch", "non6"),
        ("dislocation_dipole", "non6"),
        ("hole", "dangling"),
    ],
)
def test_graphene_forced_defect_changes_structure(kind, check):
    s = build_graphene(rng(1), BOX, only(kind))
    assert _counts(s, kind) > 0
    kinds_in_info = {d["kind"] for d in s.info["defects"]}
    assert kinds_in_info <= {kind, "dislocation"}
    xy = sheet_xy(s)
    rings = ring_sizes(xy)
    if check == "dangling":  # removed atoms leave two-fold coordinated neighbours
        assert np.sum(coordination(xy)[interior(xy, margin=2.0)] == 2) >= 3
    elif check == "non6":
        assert sum(n for size, n in rings.items() if size != 6) >= 2
    else:
        assert check <= set(rings), rings
    if kind == "stone_wales":  # a bond rotation keeps every atom three-fold coordinated
        assert 8 not in rings and np.all(coordination(xy)[interior(xy, margin=3.0)] == 3)
    if kind == "divacancy_555777":
        assert rings[5] >= 3 and rings[7] >= 3 and 8 not in rings


def test_graphene_grain_boundary():
    s = build_graphene(rng(2), BOX, only(None, p_grain_boundary=1.0))
    assert s.info["n_domains"] >= 2
    angles = s.info["domain_angles_deg"]
    assert len(set(np.round(angles, 3))) == len(angles)
    rings = ring_sizes(sheet_xy(s))
    assert sum(n for size, n in rings.items() if size != 6) >= 2
    assert min_distance_pbc(s.atoms.positions, np.diag(s.atoms.cell[:])) > 1.1


def test_graphene_substitutions_and_adatoms():
    cfg = only("substitution", 0.2)
    cfg = replace(cfg, adatom_density_nm2=(0.2, 0.2))
    s = build_graphene(rng(5), BOX, cfg)
    symbols = np.array(s.atoms.get_chemical_symbols())
    n_sub = sum(s.info["counts"]["substitution"].values())
    n_ad = sum(s.info["counts"]["adatom"].values())
    assert n_sub > 0 and n_ad > 0
    assert np.sum(np.isin(symbols, ["Si", "N"])) >= n_sub
    z = s.atoms.positions[:, 2]
    high = z > np.median(z) + 1.5
    assert high.sum() == n_ad  # adatoms sit ~2 Å above the sheet
    # every adatom is a labelled site, over a bond centre (0.71 Å from two atoms in projection)
    d, _ = cKDTree(s.atoms.positions[~high, :2]).query(s.atoms.positions[high, :2], k=2)
    assert np.allclose(d, 0.71, atol=0.1)


def test_graphene_ripple_and_strain():
    flat = build_graphene(rng(0), BOX, GrapheneConfig(p_clean=1.0, ripple_rms_A=(0.0, 0.0), max_strain=0.0))
    assert np.ptp(flat.atoms.positions[:, 2]) < 1e-9
    xy = flat.atoms.positions[:, :2]
    d, _ = cKDTree(xy).query(xy[interior(xy)], k=4)
    assert np.allclose(d[:, 1:], 1.42, atol=1e-6)
    rippled = build_graphene(rng(0), BOX, GrapheneConfig(p_clean=1.0, ripple_rms_A=(0.5, 0.5), max_strain=0.02))
    assert 0.1 < np.std(rippled.atoms.positions[:, 2]) < 1.5
    assert np.abs(np.array(rippled.info["strain"])).max() <= 0.02


def test_graphene_config_round_trip():
    cfg = GrapheneConfig(p_clean=0.3, hole_radius_A=(2.0, 5.0), adatom_elements=("Si",))
    data = json.loads(json.dumps(cfg.to_dict()))
    assert GrapheneConfig.from_dict(data) == cfg
    assert GrapheneConfig.from_dict({}) == GrapheneConfig()
    with pytest.raises(ValueError):
        GrapheneConfig.from_dict({"not_a_field": 1})
    with pytest.raises(ValueError):
        GrapheneConfig(vacancy_density_nm2=(0.2, 0.1))


# --------------------------------------------------------------------------------------
# gold
# --------------------------------------------------------------------------------------
def gold_config(shape: str, **kw) -> GoldConfig:
    return GoldConfig(shapes=(shape,), shape_weights=(1.0,), **kw)


def au_positions(s: Structure) -> np.ndarray:
    symbols = np.array(s.atoms.get_chemical_symbols())
    return s.atoms.positions[symbols == "Au"]


def test_gold_is_deterministic():
    assert same_structure(build_gold(rng(7), BOX), build_gold(rng(7), BOX))
    assert not same_structure(build_gold(rng(7), BOX), build_gold(rng(8), BOX))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("supported", [False, True])
@pytest.mark.parametrize("rule", ["separation", "density_peaks"])
def test_gold_contract(shape, supported, rule):
    s = build_gold(rng(11), BOX, gold_config(shape, p_support=float(supported), diameter_A=(15.0, 25.0),
                                            column_rule=rule))
    check_common(s)
    assert s.class_names == ("Au",)
    au = au_positions(s)
    assert cKDTree(au).query(au, k=2)[0][:, 1].min() > 2.5
    # support atoms never counted; Au atoms of unresolved columns counted apart
    assert s.sites.heights.sum() + s.info["n_au_unlabelled"] == len(au) == s.info["n_au"]
    assert np.all(s.sites.labels == 1) and np.all(s.sites.heights >= 1)
    assert s.info["shape"] == shape
    symbols = set(s.atoms.get_chemical_symbols())
    assert symbols == ({"Au", "Ce", "O"} if supported else {"Au"})
    if not supported:  # >= 5 Å vacuum to every lateral edge
        assert np.all(au[:, :2] >= 5.0 - 1e-9) and np.all(au[:, :2] <= np.array(BOX) - 5.0 + 1e-9)


@pytest.mark.parametrize("shape, zone", [("wulff", "100"), ("truncated_octahedron", "110"),
                                         ("truncated_octahedron", "111"), ("twinned", None),
                                         ("decahedron", None)])
def test_gold_columns_match_atoms_untilted(shape, zone):
    kw = dict(max_mistilt_deg=0.0, diameter_A=(20.0, 30.0), n_adatoms=(3, 3), surface_vacancy_fraction=(0.1, 0.1))
    if zone:
        kw["zone_axes"] = (zone,)
    for seed in range(3):
        s = build_gold(rng(seed), BOX, gold_config(shape, **kw))
        if shape == "decahedron" and s.info["zone_axis"] != "5fold":
            continue
        au = au_positions(s)[:, :2]
        counts = cKDTree(au).query_ball_point(s.sites.positions_A, 0.4, return_length=True)
        assert np.array_equal(counts, s.sites.heights)
        assert s.info["n_surface_removed"] > 0 and s.info["n_adatoms"] > 0
        # a zone axis: atoms stack into columns
        assert s.info["n_au"] / len(s.sites) > 1.5


def test_resolved_columns_hand_made():
    # columns of two atoms: 0 and 1 are 0.8 Å apart (crowded); 2 is 2.0 Å from 1 (the
    # rim of the crowded pair); 3 is 5 Å away, 4 is 1.5 Å from 3; a single atom (5)
    # sits 0.6 Å from 4
    centres = np.array([[0.0, 0.0], [0.8, 0.0], [2.8, 0.0], [10.0, 0.0], [11.5, 0.0]])
    xy = np.concatenate([np.repeat(centres, 2, axis=0), [[11.5, 0.6]]])
    column = np.concatenate([np.repeat(np.arange(5), 2), [5]])
    ok = resolved_columns(xy, column, 6, 1.2)
    assert ok.tolist() == [False, False, False, True, True, False]
    assert resolved_columns(xy, column, 6, 0.0).all()


@pytest.mark.parametrize("shape", ["decahedron", "icosahedron", "wulff", "truncated_octahedron", "twinned"])
def test_gold_labels_only_resolvable_columns(shape):
    """Off-axis segments (decahedra seen along 2-fold axes, icosahedra) make sub-Å "columns"
    that are not labelled; single-crystal and twinned particles in a zone axis lose none."""
    cfg = gold_config(shape, max_mistilt_deg=0.0, p_support=0.0, diameter_A=(20.0, 30.0))
    for seed in range(4):
        s = build_gold(rng(seed), BOX, cfg)
        xy = s.sites.positions_A
        if len(xy) > 1:
            assert cKDTree(xy).query(xy, k=2)[0][:, 1].min() >= 1.2 - 1e-9
        if shape in ("wulff", "truncated_octahedron", "twinned"):
            assert s.info["n_unresolved_columns"] == 0 and s.info["n_au_unlabelled"] == 0
        if shape == "decahedron" and s.info["zone_axis"] == "5fold":  # all five segments in <110>
            assert s.info["n_unresolved_columns"] <= s.info["n_adatoms"]  # at most an adatom off a column
        if shape == "decahedron" and s.info["zone_axis"] == "2fold":
            assert s.info["n_unresolved_columns"] > 0


def _nn_directions(pos: np.ndarray) -> int:
    """Number of distinct nearest-neighbour bond directions (up to sign)."""
    pairs = cKDTree(pos).query_pairs(3.0, output_type="ndarray")
    v = pos[pairs[:, 1]] - pos[pairs[:, 0]]
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    first = np.argmax(np.abs(v) > 1e-3, axis=1)  # fold v and -v: first non-zero component positive
    v *= np.sign(v[np.arange(len(v)), first])[:, None]
    return len(np.unique(np.round(v, 3), axis=0))


def test_gold_twin_is_a_mirror_of_fcc():
    kw = dict(max_mistilt_deg=0.0, n_adatoms=(0, 0), surface_vacancy_fraction=(0.0, 0.0), p_support=0.0)
    twin = au_positions(build_gold(rng(4), BOX, gold_config("twinned", **kw)))
    single = au_positions(build_gold(rng(4), BOX, gold_config("truncated_octahedron", **kw)))
    # every neighbour at the fcc distance, but the twin adds the mirrored crystal's bond directions
    assert np.allclose(cKDTree(twin).query(twin, k=2)[0][:, 1], 4.08 / np.sqrt(2), atol=1e-6)
    assert _nn_directions(single) == 6
    assert _nn_directions(twin) == 9


def test_gold_mistilt_moves_atoms_off_columns():
    s = build_gold(rng(2), BOX, gold_config("truncated_octahedron", max_mistilt_deg=3.0, diameter_A=(30.0, 30.0)))
    assert 0 < s.info["mistilt_deg"] <= 3.0
    au = au_positions(s)[:, :2]
    assert s.sites.heights.sum() == len(au)
    # each column's site is the mean of its atoms: its nearest atom lies close, within the tilt spread
    d, _ = cKDTree(au).query(s.sites.positions_A, k=1)
    spread = np.ptp(au_positions(s)[:, 2]) * np.sin(np.deg2rad(3.0))
    assert d.max() <= 0.5 * spread + 0.05


def test_gold_support_is_unlabelled_background():
    s = build_gold(rng(5), BOX, gold_config("wulff", p_support=1.0, max_mistilt_deg=0.0))
    symbols = np.array(s.atoms.get_chemical_symbols())
    support = s.atoms.positions[symbols != "Au"]
    au = s.atoms.positions[symbols == "Au"]
    assert {"Ce", "O"} <= set(symbols)
    assert s.info["support"]["material"] == "CeO2"
    # the particle rests on the support's top surface with a ~2.5 Å gap
    assert au[:, 1].min() - support[:, 1].max() == pytest.approx(2.5, abs=1e-6)
    assert cKDTree(support).query(au)[0].min() >= 2.5 - 1e-6
    # the slab spans the box width and is at least as thick (along the beam) as the particle
    assert np.ptp(support[:, 0]) > BOX[0] - 4.0
    assert np.ptp(support[:, 2]) >= np.ptp(au[:, 2]) - 1.0
    # every site is an Au column, none is on the support
    d_au = cKDTree(au[:, :2]).query(s.sites.positions_A)[0]
    assert d_au.max() < 0.05
    assert np.all(s.sites.positions_A[:, 1] > support[:, 1].max())


def test_gold_shrinks_to_fit_small_box():
    box = (30.0, 30.0)
    s = build_gold(rng(0), box, GoldConfig(diameter_A=(55.0, 60.0), p_support=0.0))
    au = au_positions(s)
    assert s.info["shrunk"]
    assert np.all(au[:, :2] >= 5.0 - 1e-9) and np.all(au[:, :2] <= np.array(box) - 5.0 + 1e-9)


def test_gold_config_round_trip():
    cfg = GoldConfig(diameter_A=(20.0, 30.0), shapes=("wulff", "twinned"), shape_weights=(1.0, 2.0))
    assert GoldConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError):
        GoldConfig(shapes=("cube",), shape_weights=(1.0,))
    with pytest.raises(ValueError):
        GoldConfig.from_dict({"diameter": [1, 2]})


# --------------------------------------------------------------------------------------
# MoS2
# --------------------------------------------------------------------------------------
VACANCY_HEAVY = MoS2Config(p_clean=0.0, mo_vacancy_fraction=(0.05, 0.05), s_single_vacancy_fraction=(0.1, 0.1),
                           s_double_vacancy_fraction=(0.05, 0.05))


def test_mos2_is_deterministic():
    assert same_structure(build_mos2(rng(1), BOX), build_mos2(rng(1), BOX))
    assert not same_structure(build_mos2(rng(1), BOX), build_mos2(rng(2), BOX))


@pytest.mark.parametrize("seed", range(3))
def test_mos2_labels_match_occupancy(seed):
    s = build_mos2(rng(seed), BOX, VACANCY_HEAVY)
    check_common(s)
    assert s.class_names == MOS2_CLASSES
    symbols = np.array(s.atoms.get_chemical_symbols())
    xy = s.atoms.positions[:, :2]
    n_mo = cKDTree(xy[symbols == "Mo"]).query_ball_point(s.sites.positions_A, 0.1, return_length=True)
    n_s = cKDTree(xy[symbols == "S"]).query_ball_point(s.sites.positions_A, 0.1, return_length=True)
    expected = {"Mo": (1, 0, 1), "S": (0, 2, 2), "S1": (0, 1, 1), "Mo_vacancy": (0, 0, 0), "S_vacancy": (0, 0, 0)}
    for label, name in enumerate(s.class_names, start=1):
        sel = s.sites.labels == label
        assert sel.any(), name
        mo, s_, h = expected[name]
        assert np.all(n_mo[sel] == mo) and np.all(n_s[sel] == s_) and np.all(s.sites.heights[sel] == h), name
        assert s.info["counts"][name] == sel.sum()
    # every atom belongs to a labelled site
    assert s.sites.heights.sum() == len(s.atoms)


def test_mos2_geometry():
    s = build_mos2(rng(0), BOX, MoS2Config(p_clean=1.0, max_strain=0.0))
    symbols = np.array(s.atoms.get_chemical_symbols())
    pos = s.atoms.positions
    assert set(s.sites.labels) == {1, 2}
    s_pos = pos[symbols == "S"]
    z = np.unique(np.round(s_pos[:, 2], 6))
    assert len(z) == 2 and z[1] - z[0] == pytest.approx(3.13)
    mo_xy, s_xy = pos[symbols == "Mo", :2], s_pos[:, :2]
    d, _ = cKDTree(s_xy).query(mo_xy[interior(mo_xy)], k=1)
    assert np.allclose(d, 3.19 / np.sqrt(3), atol=1e-6)
    d, _ = cKDTree(mo_xy).query(mo_xy[interior(mo_xy)], k=2)
    assert np.allclose(d[:, 1], 3.19, atol=1e-6)


def test_mos2_vacancies_keep_lattice_positions():
    s = build_mos2(rng(3), BOX, VACANCY_HEAVY)
    lattice = s.sites.positions_A
    # a Mo vacancy sits where a Mo column would: three S-column sites at a / sqrt(3)
    vac = lattice[s.sites.labels == 4]
    s_sites = lattice[np.isin(s.sites.labels, [2, 3, 5])]
    counts = cKDTree(s_sites).query_ball_point(vac[interior(vac)], 3.19 / np.sqrt(3) + 0.1, return_length=True)
    assert np.all(counts == 3)


def test_mos2_config_round_trip():
    assert MoS2Config.from_dict(json.loads(json.dumps(VACANCY_HEAVY.to_dict()))) == VACANCY_HEAVY
    with pytest.raises(ValueError):
        MoS2Config(s_single_vacancy_fraction=(0.0, 0.8), s_double_vacancy_fraction=(0.0, 0.5))


# --------------------------------------------------------------------------------------
# supports
# --------------------------------------------------------------------------------------
def test_amorphous_carbon():
    a = amorphous_carbon(rng(0), (30.0, 25.0), thickness_A=10.0, z0_A=4.0, density_g_cm3=2.0)
    n_expected = 2.0 / 12.011 * 6.02214076e23 * 1e-24 * 30 * 25 * 10
    assert len(a) == pytest.approx(n_expected, abs=1)
    pos = a.positions
    assert np.all(pos[:, 2] >= 4.0) and np.all(pos[:, 2] < 14.0)
    assert np.all(pos[:, :2] >= 0) and np.all(pos[:, :2] < [30.0, 25.0])
    assert min_distance_pbc(pos, [30.0, 25.0]) >= 1.3 - 1e-9
    assert set(a.get_chemical_symbols()) == {"C"}
    assert len(amorphous_carbon(rng(0), (30.0, 25.0), 10.0, 4.0)) == len(a)


@pytest.mark.parametrize("orientation", list(CEO2_ORIENTATIONS))
def test_ceria_slab(orientation):
    slab = ceria_slab(rng(1), (40.0, 40.0), height_A=12.0, thickness_A=20.0, z0_A=3.0, orientation=orientation)
    symbols = np.array(slab.get_chemical_symbols())
    ce, o = slab.positions[symbols == "Ce"], slab.positions[symbols == "O"]
    assert 1.8 < len(o) / len(ce) < 2.6  # CeO2, O-terminated surfaces
    assert slab.positions[:, 1].max() <= 12.0 + 1.5 and slab.positions[:, 1].min() >= 0.0
    assert np.all(slab.positions[:, 2] >= 3.0 - 1e-9) and np.all(slab.positions[:, 2] <= 23.0 + 1e-9)
    # fluorite Ce-O bond length; each O (away from the periodic x seam) binds to >= 2 Ce
    d, _ = cKDTree(ce).query(o[(o[:, 0] > 3.0) & (o[:, 0] < 37.0)], k=2)
    assert np.allclose(d, 5.411 * np.sqrt(3) / 4, atol=1e-6)
