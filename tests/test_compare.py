"""benchmarks/compare.py: the parts that need no peer (bound, matching against it, tables, JSON line)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from atomfinder.datasets.store import DatasetStore

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def cmp():
    """benchmarks/compare.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("compare_bench", BENCH / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_dose_tags_name_the_test_stores(cmp, tmp_path):
    assert [cmp.dose_tag(d) for d in (2e2, 1e3, 1e4, 1e5, 2.5e3)] == ["2e2", "1e3", "1e4", "1e5", "2.5e3"]
    assert cmp.test_store(tmp_path, "gold", 200.0).name == "gold-test-2e2.zarr"


def test_bound_from_derivatives_is_the_inverse_fisher_information():
    from atomfinder.imaging.crlb import crlb_from_derivatives

    rng = np.random.default_rng(0)
    intensity = rng.uniform(0.5, 1.5, 50)
    d = rng.normal(size=(2, 50))
    n0 = 300.0
    fisher = n0 * (d / intensity) @ d.T
    expected = math.sqrt(np.trace(np.linalg.inv(fisher)) / 2)
    assert crlb_from_derivatives(d, intensity, n0)[0] == pytest.approx(expected, rel=1e-9)
    # four times the dose halves the bound; a site without signal has none
    assert crlb_from_derivatives(d, intensity, 4 * n0)[0] == pytest.approx(expected / 2, rel=1e-9)
    blind = np.vstack([d, np.zeros((2, 50))])
    out = crlb_from_derivatives(blind, intensity, n0)
    assert out[0] == pytest.approx(expected, rel=1e-9) and math.isinf(out[1])
    assert np.all(np.isinf(crlb_from_derivatives(d, intensity, 0.0)))


def test_crop_origin_is_found_from_the_ground_truth(cmp):
    rng = np.random.default_rng(1)
    sites = rng.uniform(0, 30, (40, 2))
    s = 0.1
    crop = sites[(sites[:, 0] > 10) & (sites[:, 1] > 5)] - np.array([73, 41]) * s
    assert cmp.crop_origin_px(sites, crop, s) == (73, 41)
    assert cmp.crop_origin_px(sites, crop + 0.033, s) is None


def test_rmse_over_crlb_uses_matched_interior_sites_only(cmp):
    from atomfinder.analysis.evaluate import EvalSample

    truth = np.array([[5.0, 5.0], [10.0, 10.0], [0.05, 8.0]])  # the last one is in the border band
    sample = EvalSample(image=np.zeros((200, 200), np.float32), sampling_A=0.1, positions_A=truth, labels=[1, 1, 1])
    pred_px = (truth + [[0.03, -0.03], [-0.03, 0.03], [0.3, 0.0]]) / 0.1
    det = cmp.Detections([pred_px], [0.1])
    bound = np.array([0.03, 0.03, 0.001])
    r = cmp.rmse_over_crlb([sample], det, {0: bound})
    assert r["n"] == 2
    assert r["rmse_axis_pm"] == pytest.approx(3.0)
    assert r["rmse_over_crlb"] == pytest.approx(1.0)
    assert cmp.rmse_over_crlb([sample], det, {})["n"] == 0


def test_tables_headline_and_markdown(cmp, tmp_path):
    crlb = {"n": 10, "rmse_axis_pm": 6.0, "crlb_rms_pm": 3.0, "rmse_over_crlb": 2.0}
    method = {"tp": 9, "fp": 1, "fn": 1, "precision": 0.9, "recall": 0.9, "f1": 0.9, "rmse_pm": 8.5,
              "seconds_per_image": 0.2, "crlb": crlb}
    result = {
        "systems": {"graphene": {"1e4": {"dose": 1e4, "n_images": 2, "methods": {
            cmp.ATOMFINDER: method, cmp.CONVENTIONAL: method | {"f1": 0.5},
            cmp.ATOMAP_AF: method | {"failed_images": [{"image": 1, "seeds": 3, "error": "IndexError: x"}]}}}}},
        "timing": {"1024": {cmp.ATOMFINDER: {"median_s": 1.0, "time_ratio": 1.0, "peak_rss_mb": 500.0,
                                             "rss_ratio": 1.0, "atoms": 10},
                            cmp.ATOMAI: {"median_s": 2.0, "time_ratio": 2.0, "peak_rss_mb": 1000.0,
                                         "rss_ratio": 2.0, "atoms": 9},
                            "Atomap": {"skipped": "projected 9999 s"}}},
        "atomai_training": {}, "notes": ["graphene 2e2: no test store"],
        "settings": {"systems": ["graphene"], "doses": [1e4], "n_images": 2, "data_dir": "data", "crlb_images": 1, "budget_min": 30.0, "threads": 2,
                     "atomai_threshold": 0.5, "repeats": 3, "skip_peers": True},
    }
    result["headline"] = cmp.headline(result)
    assert result["headline"]["time_AtomAI_over_atomfinder"] == 2.0
    assert result["headline"]["mean_f1_graphene_conventional"] == 0.5
    figures = cmp.plots(result, tmp_path / "benchmarks")
    assert {p.name for p in figures} == {"f1_vs_dose.png", "rmse_crlb_vs_dose.png", "time_per_image.png"}
    text = cmp.markdown(result, figures, tmp_path / "benchmarks.md")
    assert "| 1e4 | atomfinder | 0.900 |" in text and "| 2.00 |" in text
    assert "not run: projected 9999 s" in text and "](benchmarks/f1_vs_dose.png)" in text
    assert f"1e4, {cmp.ATOMAP_AF}: failed on 1 of 2 images" in text and "3 seeds: IndexError: x" in text
    assert "Systems in this run: graphene; doses 1e4 e/Å²" in text
    assert "atomfinder's F1 is the highest at every dose" in text  # the Atomap row ties at 0.9
    # a peer one column ahead is named, with both counts
    ahead = result["systems"]["graphene"]["1e4"]["methods"]
    ahead[cmp.ATOMAP_AF] = ahead[cmp.ATOMAP_AF] | {"f1": 0.91, "tp": 10, "rmse_pm": 9.5}
    wins = cmp.peer_wins(result)
    assert [(w["system"], w["dose"], w["peer"]) for w in wins] == [("graphene", "1e4", cmp.ATOMAP_AF)]
    text = cmp.markdown(result, figures, tmp_path / "benchmarks.md")
    assert f"| graphene | 1e4 | {cmp.ATOMAP_AF} | 0.910 (10) | 0.900 (9) | 9.5 pm | 8.5 pm |" in text
    # the page is written again from the saved result, nothing run
    out = tmp_path / "page.md"
    cmp.result_path(out).parent.mkdir(parents=True)
    cmp.result_path(out).write_text(json.dumps(result))
    cmp.main(["--render-only", "--out", str(out)])
    assert "### Where a peer is ahead" in out.read_text() and (tmp_path / "page" / "f1_vs_dose.png").exists()


def _rows(f1: float) -> dict:
    crlb = {"n": 0, "rmse_axis_pm": None, "crlb_rms_pm": None, "rmse_over_crlb": None}
    method = {"tp": 9, "fp": 1, "fn": 1, "precision": 0.9, "recall": 0.9, "f1": f1, "rmse_pm": 8.5,
              "seconds_per_image": 0.2, "crlb": crlb}
    return {"1e4": {"dose": 1e4, "n_images": 2, "methods": {"atomfinder": method}}}


def test_keep_others_adds_earlier_rows_of_systems_not_rerun_and_replaces_those_rerun(cmp, tmp_path):
    old_stamp = {"date": "2026-12-01", "commit": "aaaaaaa", "n_images": 16, "budget_min": 30.0}
    new_stamp = {"date": "2026-12-07", "commit": "bbbbbbb", "n_images": 8, "budget_min": 30.0, "skip_peers": True}
    trained = {"batch_size": 8, "seconds": 60.0, "cpu_seconds": 120.0, "train_images": 10, "store": "t.zarr"}
    previous = {"systems": {"graphene": _rows(0.9), "gold": _rows(0.8)},
                "atomai_training": {"graphene": trained | {"cycles": 5}, "gold": trained | {"cycles": 6}},
                "notes": ["graphene 2e2: no test store", "gold: a note", "golden 1e4: not gold's"],
                "timing": {"1024": {"atomfinder": {"median_s": 1.0, "time_ratio": 1.0, "peak_rss_mb": 500.0,
                                                   "rss_ratio": 1.0, "atoms": 10}}},
                "runs": {"graphene": old_stamp, "gold": old_stamp, "timing": old_stamp}}
    result = {"systems": {"gold": _rows(0.85), "gold-focal": _rows(0.7)}, "atomai_training": {},
              "notes": ["gold-focal: focal"], "settings": {"systems": ["gold", "gold-focal"]},
              "runs": {"gold": new_stamp, "gold-focal": new_stamp}}
    merged = cmp.keep_others(result, previous)
    assert list(merged["systems"]) == ["graphene", "gold", "gold-focal"]  # the page's order, not the run's
    assert merged["systems"]["gold"]["1e4"]["methods"]["atomfinder"]["f1"] == 0.85  # rerun: replaced whole
    assert merged["systems"]["graphene"] == previous["systems"]["graphene"]
    assert merged["atomai_training"] == {"graphene": trained | {"cycles": 5}}  # gold's earlier AtomAI belongs to its old rows
    assert merged["notes"] == ["gold-focal: focal", "graphene 2e2: no test store"]
    assert merged["timing"] == previous["timing"] and merged["runs"]["timing"] == old_stamp
    assert merged["runs"]["graphene"] == old_stamp and merged["runs"]["gold"] == new_stamp
    assert merged["headline"]["mean_f1_graphene_atomfinder"] == 0.9
    assert merged["headline"]["mean_f1_gold_atomfinder"] == 0.85
    assert "timing" not in result and set(result["systems"]) == {"gold", "gold-focal"}  # input left alone
    merged["settings"] = {"systems": ["gold", "gold-focal"], "doses": [1e4], "n_images": 8, "data_dir": "data",
                          "crlb_images": 0, "budget_min": 30.0, "threads": 2, "atomai_threshold": 0.5,
                          "repeats": 3, "skip_peers": True}
    text = cmp.markdown(merged, [], tmp_path / "b.md")
    assert "Not every row comes from the same run" in text
    assert "graphene: 2026-12-01 at commit aaaaaaa, 16 images" in text and "gold: 2026-12-07 at commit bbbbbbb" in text
    # only the systems of the run without peers are said to lack them
    assert "Peers were not run (`--skip-peers`) for: gold, gold-focal." in text


def test_focal_positions_move_into_the_middle_frames_grid_and_gold_focal_has_its_own_test_stores(cmp, tmp_path):
    from types import SimpleNamespace

    det = cmp.Detections([np.array([[10.0, 20.0]]), np.array([[1.0, 2.0]])], [0.1, 0.2])
    samples = [SimpleNamespace(drift_px=np.array([[0.0, 0.0], [1.5, -0.5], [3.0, -1.0]])),
               SimpleNamespace(drift_px=None)]
    moved = cmp.in_frame_grid(det, samples, 1)
    np.testing.assert_allclose(moved.xy[0], [[11.5, 19.5]])
    np.testing.assert_allclose(moved.xy[1], [[1.0, 2.0]])
    assert moved.seconds == [0.1, 0.2] and det.xy[0][0, 0] == 10.0
    recipe = cmp.test_recipe("gold-focal", "gold")
    assert cmp.test_store(tmp_path, recipe.name, 1e4).name == "gold-focal-test-1e4.zarr"
    assert recipe.system == "gold" and (cmp.ROOT / recipe.config.format(tag="1e4")).exists()
    assert cmp.test_recipe("graphene", "graphene").config == cmp.TEST_CONFIGS["graphene"]


def test_skip_peers_run_ends_with_one_json_line(cmp, tiny_graphene_store, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "graphene-test-1e4.zarr").symlink_to(tiny_graphene_store)
    out = tmp_path / "docs" / "benchmarks.md"
    cmp.main(["--skip-peers", "--systems", "graphene", "--doses", "1e4", "1e6", "--n-images", "2",
              "--crlb-images", "1", "--timing-sizes", "--data-dir", str(data), "--out", str(out)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    res = summary["systems"]["graphene"]["1e4"]
    assert set(res["methods"]) == {cmp.ATOMFINDER, cmp.CONVENTIONAL}
    assert res["crlb_images"] == 1 and res["crlb_median_pm"] > 0
    n_store = len(DatasetStore(tiny_graphene_store))
    assert res["indices"] == [0, n_store - 1]  # the first and the last, not the first two
    assert any("1e6" in n and "dose range" in n for n in summary["notes"])
    assert out.exists() and (out.parent / "benchmarks" / "f1_vs_dose.png").exists()
    saved = json.loads((out.parent / "benchmarks" / "result.json").read_text())
    assert saved["systems"]["graphene"]["1e4"]["methods"].keys() == res["methods"].keys()
    assert saved["runs"]["graphene"]["n_images"] == 2 and "timing" not in saved["runs"]


def test_test_images_are_spread_over_the_store_so_every_specimen_is_seen(cmp):
    # a store of 128 with 8 microscopes per specimen: 16 spread images see all 16 specimens
    picked = cmp.spread_indices(128, 16)
    assert len(picked) == 16 and picked[0] == 0 and picked[-1] == 127
    assert sorted({i // 8 for i in picked}) == list(range(16))
    assert cmp.spread_indices(5, 16) == [0, 1, 2, 3, 4] and cmp.spread_indices(10, 0) == []
    assert cmp.spread_indices(10, 1) == [0]


def test_stage_is_computed_once_per_settings(cmp, tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"f1": 0.5 + len(calls), "nan": math.nan}

    path = tmp_path / "store-1e4.json"
    first = cmp.stage(path, {"n_images": 2}, compute)
    again = cmp.stage(path, {"n_images": 2}, compute)
    assert len(calls) == 1 and again == first == {"f1": 1.5, "nan": None}  # as JSON keeps it
    changed = cmp.stage(path, {"n_images": 3}, compute)
    assert len(calls) == 2 and changed["f1"] == 2.5
    assert [p.name for p in tmp_path.iterdir()] == ["store-1e4.json"]  # nothing half written left
    path.write_text('{"settings": {"n_images": 3}, "res')  # a torn file is recomputed, not an error
    assert cmp.stage(path, {"n_images": 3}, compute)["f1"] == 3.5


def test_rerun_with_the_same_work_folder_reuses_finished_stages(cmp, tiny_graphene_store, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "graphene-test-1e4.zarr").symlink_to(tiny_graphene_store)
    argv = ["--skip-peers", "--systems", "graphene", "--doses", "1e4", "--n-images", "2", "--crlb-images", "0",
            "--timing-sizes", "--data-dir", str(data), "--out", str(tmp_path / "b.md"), "--work", str(tmp_path / "w")]
    cmp.main(argv)
    first = capsys.readouterr()
    cmp.main(argv)
    second = capsys.readouterr()
    assert "reusing store-1e4.json" not in first.err and "reusing store-1e4.json" in second.err
    assert json.loads(second.out.splitlines()[-1]) == json.loads(first.out.splitlines()[-1])


def test_focal_series_is_scored_on_atoms_with_single_image_methods_on_the_middle_frame(cmp, tmp_path, capsys):
    """mos2-focal sees the three frames; the baseline the middle one; vacancy sites are not scored."""
    from conftest import tiny_config

    from atomfinder.analysis.evaluate import samples_from_store
    from atomfinder.datasets.generate import simulate_to_store
    from atomfinder.datasets.store import DatasetStore
    from atomfinder.nn.card import load_card, resolve_model

    pytest.importorskip("abtem")
    data = tmp_path / "data"
    store = simulate_to_store(tiny_config("mos2", image_px=64, box_px=(96,)), 2, data / "mos2-test-1e4.zarr",
                              seed=5, workers=0)
    names = DatasetStore(store).class_names
    classes = cmp.atom_classes(names)
    assert [names[c - 1] for c in classes] == [n for n in names if "vacancy" not in n] and len(classes) < len(names)
    card = load_card(resolve_model("mos2-focal"))
    assert card.in_channels == 3 and cmp.peer_frame(card) == 1
    sample = next(samples_from_store(DatasetStore(store)))
    one = cmp.atoms_in_frame(sample, classes, 1)
    np.testing.assert_array_equal(one.image[0], sample.image[1])
    assert len(one.positions_A) == int(np.isin(sample.labels, classes).sum()) and set(one.labels) <= {1}
    keep = np.isin(sample.labels, classes)  # the truth moves with the frame's recorded drift
    np.testing.assert_allclose(one.positions_A, sample.positions_A[keep] + sample.drift_px[1] * sample.sampling_A)
    assert one.drift_px is None and np.abs(sample.drift_px[1]).max() > 0

    cmp.main(["--skip-peers", "--systems", "mos2-focal", "--doses", "1e4", "--n-images", "2", "--crlb-images", "1",
              "--timing-sizes", "--data-dir", str(data), "--out", str(tmp_path / "b.md")])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    res = summary["systems"]["mos2-focal"]["1e4"]
    assert set(res["methods"]) == {cmp.ATOMFINDER, cmp.CONVENTIONAL} and res["crlb_images"] == 0
    assert any("focal-series model" in n and "frame 1" in n for n in summary["notes"])
    assert (tmp_path / "b" / "f1_vs_dose.png").exists()
    assert not (tmp_path / "b" / "rmse_crlb_vs_dose.png").exists()  # no bound for focal series: no empty plot


def _worker():
    spec = importlib.util.spec_from_file_location("peers_worker_bench", BENCH / "peers_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_atomap_refines_an_image_with_fewer_seeds_than_its_nine_neighbours(tmp_path):
    """Atomap links 9 neighbours per atom and raised IndexError on an almost empty field (3 seeds)."""
    pytest.importorskip("atomap")
    worker = _worker()
    yy, xx = np.mgrid[0:48, 0:48]
    truth = np.array([[12.3, 14.6], [30.2, 20.4], [20.7, 35.1]])
    image = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0**2)) for x, y in truth)
    refined = worker.atomap_refine_one(image, np.rint(truth), 1.0)
    assert refined.shape == (3, 2) and np.abs(refined - truth).max() < 0.1

    np.save(tmp_path / "images.npy", np.stack([image, image]))
    np.savez(tmp_path / "seeds.npz", img0=np.rint(truth), sign0=1.0, img1=np.rint(truth), sign1=1.0)
    calls, refine = [], worker.atomap_refine_one

    def flaky(img, xy, sign):
        calls.append(1)
        if len(calls) == 2:
            raise IndexError("list index out of range")
        return refine(img, xy, sign)

    worker.atomap_refine_one = flaky
    info = worker.atomap_refine(tmp_path, "seeds")
    out = np.load(tmp_path / "seeds_refined.npz")
    assert info["failed"] == [{"image": 1, "seeds": 3, "error": "IndexError: list index out of range"}]
    np.testing.assert_array_equal(out["img1"], np.rint(truth))  # kept unrefined, and said so
    assert np.abs(out["img0"] - truth).max() < 0.1


def test_crlb_by_support_check_runs_on_a_tiny_store(tiny_graphene_store, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("check_crlb_support", BENCH / "check_crlb_support.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "crlb.md"
    result = module.main(["--data", str(tiny_graphene_store), "--images", "1", "--out", str(out)])
    assert result["images"] == [0]
    whole = result["all"]
    assert whole["n"] > 0 and whole["crlb_rms_pm"] > 0 and whole["rmse_over_crlb"] > 0
    assert 0 < whole["worst5_share"] <= 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["groups"].keys() == result["groups"].keys()
    assert "| all |" in out.read_text()


def test_peer_gain_check_counts_sites_moved_across_the_radius():
    """benchmarks/check_peer_gain.py: a site is gained when its nearest detection moves inside the
    radius, lost when it moves out; without detections every distance is infinite."""
    spec = importlib.util.spec_from_file_location("check_peer_gain", BENCH / "check_peer_gain.py")
    gain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gain)
    sites = np.array([[0.0, 0.0], [5.0, 0.0], [10.0, 0.0], [15.0, 0.0]])
    before = gain.nearest_distance_A(np.array([[0.6, 0.0], [5.1, 0.0], [10.7, 0.0], [15.2, 0.0]]), sites)
    after = gain.nearest_distance_A(np.array([[0.3, 0.0], [5.6, 0.0], [10.6, 0.0], [15.1, 0.0]]), sites)
    np.testing.assert_allclose(before, [0.6, 0.1, 0.7, 0.2], atol=1e-12)
    gained, lost = gain.gained_and_lost(before, after, 0.5)
    assert gained.tolist() == [True, False, False, False] and lost.tolist() == [False, True, False, False]
    assert np.isinf(gain.nearest_distance_A(np.zeros((0, 2)), sites)).all()


def test_tta_check_page_shows_heights_only_when_measured():
    """benchmarks/check_tta.py: one row per store and kind of map; NaN heights leave their columns out."""
    spec = importlib.util.spec_from_file_location("check_tta", BENCH / "check_tta.py")
    tta = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tta)
    row = {"store": "s.zarr", "f1": 0.99, "precision": 0.98, "recall": 1.0, "label_accuracy": 0.97,
           "fp_per_10nm2": 1.5, "rmse_pm": 9.0, "ece": 0.01, "seconds_per_image": 0.2,
           "height_exact": math.nan, "height_within1": math.nan, "per_class": {"A": (0.9, 0.8), "B": (1.0, 0.5)}}
    rows = [row | {"mode": "plain"}, row | {"mode": "augmented", "f1": 0.995}]
    page = tta.markdown(rows, "m 1.0", "m", ["s.zarr"], ["A", "B"])
    assert "heights exact" not in page and "| s.zarr | augmented | 0.9950 |" in page
    assert "| s.zarr | plain | 0.900 (0.800) | 1.000 (0.500) |" in page
    with_heights = tta.markdown([r | {"height_exact": 0.4, "height_within1": 0.8} for r in rows], "m 1.0", "m",
                                ["s.zarr"], ["A"])
    assert "heights exact" in with_heights and "| 0.400 | 0.800 |" in with_heights
    assert "Per class" not in with_heights  # one class: no per-class table
