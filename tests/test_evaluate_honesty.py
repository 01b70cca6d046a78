"""What an evaluation must not claim (found by an audit of `evaluate`, `calibrate`, `tune-threshold`):

1, 8. a rate with nothing to count is no score: an empty store was scored F1 1.000 (and written into
   the card), a class with no sites and no detections showed precision, recall and F1 1.000;
2. an unfinished store was scored without a word and recorded the images it should hold, not those
   scored; `--write-card` took it;
3, 4, 5. the training store (of the model and of a `--versus` model) and the seed of the calibration
   store were said on stderr only, or not at all; calibrating on the test seed passed;
6, 7. reports were replaced silently, an earlier reliability diagram survived, the report folder was
   checked only after the work, and a dataset store took a report;
9. an unfinished training store "had no validation images";
10. a single-image model on a focal series saw frame 0 unsaid; a model file in the current folder
   replaced a shipped one unsaid.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
from conftest import save_untrained_model
from typer.testing import CliRunner

from atomfinder.analysis.evaluate import EvalSample, evaluate
from atomfinder.analysis.metrics import detection_rates, per_class_rates
from atomfinder.analysis.report import report_markdown, write_report
from atomfinder.cli import app
from atomfinder.detection.peaks import AtomTable
from atomfinder.nn.card import load_model, save_model

pytestmark = pytest.mark.filterwarnings("ignore::atomfinder.detection.validity.ValidityWarning")  # untrained model


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line_error(result, words: str) -> None:
    text = result.output.strip()
    assert result.exit_code == 2, text
    assert words in text and len(text.splitlines()) == 1 and "Traceback" not in text, text


def _with_jobs(store, dst, jobs):
    """A copy of ``store`` in which only ``jobs`` are complete (an unfinished or an empty store)."""
    import zarr

    shutil.copytree(store, dst)
    group = zarr.open_group(str(dst), mode="r+")
    flags = np.zeros(group["complete"].shape, dtype=bool)
    flags[list(jobs)] = True
    group["complete"][:] = flags
    return dst


def _calibration(seed: int) -> dict:
    """A valid calibration (every detection 0.5 confident, sigma 0.1 Å) whose fit names ``seed``."""
    from atomfinder.detection.confidence import BASE_FEATURES, Calibration

    k = len(BASE_FEATURES) + 1
    cal = Calibration(logistic=(0.0,) * k, isotonic_score=(0.0, 1.0), isotonic_value=(0.5, 0.5),
                      sigma_log=(0.0,) * k, sigma_scale=0.1, radius_px=2.0)
    return cal.to_dict() | {"fit": {"store": "data/calib.zarr", "seed": seed, "n_images": 2}}


def _model(path, name="tiny", **card):
    stem = save_untrained_model(path, 0.12, name=name)
    if card:
        net, c = load_model(stem)
        save_model(net, dataclasses.replace(c, **card), stem)
    return stem


BASE = ("--no-baseline", "--no-structures")


# --------------------------------------------------------------------------- 1, 8: nothing to count


def test_a_rate_with_nothing_to_count_is_nan_not_a_perfect_score():
    assert all(math.isnan(v) for v in detection_rates(0, 0, 0).values())
    empty_field = detection_rates(0, 3, 0)  # detections on a field without atoms
    assert empty_field["precision"] == 0.0 and math.isnan(empty_field["recall"]) and empty_field["f1"] == 0.0
    blind = detection_rates(0, 0, 3)  # atoms and no detection
    assert math.isnan(blind["precision"]) and blind["recall"] == 0.0 and blind["f1"] == 0.0
    assert detection_rates(3, 1, 0)["f1"] == pytest.approx(2 * 0.75 / 1.75)
    rows = per_class_rates(np.array([[4, 0], [0, 0]]), np.zeros(2, int), np.zeros(2, int))
    assert rows[0]["f1"] == 1.0 and all(math.isnan(rows[1][k]) for k in ("precision", "recall", "f1"))


def test_a_class_with_no_sites_and_no_detections_shows_a_dash_and_null(tmp_path):
    grid = np.array([(x, y) for x in (2.0, 4.0, 6.0, 8.0) for y in (2.0, 4.0, 6.0, 8.0)])
    sample = EvalSample(image=np.zeros((100, 100), np.float32), sampling_A=0.1, positions_A=grid,
                        labels=np.ones(len(grid), int), dose_e_per_A2=1e4, defocus_A=0.0)

    def detect(s):
        xy = s.positions_A / s.sampling_A
        n = len(xy)
        return AtomTable(x=xy[:, 0], y=xy[:, 1], label=np.ones(n, int), probability=np.ones(n), height=np.full(n, -1))

    rep = evaluate([sample], detect, class_names=("Mo", "Mo_vacancy"), radii_A=(0.5,))
    vacancy = rep["overall"]["0.5"]["per_class"][1]
    assert (vacancy["n_true"], vacancy["n_pred"]) == (0, 0) and math.isnan(vacancy["f1"])
    assert "| detector | Mo_vacancy | 0 | 0 | 0 | – | – | – |" in report_markdown(rep, "t")
    write_report(rep, tmp_path, "t")
    saved = json.loads((tmp_path / "report.json").read_text())
    row = saved["detectors"]["detector"]["overall"]["0.5"]["per_class"][1]
    assert row["precision"] is None and row["recall"] is None and row["f1"] is None


def test_a_store_with_no_finished_images_is_refused_in_one_line(tiny_graphene_store, tmp_path):
    empty = _with_jobs(tiny_graphene_store, tmp_path / "empty.zarr", [])
    stem = _model(tmp_path / "m")
    card = stem.with_suffix(".json").read_text()
    for extra in ((), ("--write-card",)):
        result = _invoke("evaluate", "--model", stem, "--data", empty, "--report", tmp_path / "r", *BASE, *extra)
        _one_line_error(result, "no finished images (0 of 8 simulated): nothing to score")
    assert not (tmp_path / "r").exists() and stem.with_suffix(".json").read_text() == card
    result = _invoke("calibrate", "--model", stem, "--data", empty)
    _one_line_error(result, "no finished images (0 of 8 simulated): nothing to calibrate on")


# --------------------------------------------------------------------------- 2, 3, 6, 10c: what the report says


def test_an_unfinished_store_is_scored_with_a_warning_and_its_images_recorded(tiny_graphene_store, tmp_path):
    part = _with_jobs(tiny_graphene_store, tmp_path / "part.zarr", [0])  # 2 of 8 images
    stem = _model(tmp_path / "m")
    card = stem.with_suffix(".json").read_text()
    result = _invoke("evaluate", "--model", stem, "--data", part, "--report", tmp_path / "r1", *BASE, "--write-card")
    _one_line_error(result, "only 2 of its 8 images are simulated (an unfinished store); its scores are not written")
    assert not (tmp_path / "r1").exists() and stem.with_suffix(".json").read_text() == card

    result = _invoke("evaluate", "--model", stem, "--data", part, "--report", tmp_path / "r2", *BASE)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "only 2 of its 8 images are simulated" in result.output
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert report["n_images"] == 2 and report["data"]["n"] == 2 and report["data"]["n_simulated"] == 8
    assert report["data"]["training_store"] is False and report["data"]["calibration_store"] is False
    assert report["model"]["path"] == str(stem.resolve()) and report["model"]["shipped"] is False
    md = (tmp_path / "r2" / "report.md").read_text().splitlines()
    assert md[2].startswith("**Warning:**") and "only 2 of its 8 images are simulated" in md[2]
    assert any(f"`{stem.resolve()}.safetensors` (not a shipped model)" in line for line in md[:10])


def test_the_training_store_is_marked_in_the_report(tiny_graphene_store, tmp_path):
    from atomfinder.datasets.store import DatasetStore

    meta = DatasetStore(tiny_graphene_store).meta
    trained = _model(tmp_path / "m", training={"data": {"seed": meta["seed"], "n": meta["n"]}})
    result = _invoke("evaluate", "--model", trained, "--data", tiny_graphene_store, "--report", tmp_path / "r", *BASE)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "the scores below flatter the model" in result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["data"]["training_store"] is True and report["data"]["n"] == 8
    assert any("the training store of tiny 0" in w for w in report["warnings"])
    md = (tmp_path / "r" / "report.md").read_text().splitlines()
    assert md[2].startswith("**Warning:**") and "the training store of tiny 0" in md[2]

    # 4: the same check for a --versus model, on its own card
    plain = _model(tmp_path / "p", name="plain")
    result = _invoke("evaluate", "--model", plain, "--versus", trained, "--data", tiny_graphene_store,
                     "--report", tmp_path / "v", *BASE)
    assert result.exit_code == 0, result.output
    assert "the training store of --versus model tiny 0" in result.output
    report = json.loads((tmp_path / "v" / "report.json").read_text())
    assert report["data"]["training_store"] is False and report["versus"]["training_store"] is True
    assert "the training store of --versus model tiny 0" in (tmp_path / "v" / "report.md").read_text()


def test_the_calibration_seed_and_the_test_seed_are_cross_checked(tiny_graphene_store, tmp_path):
    from atomfinder.datasets.store import DatasetStore

    seed = DatasetStore(tiny_graphene_store).meta["seed"]
    stem = _model(tmp_path / "m", calibration=_calibration(seed))
    card = stem.with_suffix(".json").read_text()
    result = _invoke("evaluate", "--model", stem, "--data", tiny_graphene_store, "--report", tmp_path / "r1",
                     *BASE, "--write-card")
    _one_line_error(result, f"seed {seed}, that of data/calib.zarr on which the calibration of tiny 0 was fitted")
    assert not (tmp_path / "r1").exists() and stem.with_suffix(".json").read_text() == card

    result = _invoke("evaluate", "--model", stem, "--data", tiny_graphene_store, "--report", tmp_path / "r2", *BASE)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "in-sample" in result.output
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert report["data"]["calibration_store"] is True
    assert "**Warning:**" in (tmp_path / "r2" / "report.md").read_text().splitlines()[2]

    # calibrating on the seed the card's evaluation used makes that evaluation in-sample
    tested = _model(tmp_path / "t", evaluation={"data": {"store": "data/test.zarr", "seed": seed, "n": 8}})
    card = tested.with_suffix(".json").read_text()
    result = _invoke("calibrate", "--model", tested, "--data", tiny_graphene_store, "--write-card")
    _one_line_error(result, f"seed {seed}, that of data/test.zarr on which tiny 0 was evaluated")
    assert tested.with_suffix(".json").read_text() == card


def test_an_earlier_report_is_refused_without_overwrite_and_its_stale_plots_removed(tiny_graphene_store, tmp_path):
    calibrated = _model(tmp_path / "c", calibration=_calibration(-1))
    plain = _model(tmp_path / "p", name="plain")
    report = tmp_path / "r"
    result = _invoke("evaluate", "--model", calibrated, "--data", tiny_graphene_store, "--report", report, *BASE)
    assert result.exit_code == 0, result.output
    assert (report / "reliability.png").is_file()
    before = (report / "report.json").read_text()
    result = _invoke("evaluate", "--model", plain, "--data", tiny_graphene_store, "--report", report, *BASE)
    _one_line_error(result, "already holds report.json, report.md")
    assert "--overwrite" in result.output and (report / "report.json").read_text() == before
    result = _invoke("evaluate", "--model", plain, "--data", tiny_graphene_store, "--report", report, *BASE,
                     "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (report / "reliability.png").exists()  # the plain model has no trust section
    assert json.loads((report / "report.json").read_text())["model"]["name"] == "plain"


# --------------------------------------------------------------------------- 7: the report folder, up front


def test_a_bad_report_folder_is_refused_before_any_work(tiny_graphene_store, tmp_path, monkeypatch):
    import atomfinder.analysis.evaluate as ev

    def no_work(*args, **kwargs):
        raise AssertionError("evaluated before the report folder was checked")

    monkeypatch.setattr(ev, "compare", no_work)
    stem = _model(tmp_path / "m")
    (tmp_path / "afile.txt").write_text("x")
    result = _invoke("evaluate", "--model", stem, "--data", tiny_graphene_store, "--report",
                     tmp_path / "afile.txt" / "sub", *BASE)
    _one_line_error(result, "cannot be an output directory")
    copy = shutil.copytree(tiny_graphene_store, tmp_path / "copy.zarr")
    listing = sorted(p.name for p in copy.iterdir())
    for target in (copy, copy / "sub"):
        result = _invoke("evaluate", "--model", stem, "--data", tiny_graphene_store, "--report", target, *BASE)
        _one_line_error(result, "a zarr (dataset) store; write the report to another folder")
    assert sorted(p.name for p in copy.iterdir()) == listing


# --------------------------------------------------------------------------- 9: tune-threshold


def test_tune_threshold_on_an_unfinished_training_store_says_so(tiny_graphene_store, tmp_path):
    from atomfinder.datasets.store import DatasetStore
    from atomfinder.nn.train import TrainConfig, split_jobs

    meta = DatasetStore(tiny_graphene_store).meta
    config = TrainConfig(name="tiny", validation_fraction=0.25, seed=0)
    _, val_jobs = split_jobs(4, config.validation_fraction, config.seed)
    others = [j for j in range(4) if j not in set(val_jobs.tolist())]
    part = _with_jobs(tiny_graphene_store, tmp_path / "part.zarr", others)
    stem = _model(tmp_path / "m", training={"data": {"seed": meta["seed"], "n": meta["n"]},
                                            "config": config.to_dict()})
    result = _invoke("tune-threshold", "--model", stem, "--data", part)
    _one_line_error(result, f"holds none of the {len(val_jobs)} validation jobs of tiny 0 (6 of 8 images simulated)")
    assert "trained without validation images" not in result.output
    # with its validation jobs but unfinished, the scan runs and says so
    part = _with_jobs(tiny_graphene_store, tmp_path / "val.zarr", val_jobs.tolist())
    result = _invoke("tune-threshold", "--model", stem, "--data", part, "--thresholds", "0")
    assert result.exit_code == 0, result.output
    assert f"warning: {part}: only {2 * len(val_jobs)} of its 8 images are simulated" in " ".join(result.output.split())


# --------------------------------------------------------------------------- 10


def test_a_single_image_model_on_a_focal_series_says_which_frame(tmp_path):
    pytest.importorskip("abtem")
    from atomfinder.datasets.generate import simulate_to_store
    from conftest import tiny_config

    store = simulate_to_store(tiny_config(frames=3, focal_step_A=(40.0, 120.0)), 2, tmp_path / "focal.zarr",
                              seed=3, workers=0)
    single = _model(tmp_path / "single", name="single")
    result = _invoke("evaluate", "--model", single, "--data", store, "--report", tmp_path / "r", *BASE)
    assert result.exit_code == 0, result.output
    assert "single 0 is a single-image model: it sees frame 0" in result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["model"]["frame"] == 0
    assert "it sees frame 0 (the least underfocused) of each 3-frame focal series" in (tmp_path / "r" / "report.md").read_text()


def test_a_model_file_here_that_shadows_a_shipped_name_is_said(tiny_graphene_store, tmp_path, monkeypatch):
    from atomfinder.nn.card import list_models

    name = list_models()[0]
    monkeypatch.chdir(tmp_path)
    local = _model(tmp_path / name, name="local")  # class C, like the tiny graphene store
    result = _invoke("models", name)
    assert result.exit_code == 0 and "warning:" in result.output, result.output
    assert f"not the shipped model {name}" in result.output and "local 0" in result.output
    listing = _invoke("models")
    assert listing.exit_code == 0 and "local 0" not in listing.output  # the list is of the shipped models
    result = _invoke("evaluate", "--model", name, "--data", tiny_graphene_store, "--report", tmp_path / "r", *BASE)
    assert result.exit_code == 0, result.output
    assert f"--model {name}: using {local.resolve()}.safetensors" in result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["model"]["path"] == str(local.resolve()) and report["model"]["shipped"] is False
    assert any(f"not the shipped model {name}" in w for w in report["warnings"])
    assert f"`{local.resolve()}.safetensors` (not a shipped model)" in (tmp_path / "r" / "report.md").read_text()
