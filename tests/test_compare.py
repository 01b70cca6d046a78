"""benchmarks/compare.py: the parts that need no peer (bound, matching against it, tables, JSON line)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
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


def as_recipe(monkeypatch, cmp, store_path) -> None:
    """Make the harness's recipe the tiny store's size and seed (the real one is 128 images, seed
    1001, which the tiny test stores are not: they would be refused)."""
    store = DatasetStore(store_path)
    monkeypatch.setattr(cmp, "TEST_N", len(store))
    monkeypatch.setattr(cmp, "TEST_SEED", int(store.meta["seed"]))


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


def test_tables_headline_and_markdown(cmp, tmp_path, capsys):
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
    # a second system without a bound has no panel in the RMSE / CRLB figure (finding 11)
    no_bound = {k: v | {"crlb": {"n": 0, "rmse_axis_pm": None, "crlb_rms_pm": None, "rmse_over_crlb": None}}
                for k, v in result["systems"]["graphene"]["1e4"]["methods"].items()}
    with_focal = result | {"systems": result["systems"] | {"mos2-focal": {"1e4": {"dose": 1e4, "n_images": 2,
                                                                                  "methods": no_bound}}}}
    import matplotlib.image

    cmp.plots(with_focal, tmp_path / "two")
    f1_width = matplotlib.image.imread(tmp_path / "two" / "f1_vs_dose.png").shape[1]
    crlb_width = matplotlib.image.imread(tmp_path / "two" / "rmse_crlb_vs_dose.png").shape[1]
    assert crlb_width < 0.6 * f1_width  # one panel of two
    assert result["headline"]["mean_f1_graphene_conventional"] == 0.5
    figures = cmp.plots(result, tmp_path / "benchmarks")
    assert {p.name for p in figures} == {"f1_vs_dose.png", "rmse_crlb_vs_dose.png", "time_per_image.png"}
    text = cmp.markdown(result, figures, tmp_path / "benchmarks.md")
    assert "| 1e4 | atomfinder | 0.900 |" in text and "| 2.00 |" in text
    assert "not run: projected 9999 s" in text and "](benchmarks/f1_vs_dose.png)" in text
    assert f"1e4, {cmp.ATOMAP_AF}: failed on 1 of 2 images" in text and "3 seeds: IndexError: x" in text
    assert "Systems on this page: graphene. The last run made: graphene (doses asked: 1e4 e/Å²" in text
    # RMSE covers all images, RMSE/axis and the bound only the CRLB images, with their pair count (finding 7)
    assert "| RMSE (pm), all images | CRLB pairs | RMSE/axis (pm), CRLB images |" in text
    assert "| 8.5 | 10 | 6.0 | 3.0 | 2.00 |" in text
    # a block without a stamp says what was not recorded instead of the last run's settings (finding 5)
    assert "AtomAI threshold: not recorded" in text and "timed runs after the warm-up: not recorded" in text
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
    capsys.readouterr()
    cmp.main(["--render-only", "--out", str(out)])
    assert "### Where a peer is ahead" in out.read_text() and (tmp_path / "page" / "f1_vs_dose.png").exists()
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # one JSON line (finding 10)
    assert line["out"] == str(out) and line["headline"] == result["headline"]


def _rows(f1: float) -> dict:
    crlb = {"n": 0, "rmse_axis_pm": None, "crlb_rms_pm": None, "rmse_over_crlb": None}
    method = {"tp": 9, "fp": 1, "fn": 1, "precision": 0.9, "recall": 0.9, "f1": f1, "rmse_pm": 8.5,
              "seconds_per_image": 0.2, "crlb": crlb}
    return {"1e4": {"dose": 1e4, "n_images": 2, "methods": {"atomfinder": method}}}


def test_keep_others_adds_earlier_rows_of_systems_not_rerun_and_replaces_those_rerun(cmp, tmp_path):
    old_stamp = {"date": "2026-12-01", "commit": "aaaaaaa", "n_images": 16, "budget_min": 30.0}
    args = cmp.parse_args(["--skip-peers", "--n-images", "8", "--crlb-images", "0", "--repeats", "5",
                           "--atomai-threshold", "0.4"])
    new_stamp = cmp.run_stamp(args, {}, "2.13.0") | {"block": "system", "stages": {
        "store-1e4": {"commit": "bbbbbbb", "date": "2026-12-07"}}}
    assert new_stamp["stamp_version"] == 2 and new_stamp["repeats"] == 5 and new_stamp["atomai_threshold"] == 0.4
    trained = {"batch_size": 8, "seconds": 60.0, "cpu_seconds": 120.0, "train_images": 10, "store": "t.zarr"}
    previous = {"systems": {"graphene": _rows(0.9), "gold": _rows(0.8)},
                "atomai_training": {"graphene": trained | {"cycles": 5}, "gold": trained | {"cycles": 6}},
                "notes": ["graphene 2e2: no test store", "gold: a note", "golden 1e4: not gold's"],
                "timing": {"1024": {"atomfinder": {"times_s": [1.2, 1.0, 1.0, 1.0], "median_s": 1.0,
                                                   "time_ratio": 1.0, "peak_rss_mb": 500.0, "rss_ratio": 1.0,
                                                   "atoms": 10}}},
                "runs": {"graphene": old_stamp, "gold": old_stamp, "timing": old_stamp},
                "settings": {"systems": ["gold"], "atomai_threshold": 0.5, "doses": [1e4]}}
    result = {"systems": {"gold": _rows(0.85), "gold-focal": _rows(0.7)}, "atomai_training": {},
              "notes": ["gold-focal: focal"], "settings": {"systems": ["gold", "gold-focal"]},
              "runs": {"gold": new_stamp, "gold-focal": new_stamp}}
    merged = cmp.keep_others(result, previous)
    assert list(merged["systems"]) == ["graphene", "gold", "gold-focal"]  # the page's order, not the run's
    assert merged["systems"]["gold"]["1e4"]["methods"]["atomfinder"]["f1"] == 0.85  # rerun: replaced whole
    assert merged["systems"]["graphene"] == previous["systems"]["graphene"]
    assert merged["atomai_training"] == {"graphene": trained | {"cycles": 5}}  # gold's earlier AtomAI belongs to its old rows
    assert merged["notes"] == ["gold-focal: focal", "graphene 2e2: no test store"]
    assert merged["timing"] == previous["timing"]
    # a kept stamp of an older run keeps what that run's result knew of it, and says from where
    assert merged["runs"]["graphene"] == old_stamp
    assert merged["runs"]["timing"]["repeats"] == 3 and "repeats" in merged["runs"]["timing"]["origin"]
    assert merged["runs"]["gold"] == new_stamp
    assert merged["headline"]["mean_f1_graphene_atomfinder"] == 0.9
    assert merged["headline"]["mean_f1_gold_atomfinder"] == 0.85
    assert "timing" not in result and set(result["systems"]) == {"gold", "gold-focal"}  # input left alone
    merged["settings"] = {"systems": ["gold", "gold-focal"], "doses": [1e4], "n_images": 8, "data_dir": "data",
                          "crlb_images": 0, "budget_min": 30.0, "threads": 2, "atomai_threshold": 0.4,
                          "repeats": 5, "skip_peers": True}
    text = cmp.markdown(merged, [], tmp_path / "b.md")
    # each block's own settings above its table, not the last run's (finding 5)
    assert "Systems on this page: graphene, gold, gold-focal. The last run made: gold, gold-focal" in text
    graphene = text.split("### graphene")[1].split("###")[0]
    assert "run of 2026-12-01, commit aaaaaaa" in graphene and "images per store: 16" in graphene
    assert "AtomAI threshold: not recorded" in graphene and "threads: not recorded" in graphene
    gold = text.split("### gold\n")[1].split("###")[0]
    assert "at commit " + new_stamp["commit"] in gold and "stages computed at commit bbbbbbb" in gold
    assert "images per store: 8" in gold and "AtomAI threshold: 0.4" in gold
    speed = text.split("## Speed and memory")[1]
    assert "timed runs after the warm-up: 3 (counted from the saved timings)" in speed  # not the last run's 5
    # and the differences are said (finding 5)
    differ = text.split("**Settings differ between the blocks")[1].split("\n\n")[1]
    assert "- images per store: graphene: 16; gold, gold-focal: 8" in differ
    assert "- AtomAI threshold: graphene, timing: not recorded; gold, gold-focal: 0.4" in differ
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


def test_skip_peers_run_ends_with_one_json_line(cmp, tiny_graphene_store, tmp_path, capsys, monkeypatch):
    as_recipe(monkeypatch, cmp, tiny_graphene_store)
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
    # which images, recorded (finding 1, 8), and the stage's commit (finding 6)
    assert res["selection"] == {"first": n_store, "store_images": n_store, "specimens_shown": 2,
                                "specimens_total": n_store // 2}
    stamp = saved["runs"]["graphene"]
    assert stamp["stamp_version"] == 2 and stamp["stages"]["store-1e4"]["commit"] == stamp["commit"]
    assert "2 image(s) spread over the store's first 8 (of its 8), showing 2 of the 4 specimens" in out.read_text()


@pytest.fixture(scope="module")
def graphene_1e4_store(tmp_path_factory):
    """Two 96-px graphene images at 1e4 e/Å², sheets without contamination, carbon or empty fields:
    images on which the shipped model's F1 is known to be high (about 7 s to simulate)."""
    pytest.importorskip("abtem")
    from conftest import tiny_config

    from atomfinder.datasets.generate import simulate_to_store
    from atomfinder.imaging.microscope import MicroscopeRanges

    base = tiny_config()
    config = tiny_config(image_px=96, box_px=(144,), p_empty_field=0.0, p_contamination=0.0, p_amorphous_carbon=0.0,
                         microscope=MicroscopeRanges.from_dict(base.microscope.to_dict() | {"dose_e_per_A2": (1e4, 1e4)}))
    path = tmp_path_factory.mktemp("stores") / "graphene-1e4.zarr"
    return simulate_to_store(config, 2, path, seed=3, workers=0)


def test_end_to_end_scores_are_sane_and_the_timing_runs(cmp, graphene_1e4_store, tmp_path, capsys, monkeypatch):
    """A tiny run with the timing (atomfinder only, 64 px, one repeat): F1 in a sane range on its
    images, the timing rows on the device asked, and the timing stage keyed on every option."""
    as_recipe(monkeypatch, cmp, graphene_1e4_store)
    data = tmp_path / "data"
    data.mkdir()
    (data / "graphene-test-1e4.zarr").symlink_to(graphene_1e4_store)
    argv = ["--skip-peers", "--systems", "graphene", "--doses", "1e4", "--n-images", "2", "--crlb-images", "0",
            "--timing-sizes", "64", "--repeats", "1", "--no-gpu", "--data-dir", str(data),
            "--out", str(tmp_path / "b.md"), "--work", str(tmp_path / "w")]
    summary = cmp.main(argv)
    capsys.readouterr()
    res = summary["systems"]["graphene"]["1e4"]["methods"]
    ours, base = res[cmp.ATOMFINDER], res[cmp.CONVENTIONAL]
    # the scores are scores, not just keys: clean 1e4 graphene is nearly all found by the shipped
    # model, and much less by the band-pass baseline; the counts add up
    assert ours["tp"] + ours["fn"] > 40 and ours["f1"] >= 0.9 and 0.0 < base["f1"] < ours["f1"], (ours, base)
    for m in (ours, base):
        assert m["f1"] == pytest.approx(2 * m["tp"] / (2 * m["tp"] + m["fp"] + m["fn"]))
        assert 0 < m["rmse_pm"] < 50  # matched within the 0.5 Å radius
    row = summary["timing"]["64"][cmp.ATOMFINDER]
    assert list(summary["timing"]["64"]) == [cmp.ATOMFINDER]  # --no-gpu: no CUDA row
    assert row["device"] == "cpu" and len(row["times_s"]) == 2 and row["median_s"] == row["times_s"][1]
    assert row["atoms"] > 0 and 0 < row["import_rss_mb"] <= row["peak_rss_mb"] and row["time_ratio"] == 1.0
    page = (tmp_path / "b.md").read_text()
    assert "| 64² | atomfinder | cpu |" in page and "timed runs after the warm-up: 1;" in page
    # an option that changes the timing is in its key (finding 6)
    cmp.main(argv + ["--atomap-max-s", "60"])
    err = capsys.readouterr().err
    assert "reusing store-1e4.json" in err and "reusing timing.json" not in err


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


def test_rerun_with_the_same_work_folder_reuses_finished_stages(cmp, tiny_graphene_store, tmp_path, capsys,
                                                                monkeypatch):
    as_recipe(monkeypatch, cmp, tiny_graphene_store)
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
    # another store under the same name is another stage (finding 6): the key holds its path,
    # size, seed and attributes, not only its file name
    other = tmp_path / "other.zarr"
    import shutil

    shutil.copytree(tiny_graphene_store, other)
    (data / "graphene-test-1e4.zarr").unlink()
    (data / "graphene-test-1e4.zarr").symlink_to(other)
    cmp.main(argv)
    assert "reusing store-1e4.json" not in capsys.readouterr().err
    identity = cmp.store_identity(other, DatasetStore(other))
    assert identity["path"] == str(other.resolve()) and identity["images"] == 8 and identity["seed"] == 0
    assert identity["attrs_sha1"] == cmp.store_identity(tiny_graphene_store, DatasetStore(tiny_graphene_store))[
        "attrs_sha1"]


def test_focal_series_is_scored_on_atoms_with_single_image_methods_on_the_middle_frame(cmp, tmp_path, capsys,
                                                                                        monkeypatch):
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

    # AtomAI's masks for the middle frame lie on the drifted truth, not on frame 0's targets (finding 2)
    tiny = DatasetStore(store)
    x, y = cmp.training_arrays(tiny, 2, frame=1, classes=classes)
    x0, y0 = cmp.training_arrays(tiny, 2, frame=0, classes=classes)
    targets = tiny.array("targets")[:, classes].sum(axis=1) >= 0.5
    np.testing.assert_array_equal(y0[:, 0], targets)  # frame 0: the store's own targets
    np.testing.assert_array_equal(x[:, 0], tiny.array("images")[:, 1])
    from atomfinder.datasets.labels import class_maps

    cfg = tiny.meta["config"]
    band = 12  # away from the edge, where only the drawn disks count
    for i in range(2):
        gt = tiny.ground_truth(i)
        want = class_maps(gt["positions_px"] + tiny.array("drift_px")[i, 1], gt["labels"], targets.shape[1:],
                          len(names), cfg["label_radius_A"] / gt["sampling_A"], cfg["label_kind"])[classes].sum(0)
        np.testing.assert_array_equal(y[i, 0, band:-band, band:-band], (want >= 0.5)[band:-band, band:-band])
    assert not np.array_equal(y[:, 0], targets)
    # a whole-pixel drift moves the first frame's mask by exactly that much
    mask = targets[0].astype(np.float32)
    moved = cmp.frame_mask(tiny, 0, mask, np.array([2.0, -3.0]), classes)
    np.testing.assert_array_equal((moved >= 0.5)[band:-band, band:-band],
                                  np.roll(mask >= 0.5, (-3, 2), axis=(0, 1))[band:-band, band:-band])

    as_recipe(monkeypatch, cmp, store)
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


@pytest.mark.parametrize("bad", [
    ["--doses", "0"], ["--doses", "-5"], ["--doses", "nan"], ["--n-images", "-1"], ["--n-images", "0"],
    ["--crlb-images", "-2"], ["--systems", "nosuch"], ["--threads", "0"], ["--timing-sizes", "0"],
    ["--timing-sizes", "8"], ["--repeats", "0"], ["--repeats", "-1"], ["--budget-min", "0"], ["--budget-min", "-1"],
    ["--atomai-train-images", "0"], ["--atomap-max-s", "0"], ["--atomai-threshold", "1.5"], ["--n-images", "x"],
    ["--timing-model", "gold-focal"],
])
def test_options_are_checked_and_refused_in_one_line(cmp, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        cmp.parse_args(["--skip-peers", *bad])
    assert exc.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and bad[0] in errors[0], errors


def test_good_options_pass_and_gpu_is_a_switch(cmp):
    args = cmp.parse_args(["--crlb-images", "0", "--timing-sizes", "--repeats", "1", "--no-gpu"])
    assert args.crlb_images == 0 and args.timing_sizes == [] and args.repeats == 1 and args.gpu is False
    assert cmp.parse_args(["--gpu"]).gpu is True and cmp.parse_args([]).gpu is None  # None: if CUDA is present
    assert cmp.parse_args(["--render-only", "--systems", "anything"]).render_only  # nothing is run


def test_a_store_that_is_not_the_recipes_is_refused_and_a_longer_one_is_cut_to_it(cmp, tiny_graphene_store):
    store = DatasetStore(tiny_graphene_store)  # 8 images, seed 0
    recipe = cmp.StoreRecipe("graphene", "graphene", "configs/test-dose-{tag}.toml", n=8, seed=0)
    assert cmp.recipe_images(tiny_graphene_store, store, recipe) == (8, None)
    n, note = cmp.recipe_images(tiny_graphene_store, store, recipe.__class__(**{**recipe.__dict__, "n": 4}))
    assert n == 4 and "holds 8 images" in note and "only those are used" in note
    for bad, why in (({"seed": 1}, "made with seed 0"), ({"n": 16}, "holds 8 finished images")):
        with pytest.raises(SystemExit) as exc:
            cmp.recipe_images(tiny_graphene_store, store, recipe.__class__(**{**recipe.__dict__, **bad}))
        assert why in str(exc.value) and "\n" not in str(exc.value)
    # the recipe's images come first: spread over them, every dose sees the same specimens
    assert cmp.spread_indices(4, 2) == [0, 3] and cmp.load_samples(store, 2, 4)[0] == [0, 3]
    assert cmp.specimen_ids(store.meta, [0, 1, 2, 3]) == [(0, 0), (0, 0), (1, 0), (1, 0)]
    # gold-focal's recipe: 64 images, so a store made with --n 128 is used for its first 64 only
    assert cmp.test_recipe("gold-focal", "gold").n == 64


def test_atomai_training_key_changes_for_focal_series_only(cmp):
    from atomfinder.nn.card import load_card, resolve_model

    args = cmp.parse_args([])
    focal = cmp.atomai_training_key(load_card(resolve_model("mos2-focal")), args)
    single = cmp.atomai_training_key(load_card(resolve_model("graphene")), args)
    assert focal["frame"] == 1 and "drift" in focal["masks"]
    # a graphene network trained before keeps its key: its masks (the store's targets) did not change
    assert set(single) == {"data", "frame", "budget_min", "threads", "train_images"} and single["frame"] == 0


def test_worker_output_is_streamed_while_it_runs_and_its_json_line_returned(cmp, capsys):
    code = ("import json, sys, time\n"
            "print('epoch 1 loss 0.5', flush=True)\n"
            "print('warning on stderr', file=sys.stderr, flush=True)\n"
            "print(json.dumps({'ok': 1}))\n")
    assert cmp.stream_command([sys.executable, "-c", code], env=dict(os.environ), what="t") == {"ok": 1}
    err = capsys.readouterr().err
    assert "[peers] epoch 1 loss 0.5" in err and "[peers] warning on stderr" in err and "'ok'" not in err
    with pytest.raises(RuntimeError, match="exit 3"):
        cmp.stream_command([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"],
                           env=dict(os.environ), what="t")


def test_worker_times_atomap_without_torch_and_reports_its_import_baseline(tmp_path):
    """Atomap never uses torch, so its process must not import it (its memory would count it)."""
    pytest.importorskip("atomap")
    import subprocess

    yy, xx = np.mgrid[0:48, 0:48]
    centres = [(x, y) for x in range(8, 44, 9) for y in range(8, 44, 9)]
    image = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2)) for x, y in centres)
    np.save(tmp_path / "t.npy", image)
    np.savez(tmp_path / "t_seeds.npz", xy=np.array(centres, float), sign=np.float64(1.0))
    proc = subprocess.run([sys.executable, str(BENCH / "peers_worker.py"), "time", "--work", str(tmp_path), "--tool",
                           "atomap", "--image", "t.npy", "--repeats", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["torch_imported"] is False and row["device"] == "cpu" and row["atoms"] == len(centres)
    assert 0 < row["import_rss_mb"] <= row["peak_rss_mb"] and len(row["times_s"]) == 2
