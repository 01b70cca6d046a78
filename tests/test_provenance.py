"""Provenance of atom tables: the JSON sidecar beside each CSV and ``DataFrame.attrs``.

A round trip: detect to an output folder, read the CSV back with pandas (the atom
table's columns, unchanged) and the JSON (input, pixel size and its source, model
name and version, threshold, precision, atomfinder version, validity checks).
Uses a tiny untrained model saved into tmp_path, so the module runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import lattice_image
from typer.testing import CliRunner

import atomfinder
from atomfinder.cli import app
from atomfinder.detection.batch import detect_files
from atomfinder.detection.io import write_tiff_calibrated
from atomfinder.detection.micrograph import detect
from atomfinder.detection.peaks import TABLE_COLUMNS
from atomfinder.nn.card import ModelCard, save_model
from atomfinder.nn.unet import UNetConfig, build_model

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::atomfinder.detection.validity.ValidityWarning")  # untrained model

SAMPLING = 0.2  # Å/px of the tiny model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    cfg = UNetConfig(in_channels=1, n_classes=2, depth=2, width=4)
    torch.manual_seed(0)
    card = ModelCard(name="tiny", version="0.7", architecture=cfg.to_dict(), in_channels=1, class_names=("C",),
                     sampling_A=SAMPLING, normalization={"kind": "local", "window_A": 6.0},
                     detection={"threshold": 0.0, "min_distance_A": 1.0})
    return save_model(build_model(cfg).eval(), card, tmp_path_factory.mktemp("models") / "tiny")[0].with_suffix("")


def _lattice(shape=(64, 64), spacing_px=7.0, seed=0) -> np.ndarray:
    return lattice_image(shape, spacing_px, seed)


def _check_provenance(prov: dict, *, source: str, sampling: float, sampling_source: str, threshold: float,
                      threshold_source: str) -> None:
    assert prov["input"] == source
    assert prov["sampling_A"] == pytest.approx(sampling) and prov["sampling_source"] == sampling_source
    assert prov["model"]["name"] == "tiny" and prov["model"]["version"] == "0.7"
    assert prov["threshold"] == pytest.approx(threshold) and prov["threshold_source"] == threshold_source
    assert prov["min_distance_A"] == 1.0
    assert prov["class_log_bias"] is None  # a one-class model without class priors
    assert prov["test_time_augmentation"] is False  # the card does not ask for it
    assert prov["precision"] in ("float32", "bfloat16", "float16")
    assert prov["precision_requested"] in ("auto", "float32")
    assert prov["atomfinder_version"] == atomfinder.__version__


def test_round_trip_csv_and_json_sidecar_from_the_command_line(tiny_model, tmp_path):
    src = tmp_path / "frame.npy"
    np.save(src, _lattice())
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["detect", str(src), "--model", str(tiny_model), "--sampling", str(SAMPLING),
                                      "--out", str(out), "--threshold", "0.1", "--precision", "float32"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["frame.csv", "frame.json", "frame.png"]
    table = pd.read_csv(out / "frame.csv")
    assert list(table.columns) == list(TABLE_COLUMNS) and len(table) > 0
    sidecar = json.loads((out / "frame.json").read_text(encoding="utf-8"))
    assert sidecar["atom_table"] == "frame.csv" and sidecar["columns"] == list(TABLE_COLUMNS)
    assert sidecar["rows"] == len(table)
    prov = sidecar["provenance"]
    _check_provenance(prov, source=str(src), sampling=SAMPLING, sampling_source="--sampling", threshold=0.1,
                      threshold_source="argument")
    assert prov["precision"] == "float32" and prov["input_files"] == [str(src)] and prov["frames"] == 1
    assert prov["model"]["path"] == str(tiny_model)
    validity = sidecar["validity"]
    assert set(validity) >= {"passed", "warnings", "images", "thresholds"}
    assert set(validity["images"][0]["checks"]) == {"atom_count", "lattice_order", "lattice_spacing",
                                                    "contrast_to_noise", "ambiguous_detections"}
    expected, _ = detect(src, str(tiny_model), sampling=SAMPLING, threshold=0.1, precision="float32")
    np.testing.assert_allclose(table[["x", "y"]].to_numpy(), expected[["x", "y"]].to_numpy(), atol=1e-4)
    assert expected.attrs["provenance"] | {"sampling_source": "--sampling"} == prov
    assert expected.attrs["provenance"]["sampling_source"] == "argument"  # the API names a given value so
    assert expected.attrs["validity"] == validity


def test_pixel_size_read_from_the_file_is_recorded_as_such(tiny_model, tmp_path):
    src = write_tiff_calibrated(tmp_path / "calibrated.tif", _lattice(), SAMPLING)
    written = detect_files([src], tiny_model, tmp_path / "out")
    sidecar = json.loads(next(p for p in written if p.suffix == ".json").read_text(encoding="utf-8"))
    _check_provenance(sidecar["provenance"], source=str(src), sampling=SAMPLING, sampling_source="file",
                      threshold=0.0, threshold_source="card")
    prov = sidecar["provenance"]  # where in the file, as written there
    assert (prov["calibration_source"], prov["file_unit"], prov["calibration_note"]) == ("ImageJ metadata", "Å", None)
    assert prov["file_scale"] == pytest.approx(SAMPLING)
    table, _ = detect(src, str(tiny_model))
    assert table.attrs["provenance"]["sampling_source"] == "file"


def test_why_the_file_gave_no_pixel_size_is_recorded(tiny_model, tmp_path):
    """An MRC header with MX = MY = 0 gives no pixel size (rosettasciio's 1 nm is a placeholder);
    with --sampling the provenance says why the file's was not used, and an array has no file calibration."""
    from test_io_files import write_mrc

    src = write_mrc(tmp_path / "mx0.mrc", _lattice(), (64 * 0.2, 64 * 0.2, 1.0), (0, 0, 0))
    written = detect_files([src], tiny_model, tmp_path / "out", sampling_A=SAMPLING)
    prov = json.loads(next(p for p in written if p.suffix == ".json").read_text(encoding="utf-8"))["provenance"]
    assert prov["sampling_source"] == "argument" and prov["file_sampling_A"] is None
    assert prov["calibration_source"] is None and "MX = 0, MY = 0 in the MRC header" in prov["calibration_note"]
    table, _ = detect(_lattice(), str(tiny_model), sampling=SAMPLING)
    assert {k: table.attrs["provenance"][k] for k in ("calibration_source", "file_unit", "file_scale",
                                                      "calibration_note")} == dict.fromkeys(
        ("calibration_source", "file_unit", "file_scale", "calibration_note"))


def test_api_attrs_for_an_array_and_a_stack(tiny_model):
    table, info = detect(_lattice(), str(tiny_model), sampling=SAMPLING)
    _check_provenance(table.attrs["provenance"], source="<array>", sampling=SAMPLING, sampling_source="argument",
                      threshold=0.0, threshold_source="card")
    assert info["provenance"] == table.attrs["provenance"] and info["validity"] == table.attrs["validity"]
    stack, _ = detect(np.stack([_lattice(seed=1), _lattice(seed=2)]), str(tiny_model), sampling=SAMPLING)
    assert stack.attrs["provenance"]["frames"] == 2
    assert [im["frame"] for im in stack.attrs["validity"]["images"]] == [0, 1]


def test_focal_series_files_are_all_recorded(tmp_path):
    cfg = UNetConfig(in_channels=3, n_classes=2, depth=2, width=4)
    card = ModelCard(name="tiny", version="0.7", architecture=cfg.to_dict(), in_channels=3, class_names=("C",),
                     sampling_A=SAMPLING, normalization={"kind": "local", "window_A": 6.0},
                     defocus_offsets_A=(0.0, 50.0, 100.0), detection={"threshold": 0.0, "min_distance_A": 1.0})
    stem = save_model(build_model(cfg).eval(), card, tmp_path / "focal")[0].with_suffix("")
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"df{i}.npy")
        np.save(paths[-1], _lattice(seed=i))
    written = detect_files(paths, stem, tmp_path / "out", sampling_A=SAMPLING, focal_series=True)
    sidecar = json.loads(next(p for p in written if p.suffix == ".json").read_text(encoding="utf-8"))
    prov = sidecar["provenance"]
    assert prov["input_files"] == [str(p) for p in paths] and prov["focal_series"] is True and prov["frames"] == 3
    assert [im["frame"] for im in sidecar["validity"]["images"]] == [None]


def test_augment_switch_overrides_the_card_and_is_recorded(tiny_model, tmp_path):
    """``--augment`` / ``augment=True`` averages the eight views although the card does not ask
    for it (the maps then differ from the plain ones), ``augment=False`` gives the plain result,
    and the provenance records what was used."""
    image = _lattice()
    plain, plain_info = detect(image, str(tiny_model), sampling=SAMPLING, precision="float32")
    off, _ = detect(image, str(tiny_model), sampling=SAMPLING, precision="float32", augment=False)
    on, on_info = detect(image, str(tiny_model), sampling=SAMPLING, precision="float32", augment=True)
    assert plain.attrs["provenance"]["test_time_augmentation"] is False
    assert off.attrs["provenance"] == plain.attrs["provenance"]
    pd.testing.assert_frame_equal(off, plain)
    assert on.attrs["provenance"]["test_time_augmentation"] is True
    assert not np.allclose(on_info["probabilities"], plain_info["probabilities"])
    src = tmp_path / "frame.npy"
    np.save(src, image)
    for flag, expected in (("--augment", True), ("--no-augment", False)):
        out = tmp_path / flag.strip("-")
        result = CliRunner().invoke(app, ["detect", str(src), "--model", str(tiny_model), "--sampling",
                                          str(SAMPLING), "--out", str(out), flag])
        assert result.exit_code == 0, result.output
        sidecar = json.loads((out / "frame.json").read_text(encoding="utf-8"))
        assert sidecar["provenance"]["test_time_augmentation"] is expected
