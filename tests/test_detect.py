"""detection.micrograph / detection.batch / detection.overlay / `atomfinder detect`: API, CLI outputs, one-line errors.

Uses tiny untrained models saved into tmp_path (no shipped model needed); every image
is 64 x 64 px, so the whole module runs in seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.ndimage import shift as nd_shift
from typer.testing import CliRunner

from atomfinder.cli import app
from atomfinder.detection.io import MicrographError, read_micrograph, write_tiff_calibrated
from atomfinder.detection.overlay import display_image, overlay_figure, scale_bar_label, scale_bar_length_A
from atomfinder.detection.peaks import TABLE_COLUMNS
from atomfinder.detection.batch import detect_files
from atomfinder.detection.micrograph import detect
from atomfinder.detection.preprocess import clean_image, median3x3
from conftest import save_untrained_model

torch.set_num_threads(1)

DM3 = Path(__file__).resolve().parent / "data" / "io-samples" / "digitalmicrograph_2D_test-1.dm3"
SAMPLING = 0.2  # Å/px of the test images and of the tiny models


def _save_tiny(path: Path, in_channels: int = 1, name: str = "tiny") -> Path:
    return save_untrained_model(path, SAMPLING, in_channels=in_channels, name=name)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def focal_model(tmp_path_factory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("models") / "focal3", in_channels=3, name="focal3")


def _lattice(shape=(64, 64), spacing_px=7.0, sigma_px=1.5, seed=0) -> np.ndarray:
    """Gaussian 'atoms' on a square lattice plus a little noise."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    img = np.zeros(shape)
    for cy in np.arange(3, shape[0], spacing_px):
        for cx in np.arange(3, shape[1], spacing_px):
            img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma_px**2))
    rng = np.random.default_rng(seed)
    return (100 + 50 * img + rng.normal(0, 1.0, shape)).astype(np.float32)


def _check_table(table: pd.DataFrame) -> None:
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert len(table) > 0 and set(table["label"]) == {"C"}
    np.testing.assert_allclose(table["x_angstrom"], table["x"] * SAMPLING)


# --------------------------------------------------------------------------- API


def test_api_on_array(tiny_model):
    table, info = detect(_lattice(), tiny_model, sampling=SAMPLING)
    _check_table(table)
    assert info["probabilities"].dtype == np.float32 and info["probabilities"].shape == (2, 64, 64)
    assert info["height"] is None and info["sampling_A"] == SAMPLING and info["model_sampling_A"] == SAMPLING
    # A finer input is resampled to the model's grid; positions stay in input pixels.
    table2, info2 = detect(_lattice((128, 128)), tiny_model, sampling=SAMPLING / 2)
    assert info2["probabilities"].shape == (2, 64, 64) and table2["x"].max() > 64


def test_api_on_calibrated_tiff(tiny_model, tmp_path):
    path = write_tiff_calibrated(tmp_path / "lattice.tif", _lattice(), SAMPLING)
    table, info = detect(path, tiny_model)
    _check_table(table)
    assert info["sampling_A"] == pytest.approx(SAMPLING)
    assert detect(str(path), tiny_model, sampling=0.1)[1]["sampling_A"] == 0.1  # --sampling overrides


def test_api_on_hyperspy_like_signal(tiny_model):
    axis = SimpleNamespace(scale=SAMPLING / 10, units="nm")
    signal = SimpleNamespace(data=_lattice(), axes_manager=SimpleNamespace(signal_axes=(axis, axis)))
    table, info = detect(signal, tiny_model)
    _check_table(table)
    assert info["sampling_A"] == pytest.approx(SAMPLING)
    bare = SimpleNamespace(scale=1.0, units="<undefined>")
    uncalibrated = SimpleNamespace(data=_lattice(), axes_manager=SimpleNamespace(signal_axes=(bare, bare)))
    with pytest.raises(MicrographError, match="no pixel size"):
        detect(uncalibrated, tiny_model)
    assert detect(uncalibrated, tiny_model, sampling=SAMPLING)[1]["sampling_A"] == SAMPLING


def test_api_stack_gets_frame_column(tiny_model):
    stack = np.stack([_lattice(seed=i) for i in range(3)])
    table, info = detect(stack, tiny_model, sampling=SAMPLING)
    assert list(table.columns) == ["frame", *TABLE_COLUMNS]
    assert set(table["frame"]) == {0, 1, 2}
    assert info["probabilities"].shape == (3, 2, 64, 64)


def test_unknown_model_lists_available(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'nope'.*available models"):
        detect(_lattice(), "nope", sampling=SAMPLING)


def test_import_atomfinder_is_light():
    code = ("import sys, atomfinder; assert 'torch' not in sys.modules and 'abtem' not in sys.modules; "
            "assert callable(atomfinder.detect); assert 'abtem' not in sys.modules and 'ase' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- cleaning and registration


def test_clean_image_repairs_dead_and_hot_pixels():
    img = _lattice()
    broken = img.copy()
    broken[10, 20] = 1e5  # hot
    broken[30, 40] = 0.0  # dead
    broken[50, 5] = np.nan
    broken[5, 50] = np.inf
    clean = clean_image(broken)
    assert np.isfinite(clean).all()
    for r, c in [(10, 20), (30, 40)]:
        assert abs(clean[r, c] - img[r, c]) < 10  # back near the truth (signal range 100..150)
    untouched = np.ones(img.shape, bool)
    untouched[[10, 30, 50, 5], [20, 40, 5, 50]] = False
    assert np.array_equal(clean[untouched], img[untouched])  # atoms and noise are left alone
    assert clean[50, 5] == pytest.approx(np.median(img), abs=5)  # NaN: median of finite pixels


def test_clean_image_refuses_constant_and_all_nan():
    with pytest.raises(MicrographError, match="constant"):
        clean_image(np.full((32, 32), 7.0), "flat.npy")
    with pytest.raises(MicrographError, match="no finite"):
        clean_image(np.full((32, 32), np.nan), "nan.npy")
    with pytest.raises(MicrographError, match=r"frame 1"):
        clean_image(np.stack([_lattice(), np.full((64, 64), 3.0)]), "stack.npy")


def _drifted_series(true_dy_dx: np.ndarray) -> np.ndarray:
    """A 96 x 96 field (a lattice of spacing 9.3 px and one broad blob, so that one shift fits) in frames
    drifted by ``true_dy_dx`` (rows of (dy, dx) px), each with its own noise."""
    rng = np.random.default_rng(1)
    ref = _lattice((96, 96), spacing_px=9.3, seed=2)
    ref += 30 * np.exp(-((np.mgrid[:96, :96][0] - 40.0) ** 2 + (np.mgrid[:96, :96][1] - 55.0) ** 2) / 50.0)
    return np.stack([nd_shift(ref, s, order=3, mode="nearest") + rng.normal(0, 1, ref.shape) for s in true_dy_dx])


def test_detect_registers_a_focal_series_only_for_a_model_trained_on_aligned_frames(focal_model, tmp_path):
    """detect(focal_series=True) undoes a known drift for a model trained on aligned frames (shifts_px
    recovers it) and leaves the frames as they are for one trained on drifting frames (shifts_px zero)."""
    import dataclasses

    from atomfinder.nn.card import load_model, save_model

    true = np.array([[0.0, 0.0], [1.3, -2.7], [-3.45, 0.8]])  # (dy, dx) drift of each frame
    series = _drifted_series(true).astype(np.float32)
    _, info = detect(series, focal_model, sampling=SAMPLING, focal_series=True)
    np.testing.assert_allclose(info["shifts_px"], -true, atol=0.3)  # (dy, dx) applied: minus the drift

    net, card = load_model(focal_model)
    assert card.training.get("data", {}).get("simulation", {}).get("drift_px", 0) == 0
    drifting = dataclasses.replace(card, training={"data": {"simulation": {"drift_px": 4.0}}})
    save_model(net, drifting, tmp_path / "drifting")
    _, info = detect(series, tmp_path / "drifting", sampling=SAMPLING, focal_series=True)
    np.testing.assert_array_equal(info["shifts_px"], np.zeros((3, 2)))


# --------------------------------------------------------------------------- overlay


def test_scale_bar_is_round():
    assert scale_bar_length_A(12.8) == 2.0 and scale_bar_label(2.0) == "2 Å"
    assert scale_bar_length_A(256.0) == 50.0 and scale_bar_label(50.0) == "5 nm"
    assert scale_bar_label(10.0) == "1 nm"


def test_overlay_png(tmp_path):
    table = pd.DataFrame({"x": [10.0, 30.0, 50.0], "y": [10.0, 30.0, 50.0], "label": ["Au", "Au", "Au"],
                          "height": pd.array([3, 4, pd.NA], dtype="Int64")})
    path = overlay_figure(_lattice(), table, ("Au",), SAMPLING, tmp_path / "o.png", title="t")
    assert path.stat().st_size > 5000
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]  # no temporary files left


# --------------------------------------------------------------------------- files and CLI


def test_cli_writes_csv_png_and_probabilities(tiny_model, tmp_path):
    src = write_tiff_calibrated(tmp_path / "lattice.tif", _lattice(), SAMPLING)
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["detect", str(src), "--model", str(tiny_model), "--out", str(out),
                                      "--probabilities"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["lattice.csv", "lattice.json", "lattice.png",
                                                     "lattice_probabilities.tif"]
    table = pd.read_csv(out / "lattice.csv")
    assert list(table.columns) == list(TABLE_COLUMNS) and len(table) > 0 and table["height"].isna().all()
    assert f"{len(table)} atoms" in result.output and str(out) in result.output
    assert (out / "lattice.png").stat().st_size > 5000
    probs = read_micrograph(out / "lattice_probabilities.tif")
    assert probs.data.shape == (2, 64, 64) and probs.sampling_A == pytest.approx(SAMPLING)
    import tifffile

    with tifffile.TiffFile(out / "lattice_probabilities.tif") as tif:  # classes are channels in Fiji, as for a stack
        assert tif.series[0].axes == "CYX" and tif.imagej_metadata["channels"] == 2


def test_focal_series_from_files_and_from_one_stack(focal_model, tmp_path):
    frames = [_lattice(seed=i) for i in range(3)]
    paths = []
    for i, f in enumerate(frames):
        paths.append(tmp_path / f"df{i}.npy")
        np.save(paths[-1], f)
    written = detect_files(paths, focal_model, tmp_path / "a", sampling_A=SAMPLING, focal_series=True)
    assert sorted(p.name for p in written) == ["df0.csv", "df0.json", "df0.png"]
    np.save(tmp_path / "series.npy", np.stack(frames))
    table, info = detect(tmp_path / "series.npy", focal_model, sampling=SAMPLING, focal_series=True)
    assert list(table.columns) == list(TABLE_COLUMNS) and info["shifts_px"].shape == (3, 2)


def test_nothing_written_when_a_later_input_fails(tiny_model, tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, _lattice())
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"")
    with pytest.raises(MicrographError, match="bad.npy"):
        detect_files([good, bad], tiny_model, tmp_path / "out", sampling_A=SAMPLING)
    assert not (tmp_path / "out").exists()


def test_detect_files_on_local_dask_cluster(tiny_model, tmp_path):
    distributed = pytest.importorskip("distributed")
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"img{i}.npy")
        np.save(paths[-1], _lattice(seed=i))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        written = detect_files(paths, tiny_model, tmp_path / "out", sampling_A=SAMPLING,
                               scheduler=cluster.scheduler_address)
    assert sorted(p.name for p in written) == ["img0.csv", "img0.json", "img0.png", "img1.csv", "img1.json", "img1.png"]


def _make_error_case(case: str, tmp: Path, tiny_model: Path, focal_model: Path) -> tuple[Path, list[str], list[str]]:
    """(input file, extra CLI args, words the error must contain)."""
    model = ["--model", str(tiny_model), "--sampling", str(SAMPLING)]
    if case == "empty":
        path = tmp / "empty.tif"
        path.write_bytes(b"")
        return path, model, ["empty"]
    if case == "truncated_dm3":
        path = tmp / "cut.dm3"
        path.write_bytes(DM3.read_bytes()[:1000])
        return path, model, ["cannot read", "truncated"]
    if case == "text_as_tif":
        path = tmp / "notes.tif"
        path.write_text("this is not an image\n")
        return path, model, ["cannot read"]
    arrays = {
        "one_pixel": np.ones((1, 1), np.float32),
        "four_d": np.random.default_rng(0).random((2, 2, 32, 32)),
        "all_nan": np.full((32, 32), np.nan),
    }
    words = {"one_pixel": ["too small"], "four_d": ["4-D"], "all_nan": ["no finite"]}
    path = tmp / f"{case}.npy"
    if case in arrays:
        np.save(path, arrays[case])
        return path, model, words[case]
    np.save(path, _lattice())
    if case == "unknown_model":
        return path, ["--model", "no-such-model", "--sampling", "0.2"], ["unknown model", "no-such-model", "available"]
    if case == "wrong_frames":
        np.save(path, np.stack([_lattice(), _lattice(seed=1)]))
        return path, ["--model", str(focal_model), "--sampling", "0.2", "--focal-series"], ["2 frame", "3 frames"]
    if case == "uncalibrated":
        return path, ["--model", str(tiny_model)], ["no pixel size", "--sampling"]
    if case == "bad_precision":
        return path, model + ["--precision", "half"], ["precision", "half", "float32"]
    raise AssertionError(case)


ERROR_CASES = ["empty", "truncated_dm3", "text_as_tif", "one_pixel", "four_d", "all_nan",
               "unknown_model", "wrong_frames", "uncalibrated", "bad_precision"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_cli_errors_are_one_line_and_write_nothing(case, tiny_model, focal_model, tmp_path):
    path, args, words = _make_error_case(case, tmp_path, tiny_model, focal_model)
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["detect", str(path), *args, "--out", str(out)])
    text = result.output.strip()
    assert result.exit_code == 2, (result.exit_code, text)
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    if case not in ("unknown_model", "bad_precision"):  # refused before any file is read
        assert path.name in text, text
    for word in words:
        assert word in text, text
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("below", [False, True], ids=["the_folder", "a_folder_to_create_in_it"])
def test_cli_refuses_unwritable_output_dir(tiny_model, tmp_path, monkeypatch, below):
    """An output folder the user may not write (os.access says so; simulated, since a 0o500 folder is
    writable to root) is refused in one line, exit 2, before any work; one to be made inside it too."""
    src = tmp_path / "img.npy"
    np.save(src, _lattice())
    locked = tmp_path / "locked"
    locked.mkdir()
    out = locked / "results" if below else locked
    real_access = os.access
    asked = []

    def access(path, mode, *args, **kwargs):
        if Path(path) == locked and mode & os.W_OK:
            asked.append(path)
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    result = CliRunner().invoke(app, ["detect", str(src), "--model", str(tiny_model), "--sampling", "0.2",
                                      "--out", str(out)])
    text = result.output.strip()
    assert asked, "the output folder's permission was not checked"
    assert result.exit_code == 2 and "Traceback" not in text and len(text.splitlines()) == 1, text
    assert f"{out.name}: output directory" in text and "is not writable" in text, text
    assert ("cannot create it in" in text) is below and "locked" in text
    assert not any(locked.iterdir())
    monkeypatch.undo()  # writable again: the same command works
    result = CliRunner().invoke(app, ["detect", str(src), "--model", str(tiny_model), "--sampling", "0.2",
                                      "--out", str(out)])
    assert result.exit_code == 0 and (out / "img.csv").is_file(), result.output


def test_cli_refuses_output_dir_below_a_file(tiny_model, tmp_path):
    src = tmp_path / "img.npy"
    np.save(src, _lattice())
    result = CliRunner().invoke(app, ["detect", str(src), "--model", str(tiny_model), "--sampling", "0.2",
                                      "--out", str(src / "results")])
    text = result.output.strip()
    assert result.exit_code == 2 and "Traceback" not in text and len(text.splitlines()) == 1
    assert "img.npy" in text and "is a file" in text


@pytest.mark.parametrize("shape", [(300, 517), (5, 7), (3, 3), (1, 9), (2, 1)])
def test_median3x3_equals_scipy_median_filter(shape):
    from scipy.ndimage import median_filter

    rng = np.random.default_rng(4)
    img = np.round(rng.normal(size=shape) * 2).astype(np.float32)  # many ties
    assert np.array_equal(median3x3(img), median_filter(img, size=3, mode="reflect"))


def test_display_image_block_averages_only_large_images():
    small = np.arange(12.0).reshape(3, 4)
    assert np.array_equal(display_image(small, max_px=4), small)
    big = np.arange(7 * 10, dtype=float).reshape(7, 10)
    out = display_image(big, max_px=4)  # factor 3: 2 x 3 blocks, the 7th row and 10th column dropped
    assert out.shape == (2, 3)
    assert out[0, 0] == pytest.approx(big[:3, :3].mean())
