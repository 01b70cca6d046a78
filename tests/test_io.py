"""Tests of atomfinder.detection.io on real vendor files and on broken files made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from atomfinder.detection.io import (
    Micrograph,
    MicrographError,
    _planar_samples_tiff,
    read_micrograph,
    require_sampling,
    unit_to_angstrom,
    write_tiff_calibrated,
)

# Real vendor files from RosettaSciIO's test data (GPL-3.0-or-later; README and COPYING beside them)
SAMPLES = Path(__file__).resolve().parent / "data" / "io-samples"
needs_samples = pytest.mark.skipif(
    not SAMPLES.is_dir(), reason=f"vendor sample files not found at {SAMPLES} (see tests/data/io-samples/README.md)"
)

# file, shape as read ([N,H,W] for stacks), Å per pixel (None: uncalibrated) — from io-samples/README.md
VENDOR_FILES = [
    ("digitalmicrograph_2D_test-1.dm3", (2, 2), None),
    ("digitalmicrograph_2D_test-1.dm4", (2, 2), None),
    ("digitalmicrograph_3D_test-1.dm3", (2, 2, 2), None),
    ("digitalmicrograph_test_stackbuilder_imagestack.dm3", (3, 2, 16), 0.05998290330171585 * 1e4),
    ("tia_old_64x64_TEM_images_acquire_1.ser", (64, 64), 6.281833616298531 * 10),
    ("tia_old_64x64_TEM_images_acquire.emi", (64, 64), 6.281833616298531 * 10),
    ("emd_example_image.emd", (3, 3), None),
    ("tiff_test_loading_image_saved_with_DM.tif", (68, 68), 0.16867469251155853 * 1e4),
    ("mrc_20241021_00405_movie.mrc", (32, 4, 8), None),  # header says -1 nm: invalid
]
TOO_SMALL = [name for name, shape, _ in VENDOR_FILES if min(shape[-2:]) < 16]


def assert_one_line_error(excinfo: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    """The message is one line, names the file and contains every fragment."""
    message = str(excinfo.value)
    assert "\n" not in message
    assert path.name in message
    for fragment in fragments:
        assert fragment in message, message


# ------------------------------------------------------------------ vendor files


@needs_samples
@pytest.mark.parametrize("name, shape, sampling_A", VENDOR_FILES, ids=[f[0] for f in VENDOR_FILES])
def test_vendor_file_shape_and_calibration(name: str, shape: tuple, sampling_A: float | None) -> None:
    m = read_micrograph(SAMPLES / name, min_size=1)
    assert isinstance(m, Micrograph)
    assert m.data.shape == shape
    assert m.data.dtype == np.float32
    assert m.source == str(SAMPLES / name)
    if sampling_A is None:
        assert m.sampling_A is None
        assert m.metadata["sampling_from"] is None
    else:
        assert m.sampling_A == pytest.approx(sampling_A, rel=1e-9)
        assert m.metadata["sampling_from"] == "file"


@needs_samples
def test_vendor_metadata_is_json_able() -> None:
    import json

    m = read_micrograph(SAMPLES / "digitalmicrograph_test_stackbuilder_imagestack.dm3", min_size=1)
    assert json.loads(json.dumps(m.metadata)) == m.metadata
    assert m.metadata["unit"] == "µm" and m.metadata["format"] == "digitalmicrograph"
    assert m.is_stack and m.n_frames == 3


@needs_samples
def test_vendor_values_survive() -> None:
    m = read_micrograph(SAMPLES / "digitalmicrograph_2D_test-1.dm3", min_size=1)
    np.testing.assert_array_equal(m.data, [[1, 2], [3, 4]])
    assert not m.data.flags.writeable


@needs_samples
@pytest.mark.parametrize("name", TOO_SMALL)
def test_vendor_file_too_small_by_default(name: str) -> None:
    with pytest.raises(MicrographError, match="too small") as excinfo:
        read_micrograph(SAMPLES / name)
    assert_one_line_error(excinfo, SAMPLES / name, "too small")


@needs_samples
@pytest.mark.parametrize(
    "name, note",
    [("emd_example_image.emd", "without a length unit"), ("mrc_20241021_00405_movie.mrc", "-1 nm")],
)
def test_uncalibrated_vendor_file_refused_then_accepted(name: str, note: str) -> None:
    m = read_micrograph(SAMPLES / name, min_size=1)
    with pytest.raises(MicrographError) as excinfo:
        require_sampling(m)
    assert_one_line_error(excinfo, SAMPLES / name, "no pixel size", "--sampling", note)
    m = read_micrograph(SAMPLES / name, sampling_A=0.5, min_size=1)
    assert require_sampling(m) == 0.5
    assert m.metadata["sampling_from"] == "user"


@needs_samples
def test_user_sampling_overrides_file() -> None:
    path = SAMPLES / "tia_old_64x64_TEM_images_acquire_1.ser"
    m = read_micrograph(path, sampling_A=0.1)
    assert m.sampling_A == 0.1
    assert m.metadata["file_sampling_A"] == pytest.approx(62.81833616298531)


@needs_samples
def test_truncated_dm3(tmp_path: Path) -> None:
    whole = (SAMPLES / "digitalmicrograph_test_stackbuilder_imagestack.dm3").read_bytes()
    path = tmp_path / "cut.dm3"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MicrographError) as excinfo:
        read_micrograph(path, min_size=1)
    assert_one_line_error(excinfo, path, "cannot read", "DigitalMicrograph", "truncated")


# ------------------------------------------------------------------ writing


@pytest.mark.parametrize("shape", [(20, 24), (3, 20, 24)])
def test_write_tiff_round_trip(tmp_path: Path, shape: tuple) -> None:
    rng = np.random.default_rng(0)
    array = rng.normal(size=shape)
    path = tmp_path / "out.tif"
    assert write_tiff_calibrated(path, array, 0.123456789) == path
    m = read_micrograph(path)
    assert m.data.shape == shape
    np.testing.assert_array_equal(m.data, array.astype(np.float32))
    assert m.sampling_A == pytest.approx(0.123456789, rel=1e-9)
    assert m.metadata["unit"] == "Å"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]  # no temporary file left


def test_write_tiff_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_tiff_calibrated(tmp_path / "a.tif", np.zeros((2, 2, 2, 2)), 1.0)
    with pytest.raises(ValueError):
        write_tiff_calibrated(tmp_path / "a.tif", np.zeros((20, 20)), 0.0)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ other formats


def test_ome_tiff_calibration(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "ome.ome.tif"
    data = np.random.default_rng(1).random((20, 20), dtype=np.float32)
    tifffile.imwrite(path, data, metadata={"PhysicalSizeX": 0.05, "PhysicalSizeXUnit": "nm",
                                           "PhysicalSizeY": 0.05, "PhysicalSizeYUnit": "nm"})
    assert read_micrograph(path).sampling_A == pytest.approx(0.5)


def test_plain_tiff_dpi_is_not_a_calibration(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.random.default_rng(2).random((20, 20), dtype=np.float32), resolution=(72, 72))
    m = read_micrograph(path)
    assert m.sampling_A is None
    with pytest.raises(MicrographError, match="--sampling"):
        require_sampling(m)


def test_reciprocal_unit_is_an_error(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "fft.tif"
    tifffile.imwrite(path, np.random.default_rng(3).random((20, 20), dtype=np.float32),
                     imagej=True, resolution=(10, 10), metadata={"unit": "1/nm"})
    with pytest.raises(MicrographError) as excinfo:
        read_micrograph(path)
    assert_one_line_error(excinfo, path, "reciprocal", "diffraction")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_rgb_image_becomes_grey_and_uncalibrated(tmp_path: Path, suffix: str) -> None:
    import imageio.v3 as iio

    rgb = (np.random.default_rng(4).random((20, 24, 3)) * 255).astype(np.uint8)
    path = tmp_path / f"colour{suffix}"
    iio.imwrite(path, rgb)
    m = read_micrograph(path)
    assert m.data.shape == (20, 24) and m.sampling_A is None
    with pytest.raises(MicrographError) as excinfo:
        require_sampling(m)
    assert_one_line_error(excinfo, path, "no pixel size in the file; give it with --sampling (Å per pixel)")
    if suffix == ".png":
        expected = rgb.astype(np.float64) @ [0.2125, 0.7154, 0.0721]
        np.testing.assert_allclose(m.data, expected, rtol=1e-6)


@pytest.mark.parametrize("lazy", [False, True])
def test_three_frames_saved_with_tifffile_defaults_are_frames(tmp_path: Path, lazy: bool) -> None:
    """`tifffile.imwrite(path, frames)` with 3 float frames writes one "RGB" page of separate
    planes, which rosettasciio cannot read: it is a 3-frame stack (a focal series), not colour."""
    import tifffile

    frames = np.random.default_rng(6).random((3, 32, 40)).astype(np.float32)
    path = tmp_path / "series.tif"
    tifffile.imwrite(path, frames)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1 and tif.series[0].axes == "SYX"  # the case: planar samples
    m = read_micrograph(path, sampling_A=0.1, lazy=lazy)
    np.testing.assert_array_equal(np.asarray(m.data), frames)
    assert "read as 3 frames" in m.metadata["notes"][0]  # the tag says RGB: not silently
    rgb = (np.random.default_rng(7).random((3, 32, 40)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "colour.tif", rgb)  # 8-bit planar RGB stays colour (rosettasciio failed on it)
    assert _planar_samples_tiff(tmp_path / "colour.tif")
    m = read_micrograph(tmp_path / "colour.tif", lazy=lazy)
    assert m.metadata["colour"] == "rgb" and m.data.shape == (32, 40)
    np.testing.assert_allclose(m.data, np.moveaxis(rgb, 0, -1) @ [0.2125, 0.7154, 0.0721], rtol=1e-6)


def test_npy_stack_and_sampling(tmp_path: Path) -> None:
    path = tmp_path / "stack.npy"
    np.save(path, np.random.default_rng(5).random((4, 20, 20)))
    m = read_micrograph(path, sampling_A=0.2)
    assert m.data.shape == (4, 20, 20) and m.sampling_A == 0.2


@pytest.mark.parametrize(
    "unit, factor",
    [("m", 1e10), ("µm", 1e4), ("μm", 1e4), ("um", 1e4), ("micron", 1e4), ("nm", 10.0), ("Å", 1.0),
     ("\u212b", 1.0), ("A", 1.0), ("\\u00C5", 1.0), ("pm", 0.01), ("[n_m]", 10.0), ("", None), (None, None),
     ("px", None), ("furlong", None)],
)
def test_unit_to_angstrom(unit: str | None, factor: float | None) -> None:
    assert unit_to_angstrom(unit) == factor


@pytest.mark.parametrize("unit", ["1/nm", "1 / nm", "nm^-1", "Å⁻¹"])
def test_unit_to_angstrom_reciprocal(unit: str) -> None:
    with pytest.raises(ValueError, match="reciprocal"):
        unit_to_angstrom(unit)


# ------------------------------------------------------------------ error paths


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nothing.dm4"
    with pytest.raises(MicrographError) as excinfo:
        read_micrograph(path)
    assert_one_line_error(excinfo, path, "no such file")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.dm3"
    path.touch()
    with pytest.raises(MicrographError) as excinfo:
        read_micrograph(path)
    assert_one_line_error(excinfo, path, "empty file")


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "image.xyz"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(MicrographError) as excinfo:
        read_micrograph(path)
    assert_one_line_error(excinfo, path, "unknown file type '.xyz'", ".dm3")


def test_text_renamed_tif(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("these are not pixels\n")
    with pytest.raises(MicrographError) as excinfo:
        read_micrograph(path)
    assert_one_line_error(excinfo, path, "cannot read it as a TIFF file")


@pytest.mark.parametrize(
    "name, array, fragment",
    [
        ("one_pixel.npy", np.ones((1, 1)), "too small (1x1 pixels"),
        ("four_d.npy", np.random.default_rng(6).random((2, 2, 20, 20)), "4-D data"),
        ("all_nan.npy", np.full((20, 20), np.nan), "no finite pixel values"),
        ("constant.npy", np.full((20, 20), 7.0), "constant image"),
        ("complex.npy", np.ones((20, 20), complex), "complex data"),
        ("line.npy", np.arange(40.0), "1-D data"),
    ],
)
def test_bad_arrays(tmp_path: Path, name: str, array: np.ndarray, fragment: str) -> None:
    path = tmp_path / name
    np.save(path, array)
    with pytest.raises(MicrographError) as excinfo:
        read_micrograph(path)
    assert_one_line_error(excinfo, path, fragment)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_user_sampling(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "ok.npy"
    np.save(path, np.random.default_rng(7).random((20, 20)))
    with pytest.raises(MicrographError) as excinfo:
        read_micrograph(path, sampling_A=bad)
    assert_one_line_error(excinfo, path, "positive number of Å per pixel")


def test_error_is_value_error() -> None:
    assert issubclass(MicrographError, ValueError)
