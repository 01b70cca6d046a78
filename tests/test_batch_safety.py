"""What a batch run must never do to a user's files, and what it must say (found by a CLI audit):

- an output that would replace an input (``a.png`` into its own folder) is refused, even with --overwrite;
- --resume skips only inputs finished with the same settings, refuses others without --overwrite,
  and says how many it skipped;
- several unusable inputs are all named, one error line each;
- ``track`` refuses bad settings and an unusable --out before any frame is detected, and records
  its provenance;
- a model named by an empty string or by half of its files gets a one-line reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import lattice_image, save_untrained_model
from typer.testing import CliRunner

from atomfinder.cli import app
from atomfinder.detection.batch import (
    InputErrors,
    detect_files,
    finished_inputs,
    recorded_settings,
    run_settings,
)
from atomfinder.detection.io import write_tiff_calibrated

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::atomfinder.detection.validity.ValidityWarning")  # untrained model

SAMPLING = 0.2  # Å/px of the tiny model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_untrained_model(tmp_path_factory.mktemp("models") / "tiny", SAMPLING)


def _lattice(shape=(64, 64), spacing_px=7.0, seed=0) -> np.ndarray:
    return lattice_image(shape, spacing_px, seed)


def _inputs(folder: Path, n: int = 2, sampling: float = SAMPLING) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_tiff_calibrated(folder / f"img{i}.tif", _lattice(seed=i), sampling) for i in range(n)]


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------- outputs never replace inputs


def test_an_output_that_would_replace_an_input_is_refused_even_with_overwrite(tiny_model, tmp_path):
    from PIL import Image

    folder = tmp_path / "w"
    folder.mkdir()
    png = folder / "a.png"
    Image.fromarray(_lattice().astype(np.uint8)).save(png)
    before = png.read_bytes()
    for extra in ([], ["--overwrite"]):
        result = CliRunner().invoke(app, ["detect", str(png), "--model", str(tiny_model), "--sampling",
                                          str(SAMPLING), "--out", str(folder), *extra])
        assert result.exit_code == 2, result.output
        assert _errors(result.output) == [f"error: {png}: is an input, and its output a.png would replace it in "
                                          f"{folder}; choose another output folder"]
    assert png.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]
    with pytest.raises(ValueError, match="is an input"):
        detect_files([png], tiny_model, folder, sampling_A=SAMPLING)


# --------------------------------------------------------------------------- resume


def test_resume_skips_only_inputs_finished_with_the_same_settings(tiny_model, tmp_path):
    inputs = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    first = detect_files(inputs, tiny_model, out)
    assert len(first) == 6
    csv = {p: p.read_bytes() for p in first if p.suffix == ".csv"}

    # the sidecars give back the settings the run had
    from atomfinder.nn.card import load_model

    _, card = load_model(tiny_model)
    same = run_settings(card)
    assert recorded_settings(out / "img0.json") == same == recorded_settings(out / "img1.json")
    assert finished_inputs(inputs, out, settings=same) == [(str(inputs[0]),), (str(inputs[1]),)]
    assert detect_files(inputs, tiny_model, out, resume=True, overwrite=False) == []  # all done: nothing redone

    other = run_settings(card, threshold=0.5)
    assert other["threshold"] == 0.5 != same["threshold"]
    assert finished_inputs(inputs, out, settings=other) == []
    with pytest.raises(ValueError, match=r"img0\.json: made with threshold 0\.0 \(now 0\.5\) \(and 1 more\): "
                                         r"--resume continues a run with the same settings"):
        detect_files(inputs, tiny_model, out, threshold=0.5, resume=True, overwrite=False)
    assert {p: p.read_bytes() for p in csv} == csv  # nothing was touched

    redone = detect_files(inputs, tiny_model, out, threshold=0.5, resume=True, overwrite=True)
    assert sorted(p.name for p in redone) == sorted(p.name for p in first)
    assert recorded_settings(out / "img0.json") == other

    # given pixel size: a different setting from the file's, however it is given
    assert run_settings(card, sampling_A=0.25)["pixel size"] == "0.25 Å/px given"
    assert run_settings(card, sampling_A=0.25, sampling_label="--sampling") == run_settings(card, sampling_A=0.25)


def test_resume_from_the_command_line_names_the_other_settings_and_counts_the_skipped(tiny_model, tmp_path):
    inputs = [str(p) for p in _inputs(tmp_path / "in", n=3)]
    out = tmp_path / "out"
    base = ["detect", *inputs, "--model", str(tiny_model), "--out", str(out)]
    assert CliRunner().invoke(app, base).exit_code == 0
    (out / "img2.csv").unlink()  # as if killed between the renames of its files

    result = CliRunner().invoke(app, base + ["--resume"])
    assert result.exit_code == 0, result.output
    assert "2 inputs finished earlier with the same settings: skipped" in result.output
    assert (out / "img2.csv").exists()

    result = CliRunner().invoke(app, base + ["--resume", "--sampling", "0.25"])
    assert result.exit_code == 2
    assert _errors(result.output) == [
        f"error: {out / 'img0.json'}: made with pixel size from each file (now 0.25 Å/px given) (and 2 more): "
        "--resume continues a run with the same settings; give --overwrite to redo those inputs, or another --out"]


# --------------------------------------------------------------------------- every bad input named


def test_every_unusable_input_is_named_on_its_own_line_and_nothing_is_written(tiny_model, tmp_path):
    good = _inputs(tmp_path / "in", n=1)[0]
    constant = write_tiff_calibrated(tmp_path / "in" / "blank.tif", np.full((64, 64), 7.0, np.float32), SAMPLING)
    uncalibrated = tmp_path / "in" / "raw.npy"
    np.save(uncalibrated, _lattice())
    out = tmp_path / "out"
    with pytest.raises(InputErrors) as info:
        detect_files([good, constant, uncalibrated], tiny_model, out)
    problems = info.value.problems
    assert len(problems) == 3
    assert problems[0].startswith(f"{constant}: constant image") and problems[1].startswith(f"{uncalibrated}: ")
    assert problems[2] == "2 of 3 inputs cannot be used"
    assert not out.exists()

    result = CliRunner().invoke(app, ["detect", str(good), str(constant), str(uncalibrated), "--model",
                                      str(tiny_model), "--out", str(out)])
    assert result.exit_code == 2
    lines = _errors(result.output)
    assert len(lines) == 3 and lines[0] == f"error: {problems[0]}" and lines[2] == f"error: {problems[2]}"
    assert lines[1] == f"error: {uncalibrated}: no pixel size in the file; give it with --sampling (Å per pixel)"
    assert "Traceback" not in result.output and not out.exists()

    with pytest.raises(ValueError, match="constant image") as one:  # a single problem is itself
        detect_files([good, constant], tiny_model, out)
    assert not isinstance(one.value, InputErrors)


# --------------------------------------------------------------------------- track


def _never_detect(frame):
    raise AssertionError("a frame was detected before the settings were checked")


@pytest.mark.parametrize("settings, message", [
    ({"tolerance_A": 0.0}, "tolerance must be a positive distance in Å, got 0"),
    ({"frame_interval_s": -1.0}, "frame interval must be a positive number of seconds, got -1"),
    ({"frame_interval_s": 0.0}, "frame interval must be a positive number of seconds, got 0"),
])
def test_track_refuses_bad_settings_before_detecting_and_creates_nothing(settings, message, tmp_path):
    from atomfinder.analysis.timeseries import track

    frames = np.stack([_lattice(seed=i) for i in range(3)])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        track(frames, _never_detect, SAMPLING, out, **settings)
    assert not out.exists()


def test_track_refuses_an_output_folder_it_cannot_use_before_detecting(tmp_path):
    from atomfinder.analysis.timeseries import track

    frames = np.stack([_lattice(seed=i) for i in range(3)])
    a_file = tmp_path / "afile"
    a_file.write_text("not a folder")
    with pytest.raises(ValueError, match=r"afile: cannot be an output directory \(.*afile is a file\)"):
        track(frames, _never_detect, SAMPLING, a_file)


def test_track_writes_its_provenance(tiny_model, tmp_path):
    src = write_tiff_calibrated(tmp_path / "series.tif", np.stack([_lattice(seed=i) for i in range(3)]), SAMPLING)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["track", str(src), "--model", str(tiny_model), "--out", str(out),
                                      "--frame-interval", "0.5", "--tolerance", "0.8"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "provenance.json").read_text(encoding="utf-8"))
    assert record["input"] == str(src) and record["frames"] == 3
    assert record["sampling_A"] == pytest.approx(SAMPLING) and record["sampling_source"] == "file"
    assert record["model"]["name"] == "tiny" and record["model"]["path"] == str(tiny_model)
    tracking = record["tracking"]
    assert tracking["tolerance_A"] == 0.8 and tracking["frame_interval_s"] == 0.5
    assert tracking["switch_cost_source"] == "noise" and tracking["switch_cost_nats"] >= 2.0
    assert tracking["sites"] == len((out / "sites.csv").read_text().splitlines()) - 1
    assert "drift dx, dy" in record["units"]


# --------------------------------------------------------------------------- models and provenance


def test_an_empty_model_name_or_half_a_model_gets_a_reason(tiny_model, tmp_path):
    from atomfinder.nn.card import resolve_model

    with pytest.raises(ValueError, match=r"^no model given \(an empty name\); available models: .*graphene"):
        resolve_model("")
    half = tmp_path / "half"
    half.with_suffix(".safetensors").write_bytes(Path(str(tiny_model) + ".safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"half\.safetensors: a model needs both half\.safetensors \(weights\) "
                                         r"and half\.json \(its card\); .*half\.json is missing"):
        resolve_model(half)


def test_provenance_keeps_the_files_own_pixel_size_when_one_is_given(tiny_model, tmp_path):
    src = _inputs(tmp_path / "in", n=1, sampling=0.21)[0]
    out = tmp_path / "out"
    detect_files([src], tiny_model, out, sampling_A=SAMPLING)
    prov = json.loads((out / "img0.json").read_text(encoding="utf-8"))["provenance"]
    assert prov["sampling_A"] == pytest.approx(SAMPLING) and prov["sampling_source"] == "argument"
    assert prov["file_sampling_A"] == pytest.approx(0.21)


def test_a_stack_read_frame_by_frame_drops_atoms_where_a_frame_has_no_data(tiny_model, tmp_path):
    import pandas as pd

    frames = np.stack([_lattice(seed=i) for i in range(3)])
    frames[1, :, :30] = np.nan
    np.save(tmp_path / "stack.npy", frames)  # a multi-frame .npy is read one frame at a time
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["detect", str(tmp_path / "stack.npy"), "--model", str(tiny_model),
                                      "--sampling", str(SAMPLING), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "note:" in result.output and "in regions without data" in result.output
    table = pd.read_csv(out / "stack.csv")
    deep = table["x"] < 30 - 0.5 / SAMPLING - 0.5
    assert deep[table["frame"] == 0].any() and deep[table["frame"] == 2].any()
    assert not deep[table["frame"] == 1].any()
    notes = json.loads((out / "stack.json").read_text(encoding="utf-8"))["provenance"]["notes"]
    assert any("regions without data" in n for n in notes)
