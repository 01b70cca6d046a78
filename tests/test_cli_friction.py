"""Command-line friction of issue 16 (item 5), one test (or more) per point:

1. help texts keep their ``[table]`` names (rich markup swallowed them);
2. flags show no value in --help, ``--debug`` works after the command's name, ``--version``;
3. the pixel size of each input and its source are printed, ``--sampling`` replacing a
   different calibration is noted, and earlier outputs are replaced only with ``--overwrite``;
4. messages name the API keyword from Python and the option from the command line;
5. ``track`` speaks of a time series, not a focal series;
6. colour images are refused (grey stored as RGB is read, with a note); an empty TIFF
   gives one line, and tifffile logs nothing;
7. ``atomfinder models NAME`` prints the card's main fields;
8. ``atomfinder info FILE...``;
9. probability maps on the input's pixel grid.

Most tests read help texts, error paths and tiny arrays; two run a tiny untrained
network on a 64 x 64 image (well under a second of inference).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from atomfinder.cli import _pixel_size_line, app
from atomfinder.detection.io import MicrographError, read_micrograph, write_tiff_calibrated
from atomfinder.detection.resampling import probabilities_on_input_grid
from atomfinder.detection.sample import load_sample
from conftest import lattice_image, save_untrained_model

SAMPLES = Path(__file__).resolve().parent / "data" / "io-samples"
SAMPLING = 0.2  # Å/px of the tiny model
WIDE = {"COLUMNS": "250"}  # help panels on one line per option


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), env=WIDE)


def _one_line_error(result, *words: str) -> str:
    text = result.output.strip()
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    for word in words:
        assert word in text, text
    return text


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained one-class model at 0.2 Å/px that keeps every peak."""
    import torch

    torch.set_num_threads(1)
    return save_untrained_model(tmp_path_factory.mktemp("models") / "tiny", SAMPLING)


def _lattice(shape=(64, 64), spacing_px=7.0, seed=0) -> np.ndarray:
    return lattice_image(shape, spacing_px, seed)


# --------------------------------------------------------------------------- 1. help texts


@pytest.mark.parametrize("command, table", [("simulate", "[simulation]"), ("train", "[train]"),
                                            ("finetune", "[microscope]")])
def test_help_keeps_table_names(command, table):
    result = _invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert table in result.output, result.output
    assert "( table)" not in result.output and "a  table" not in result.output


# --------------------------------------------------------------------------- 2. flags, --debug, --version


def test_flags_show_no_value_in_help():
    result = _invoke("detect", "--help")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()

    def row(name: str) -> str:
        return next(line for line in lines if name in line.replace("│", " ").split()[:2])

    for name in ("--probabilities", "--focal-series", "--overwrite", "--help"):
        assert "<bool>" not in row(name), row(name)
    assert "model|input" in row("--probabilities-grid")  # an option that takes a value still shows it
    root = _invoke("--help")
    assert "--version" in root.output and "<bool>" not in root.output


def test_version():
    import atomfinder

    result = _invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"atomfinder {atomfinder.__version__}"


def test_python_dash_m_atomfinder_runs_the_command_line(tmp_path):
    import subprocess
    import sys

    import atomfinder

    version = subprocess.run([sys.executable, "-m", "atomfinder", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"atomfinder {atomfinder.__version__}", version
    # its errors and exit codes are the command line's
    refused = subprocess.run([sys.executable, "-m", "atomfinder", "simulate", "--system", "graphene", "--n", "1",
                              "--out", str(tmp_path / "d.zarr"), "--seed", "-1"], capture_output=True, text=True)
    assert refused.returncode == 2 and "--seed -1" in refused.stderr, refused


def test_debug_after_the_command_name_shows_the_traceback(tmp_path):
    missing = tmp_path / "missing.tif"
    _one_line_error(_invoke("info", str(missing)), "missing.tif", "no such file")
    for args in (["info", str(missing), "--debug"], ["--debug", "info", str(missing)]):
        result = _invoke(*args)
        assert isinstance(result.exception, MicrographError), (args, result.output)
    _one_line_error(_invoke("info", str(missing)), "no such file")  # not left switched on


# --------------------------------------------------------------------------- 3. pixel size, --overwrite


def test_pixel_size_line_names_its_source():
    assert _pixel_size_line("a.dm4", 0.1071, "file") == "a.dm4: pixel size 0.1071 Å/px (from the file's metadata)"
    assert _pixel_size_line("a.npy", 0.1, "--sampling") == "a.npy: pixel size 0.1 Å/px (given with --sampling)"


def test_sampling_that_replaces_the_files_is_noted(tmp_path):
    src = write_tiff_calibrated(tmp_path / "calibrated.tif", _lattice(), 0.2)
    assert load_sample(src).notes == ()
    assert load_sample(src, 0.2).notes == ()  # the same value: nothing to say
    (note,) = load_sample(src, 0.25).notes
    assert note == f"{src}: sampling_A 0.25 Å/px replaces the file's pixel size 0.2 Å/px"
    (note,) = load_sample(src, 0.25, sampling_label="--sampling").notes
    assert "--sampling 0.25 Å/px replaces the file's pixel size 0.2 Å/px" in note


def test_detect_prints_pixel_size_notes_overrides_and_refuses_to_overwrite(tiny_model, tmp_path):
    src = write_tiff_calibrated(tmp_path / "lattice.tif", _lattice(), SAMPLING)
    out = tmp_path / "results"
    out.mkdir()
    (out / "lattice.csv").write_text("old\n")
    (out / "lattice.png").write_bytes(b"old")
    args = ["detect", str(src), "--model", str(tiny_model), "--out", str(out), "--sampling", "0.21",
            "--precision", "float32", "--probabilities-grid", "input"]
    text = _one_line_error(_invoke(*args), "lattice.csv", "lattice.png", "--overwrite", str(out))
    assert "lattice.json" not in text
    assert (out / "lattice.csv").read_text() == "old\n"

    result = _invoke(*args, "--overwrite")  # --sampling 0.21 replaces the file's 0.2; maps on the input grid
    assert result.exit_code == 0, result.output
    assert f"{src}: pixel size 0.21 Å/px (given with --sampling)" in result.output
    assert f"note: {src}: --sampling 0.21 Å/px replaces the file's pixel size 0.2 Å/px" in result.output
    assert (out / "lattice.csv").read_text() != "old\n"
    # 9. the maps on the input's 64 x 64 pixels (the model's grid is 67 x 67), calibrated as the input
    maps = read_micrograph(out / "lattice_probabilities.tif")
    assert maps.data.shape == (2, 64, 64) and maps.sampling_A == pytest.approx(0.21)
    assert maps.data.min() >= 0 and maps.data.max() <= 1
    np.testing.assert_allclose(maps.data.sum(axis=0), 1.0, atol=1e-5)


def test_detect_overlay_options_give_a_paper_figure(tiny_model, tmp_path):
    """--overlay-format svg/pdf, --dpi, --colour-by, --marker-size and --title reach the figure;
    --overlay-format names the file that --resume and the overwrite refusal look for."""
    src = write_tiff_calibrated(tmp_path / "lattice.tif", _lattice(), SAMPLING)
    out = tmp_path / "results"
    base = ["detect", str(src), "--model", str(tiny_model), "--out", str(out), "--precision", "float32"]
    result = _invoke(*base, "--overlay-format", "svg", "--colour-by", "confidence", "--title", "Figure 2a",
                     "--marker-size", "4")
    assert result.exit_code == 0, result.output
    svg = (out / "lattice.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "Figure 2a" in svg
    assert not (out / "lattice.png").exists()
    _one_line_error(_invoke(*base, "--overlay-format", "svg"), "lattice.svg", "--overwrite")
    assert _invoke(*base, "--overlay-format", "svg", "--resume").exit_code == 0  # finished: skipped

    result = _invoke(*base, "--overlay-format", "pdf", "--title", "", "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "lattice.pdf").read_bytes().startswith(b"%PDF")

    low = _invoke(*base, "--dpi", "50", "--overwrite")
    assert low.exit_code == 0, low.output
    high = _invoke(*base, "--dpi", "300", "--out", str(tmp_path / "high"))
    assert high.exit_code == 0, high.output
    from PIL import Image

    assert Image.open(tmp_path / "high" / "lattice.png").width > 4 * Image.open(out / "lattice.png").width

    # the tiny model has no height head
    _one_line_error(_invoke(*base, "--colour-by", "height", "--out", str(tmp_path / "h")),
                    "predicts no column heights")


def test_track_refuses_to_overwrite(tmp_path):
    out = tmp_path / "series"
    out.mkdir()
    (out / "presence.csv").write_text("old\n")
    _one_line_error(_invoke("track", str(tmp_path / "a.npy"), "--model", "unknown", "--out", str(out)),
                    "presence.csv", "--overwrite")


# --------------------------------------------------------------------------- 4. API and CLI names


def test_api_messages_name_the_api_keyword(tmp_path):
    import atomfinder

    with pytest.raises(MicrographError) as excinfo:
        atomfinder.detect(np.zeros((32, 32), np.float32), model="unused")
    message = str(excinfo.value)
    assert "give it with sampling=... (Å per pixel)" in message and "--sampling" not in message
    assert "sampling_A" not in message

    png = tmp_path / "plain.png"
    import imageio.v3 as iio

    iio.imwrite(png, (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8))
    with pytest.raises(MicrographError) as excinfo:
        atomfinder.detect(png, model="unused")
    assert str(excinfo.value) == f"{png}: no pixel size in the file; give it with sampling=... (Å per pixel)"
    with pytest.raises(MicrographError, match="--sampling") as excinfo:  # the CLI's own name
        load_sample(png, sampling_label="--sampling")
    with pytest.raises(MicrographError) as excinfo:  # load_sample's own keyword
        load_sample(png)
    assert "give it with sampling_A=..." in str(excinfo.value)
    with pytest.raises(MicrographError) as excinfo:
        atomfinder.detect(png, model="unused", sampling=-1.0)
    assert "--sampling" not in str(excinfo.value)


# --------------------------------------------------------------------------- 5. track: time series


def test_track_speaks_of_a_time_series(tiny_model, tmp_path):
    a, b, stack = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "stack.npy"
    np.save(a, _lattice())
    np.save(b, _lattice((48, 64)))
    np.save(stack, np.stack([_lattice(), _lattice(seed=1)]))
    base = ["--model", str(tiny_model), "--sampling", str(SAMPLING)]
    text = _one_line_error(_invoke("track", str(a), str(b), *base, "--out", str(tmp_path / "o1")),
                           "b.npy", "time-series frames must have the same size")
    assert "focal" not in text
    text = _one_line_error(_invoke("track", str(a), str(stack), *base, "--out", str(tmp_path / "o2")),
                           "stack.npy", "give a time series either as one multi-frame file")
    assert "focal" not in text
    with pytest.raises(MicrographError, match="focal-series frames must have the same size"):
        load_sample([a, b], SAMPLING)  # a focal series is still called one


# --------------------------------------------------------------------------- 6. colour, empty TIFF


def test_colour_image_refused_grey_rgb_read_with_a_note(tmp_path):
    import imageio.v3 as iio

    rng = np.random.default_rng(1)
    colour = tmp_path / "screenshot.png"
    iio.imwrite(colour, (rng.random((40, 40, 3)) * 255).astype(np.uint8))
    with pytest.raises(MicrographError) as excinfo:
        load_sample(colour, 0.1)
    message = str(excinfo.value)
    assert message.startswith(f"{colour}: a colour (RGB) image") and "\n" not in message

    grey = (rng.random((40, 40)) * 255).astype(np.uint8)
    stored = tmp_path / "grey_as_rgb.png"
    iio.imwrite(stored, np.repeat(grey[..., None], 3, axis=-1))
    sample = load_sample(stored, 0.1)
    assert sample.notes == (f"{stored}: grey image stored as RGB (three equal channels), read as grey",)
    assert read_micrograph(stored).metadata["colour"] == "grey-rgb"
    assert read_micrograph(colour).metadata["colour"] == "rgb"
    np.testing.assert_array_equal(read_micrograph(stored).data, grey.astype(np.float32))


def test_empty_tiff_gives_one_line_and_no_log(tmp_path, caplog):
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"II*\x00\x00\x00\x00\x00")  # a TIFF header without pages
    with pytest.raises(MicrographError) as excinfo:
        read_micrograph(empty)
    assert "holds no image" in str(excinfo.value)
    assert not [r for r in caplog.records if r.name.startswith("tifffile")], caplog.records
    text = _one_line_error(_invoke("info", str(empty)), "empty.tif", "holds no image")
    assert "TiffFile" not in text


# --------------------------------------------------------------------------- 7. models NAME
# (the printed card: test_shipped_models.py, test_models_name_prints_the_card and
# test_models_name_lists_the_class_log_priors)


# --------------------------------------------------------------------------- 8. info


def test_info_describes_each_file_and_goes_on_after_an_error(tmp_path):
    tif = SAMPLES / "tiff_test_loading_image_saved_with_DM.tif"
    stack = SAMPLES / "digitalmicrograph_test_stackbuilder_imagestack.dm3"
    mrc = SAMPLES / "mrc_20241021_00405_movie.mrc"
    if not tif.is_file():
        pytest.skip("io samples missing")
    result = _invoke("info", str(tif), str(tmp_path / "missing.dm4"), str(stack), str(mrc))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 4, result.output
    tif_line, error, stack_line, mrc_line = lines
    assert tif_line.startswith(f"{tif}: TIFF, int32 (68, 68) in the file; 1 image of 68x68 px")
    assert "pixel size 1687 Å/px (0.168675 " in tif_line and "m per pixel in the DigitalMicrograph TIFF tags)" in tif_line
    assert "error:" in error and "missing.dm4" in error and "no such file" in error
    assert "3 frames of 2x16 px" in stack_line and "pixel size 599.8 Å/px" in stack_line
    assert "Gatan DigitalMicrograph metadata" in stack_line and "too small" in stack_line
    assert "no pixel size (invalid scale -1 nm)" in mrc_line and "--sampling" in mrc_line


# --------------------------------------------------------------------------- 9. maps on the input grid


def test_probabilities_on_input_grid_keeps_positions_and_sums():
    model_s, input_s = 0.1, 0.13
    shape_in = (50, 60)
    h = int(round(shape_in[0] * input_s / model_s))
    w = int(round(shape_in[1] * input_s / model_s))
    yy, xx = np.mgrid[:h, :w]
    x0_A, y0_A = 3.0, 2.6  # a blob at a physical position
    atom = np.exp(-((xx * model_s - x0_A) ** 2 + (yy * model_s - y0_A) ** 2) / (2 * 0.3**2))
    maps = np.stack([1 - atom, atom]).astype(np.float32)
    out = probabilities_on_input_grid(maps, model_s, input_s, shape_in)
    assert out.shape == (2, *shape_in) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)
    r, c = np.unravel_index(np.argmax(out[1]), shape_in)
    assert abs(c * input_s - x0_A) <= input_s and abs(r * input_s - y0_A) <= input_s
    stack = probabilities_on_input_grid(np.stack([maps, maps]), model_s, input_s, shape_in)
    assert stack.shape == (2, 2, *shape_in)
    np.testing.assert_array_equal(stack[1], out)
