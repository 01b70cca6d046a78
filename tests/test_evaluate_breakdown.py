"""analysis.evaluate: breakdowns by Cs sign, particle shape and support; defocus edges of a recipe."""

import json

import numpy as np

from atomfinder.analysis.evaluate import (
    DEFOCUS_EDGES_A,
    EMPTY_FIELD,
    UNKNOWN_BIN,
    EvalSample,
    _holds_ground_truth,
    bin_labels,
    cs_label,
    evaluate,
    recipe_defocus_edges,
    samples_from_store,
    shape_label,
    store_structure_info,
    support_label,
)
from atomfinder.analysis.report import report_markdown, write_report
from atomfinder.detection.peaks import AtomTable

S = 0.1  # Å/pixel
GRID_A = np.array([(x, y) for x in (2.0, 4.0, 6.0, 8.0) for y in (2.0, 4.0, 6.0, 8.0)])  # 16 interior sites


def _sample(Cs=None, shape=None, support=None, defocus=0.0):
    return EvalSample(image=np.zeros((100, 100), np.float32), sampling_A=S, positions_A=GRID_A,
                      labels=np.ones(len(GRID_A), int), dose_e_per_A2=1e3, defocus_A=defocus,
                      Cs_A=Cs, particle_shape=shape, support=support)


def _detect(sample):
    """Finds every site, except half of them on decahedra."""
    xy = sample.positions_A[::2] if sample.particle_shape == "decahedron" else sample.positions_A
    n = len(xy)
    return AtomTable(x=xy[:, 0] / S, y=xy[:, 1] / S, label=np.ones(n, int), probability=np.ones(n),
                     height=np.full(n, -1))


def _tagged():
    return [
        _sample(-2e5, "wulff", "free"),
        _sample(-3e5, "decahedron", "CeO2 110"),
        _sample(2e5, "wulff", "carbon"),
        _sample(8e6, "decahedron", "CeO2 100 + carbon"),
        _sample(None, None, None),
    ]


def _bins(breakdown):
    return [(b["bin"], b["n_images"]) for b in breakdown]


def test_labels_from_microscope_and_structure_info():
    assert [cs_label(v) for v in (-3e5, 0.0, 4e5, 5e6, -1.2e7, 1e6)] == \
        ["Cs < 0", "Cs = 0", "Cs > 0", "uncorrected", "uncorrected", "uncorrected"]
    assert cs_label(None) is None and cs_label(float("nan")) is None
    ceria = {"material": "CeO2", "orientation": "110/111", "height_A": 12.0}
    gold = {"system": "gold", "shape": "wulff", "support": None}
    assert (shape_label(gold), support_label(gold)) == ("wulff", "free")
    assert support_label(gold | {"amorphous_carbon_A": 12.5}) == "carbon"
    assert support_label(gold | {"support": ceria}) == "CeO2 110"
    assert support_label(gold | {"support": ceria | {"orientation": "100/001"}, "amorphous_carbon_A": 5.0}) == \
        "CeO2 100 + carbon"
    empty = {"system": "gold", "empty_field": True, "amorphous_carbon_A": 8.0}
    assert (shape_label(empty), support_label(empty)) == (EMPTY_FIELD, "carbon")
    graphene = {"system": "graphene", "n_atoms": 300}
    assert (shape_label(graphene), support_label(graphene)) == (None, "free")
    assert shape_label(None) is None and support_label(None) is None


def test_breakdowns_count_images_and_pool_scores():
    rep = evaluate(_tagged(), _detect)
    assert _bins(rep["by_cs_sign"]) == [("Cs < 0", 2), ("Cs > 0", 1), ("uncorrected", 1), (UNKNOWN_BIN, 1)]
    assert _bins(rep["by_shape"]) == [("decahedron", 2), ("wulff", 2), (UNKNOWN_BIN, 1)]
    assert _bins(rep["by_support"]) == [("free", 1), ("carbon", 1), ("CeO2 100 + carbon", 1), ("CeO2 110", 1),
                                        (UNKNOWN_BIN, 1)]
    shapes = {b["bin"]: b["metrics"]["0.5"] for b in rep["by_shape"]}
    assert (shapes["decahedron"]["recall"], shapes["decahedron"]["tp"], shapes["decahedron"]["fn"]) == (0.5, 16, 16)
    assert shapes["wulff"]["recall"] == 1.0 and shapes["wulff"]["n_images"] == 2
    cs = {b["bin"]: b["metrics"]["0.5"] for b in rep["by_cs_sign"]}
    assert cs["Cs < 0"]["recall"] == 0.75 and cs["Cs > 0"]["recall"] == 1.0 and cs["uncorrected"]["recall"] == 0.5
    assert set(rep["by_shape"][0]) == {"bin", "n_images", "metrics"}
    row = [r for r in rep["images"] if r["image"] == 3 and r["radius_A"] == 0.5][0]
    assert (row["Cs_A"], row["particle_shape"], row["support"]) == (8e6, "decahedron", "CeO2 100 + carbon")


def test_missing_metadata_gives_empty_breakdowns():
    rep = evaluate([_sample(), _sample()], _detect)
    assert rep["by_cs_sign"] == rep["by_shape"] == rep["by_support"] == []
    text = report_markdown(rep, "plain")
    assert "## By defocus" in text and "By spherical aberration" not in text and "By support" not in text
    # fields without a specimen are no particle shapes: graphene's empty fields give no shape table
    rep = evaluate([_sample(shape=EMPTY_FIELD, support="carbon"), _sample(support="free")], _detect)
    assert rep["by_shape"] == [] and _bins(rep["by_support"]) == [("free", 1), ("carbon", 1)]


def test_report_writes_the_tables_after_defocus(tmp_path):
    rep = evaluate(_tagged(), _detect, radii_A=(0.5,))
    write_report(rep, tmp_path, "breakdown")
    text = (tmp_path / "report.md").read_text()
    order = [text.index(h) for h in ("## By dose", "## By defocus", "## By spherical aberration (radius 0.5 Å)",
                                     "## By particle shape (radius 0.5 Å)", "## By support (radius 0.5 Å)",
                                     "## Class confusion")]
    assert order == sorted(order)
    assert "| decahedron | 2 | 0.667 | 1.000 | 0.500 | 0.0 |" in text
    assert "| CeO2 100 + carbon | 1 | 0.667 | 1.000 | 0.500 | 0.0 |" in text
    data = json.loads((tmp_path / "report.json").read_text())["detectors"]["detector"]
    assert _bins(data["by_cs_sign"]) == _bins(rep["by_cs_sign"])
    assert data["by_support"][-1]["bin"] == UNKNOWN_BIN


def test_recipe_defocus_edges_span_the_gold_range():
    gold = {"microscope": {"corrected_defocus_A": [-150.0, 150.0], "defocus_around_scherzer_A": [-60.0, 60.0]}}
    edges = recipe_defocus_edges(gold)
    assert edges == (-150.0, -100.0, -50.0, 0.0, 50.0, 100.0, 150.0)
    labels = [b[0] for b in bin_labels([-150.0, -20.0, 149.0, 320.0, 610.0], edges)]
    assert labels == ["[-150, -100)", "[-50, 0)", "[100, 150)", ">= 150", ">= 150"]  # uncorrected: open last bin
    assert recipe_defocus_edges({"microscope": {"corrected_defocus_A": [-120.0, 130.0]}})[::5] == (-150.0, 100.0)
    assert recipe_defocus_edges({"microscope": {"defocus_around_scherzer_A": [-250.0, 250.0]}}) == DEFOCUS_EDGES_A
    assert recipe_defocus_edges({}) == recipe_defocus_edges(None) == DEFOCUS_EDGES_A


def test_holds_ground_truth_needs_one_shift_for_all_sites():
    rng = np.random.default_rng(1)
    sites = rng.uniform(0, 40, (120, 2))
    origin = np.array([37, 52]) * 0.1
    inside = np.all((sites >= origin) & (sites < origin + 20.0), axis=1)
    truth = (sites[inside] - origin).astype(np.float32)
    assert inside.sum() > 10
    assert _holds_ground_truth(sites, [np.zeros((0, 2)), truth], 0.01)
    moved = truth.copy()
    moved[-1] += [0.05, 0.0]  # one site that is not in the structure
    assert not _holds_ground_truth(sites, [moved], 0.01)
    assert not _holds_ground_truth(sites, [rng.uniform(0, 20, (30, 2))], 0.01)  # another structure
    assert not _holds_ground_truth(np.zeros((0, 2)), [truth], 0.01)
    assert _holds_ground_truth(sites, [np.zeros((0, 2))], 0.01)


def test_store_structure_info_rebuilds_gold_particles(tmp_path):
    """A store whose job 0 images its rebuilt particle and job 1 something else (no imaging)."""
    from atomfinder.datasets.generate import default_config, job_structure
    from atomfinder.datasets.store import DatasetStore, create_or_resume, write_job

    config = default_config("gold").replace(samples_per_job=2, draws_per_wave=2)
    fields = ["defocus_A", "dose_e_per_A2", "Cs_A"]
    meta = {"n": 4, "frames": 1, "image_px": 8, "class_names": ["Au"], "max_sites": 1024,
            "microscope_fields": fields, "has_heights": True, "samples_per_job": 2, "seed": 11,
            "config": config.to_dict()}
    group = create_or_resume(tmp_path / "g.zarr", meta)
    particle = job_structure(config, 11, 0)
    xy = particle.sites.positions_A - np.floor(particle.sites.positions_A.min(axis=0) / 0.1) * 0.1  # a crop's view
    assert 0 < len(xy) <= 1024
    for job in (0, 1):
        sites = np.full((2, 1024, 2), np.nan, np.float32)
        truth = xy if job == 0 else np.random.default_rng(2).uniform(0, 30, (50, 2))
        sites[:, : len(truth)] = truth
        mic = np.zeros((2, 1, 3))
        mic[:, 0] = [[50.0, 1e3, -2e5], [-80.0, 1e4, 7e6]]
        write_job(group, job, {
            "images": np.zeros((2, 1, 8, 8), np.float32), "targets": np.zeros((2, 2, 8, 8), np.float32),
            "heights": np.zeros((2, 1, 8, 8), np.uint8), "sites_A": sites,
            "sites_label": np.tile((np.arange(1024) < len(truth)).astype(np.int16), (2, 1)),
            "sites_height": np.ones((2, 1024), np.int16), "n_sites": np.full(2, len(truth), np.int32),
            "sampling_A": np.full(2, 0.1, np.float32), "microscope": mic,
            "drift_px": np.zeros((2, 1, 2), np.float32),
        })
    info = store_structure_info(DatasetStore(tmp_path / "g.zarr"))
    assert info[0] is not None and info[0] == info[1] and info[2] is None and info[3] is None
    samples = list(samples_from_store(DatasetStore(tmp_path / "g.zarr"), structures=info))
    assert [s.particle_shape for s in samples] == [particle.info["shape"]] * 2 + [None, None]
    assert samples[0].support == support_label(particle.info) and samples[2].support is None
    assert [cs_label(s.Cs_A) for s in samples] == ["Cs < 0", "uncorrected"] * 2
    assert samples[0].extra["Cs_A"] == -2e5  # still in extra, as before
