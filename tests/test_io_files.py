"""Tests of atomfinder.detection.io on files whose layout or header is unusual: each is made
here, small, and read as a microscopist expects (or refused in one line naming the file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from atomfinder.detection.io import MicrographError, read_micrograph, require_sampling

IMAGE = np.random.default_rng(11).random((24, 32)).astype(np.float32)


def one_line_error(excinfo: pytest.ExceptionInfo, path: Path, *fragments: str) -> str:
    """The message: one line, naming the file, holding every fragment."""
    message = str(excinfo.value)
    assert "\n" not in message and path.name in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ------------------------------------------------------------------ MRC


def write_mrc(path: Path, data: np.ndarray, cell_A: tuple[float, float, float],
              sampling: tuple[int, int, int]) -> Path:
    """A float32 MRC2014 file: ``cell_A`` is (Xlen, Ylen, Zlen) in Å, ``sampling`` (MX, MY, MZ)."""
    from rsciio.mrc._api import get_std_dtype_list

    data = np.asarray(data, np.float32)
    data = data[None] if data.ndim == 2 else data
    header = np.zeros(1, np.dtype(get_std_dtype_list("<")))
    header["NZ"], header["NY"], header["NX"] = data.shape
    header["MODE"] = 2
    header["MX"], header["MY"], header["MZ"] = sampling
    header["Xlen"], header["Ylen"], header["Zlen"] = cell_A
    header["MAPC"], header["MAPR"], header["MAPS"] = 1, 2, 3
    path.write_bytes(header.tobytes() + data.tobytes())
    return path


def test_mrc_pixel_size_is_cell_over_sampling(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "cal.mrc", IMAGE, (32 * 0.108, 24 * 0.108, 1.0), (32, 24, 1))
    assert read_micrograph(path).sampling_A == pytest.approx(0.108, rel=1e-6)


@pytest.mark.parametrize("cell_A", [(32 * 0.108, 24 * 0.108, 1.0), (0.0, 0.0, 0.0)])
def test_mrc_without_sampling_is_uncalibrated(tmp_path: Path, cell_A: tuple) -> None:
    """MX = MY = 0: rsciio puts a placeholder of 1 nm per pixel on the axes; that is no
    calibration, and the cell is not divided by NX instead (a guess)."""
    path = write_mrc(tmp_path / "mx0.mrc", IMAGE, cell_A, (0, 0, 0))
    m = read_micrograph(path)
    assert m.sampling_A is None and m.metadata["file_sampling_A"] is None
    assert "MX = 0, MY = 0 in the MRC header" in m.metadata["calibration_note"]
    assert m.metadata["scale"] is None and m.metadata["unit"] is None  # not rosettasciio's placeholder 1 nm
    with pytest.raises(MicrographError) as excinfo:
        require_sampling(m)
    one_line_error(excinfo, path, "no pixel size", "MX = 0", "--sampling")
    assert read_micrograph(path, sampling_A=0.1).sampling_A == 0.1


# ------------------------------------------------------------------ EMD


def write_ncem_emd(path: Path, data: np.ndarray, units: list[str], scales: list[float]) -> Path:
    """An NCEM EMD file of one signal, as rosettasciio (and HyperSpy) write it: every axis a signal axis."""
    import rsciio.emd

    axes = [{"name": f"dim{i}", "units": u, "size": n, "scale": s, "offset": 0.0, "navigate": False}
            for i, (n, u, s) in enumerate(zip(data.shape, units, scales))]
    signal = {"data": data, "axes": axes, "metadata": {"General": {"title": "s"}, "Signal": {}}, "original_metadata": {}}
    rsciio.emd.file_writer(str(path), signal)
    return path


def test_ncem_emd_stack_is_frames(tmp_path: Path) -> None:
    """Three signal axes, the last two in nm and the first without a unit: a stack of frames,
    not 'spectra or 4-D data'."""
    frames = np.stack([IMAGE, IMAGE * 1.1, IMAGE * 0.9])
    path = write_ncem_emd(tmp_path / "stack.emd", frames, ["", "nm", "nm"], [1.0, 0.0108, 0.0108])
    m = read_micrograph(path)
    np.testing.assert_array_equal(m.data, frames)
    assert m.sampling_A == pytest.approx(0.108)


def test_emd_that_is_no_image_says_an_emd(tmp_path: Path) -> None:
    """Three signal axes whose first is a length are not frames; the message says "an EMD"."""
    path = write_ncem_emd(tmp_path / "cube.emd", np.stack([IMAGE] * 3, axis=-1), ["nm", "nm", "s"],
                          [0.0108, 0.0108, 1.0])
    with pytest.raises(MicrographError) as excinfo:
        read_micrograph(path)
    one_line_error(excinfo, path, "cannot read it as an EMD", "(24, 32, 3) in nm, nm, s")


# ------------------------------------------------------------------ TIA


def test_emi_without_its_ser_names_the_missing_file(tmp_path: Path) -> None:
    """A TIA .emi holds only metadata: without <stem>_1.ser beside it the message names that file
    (it said 'the file holds no image; it may be truncated')."""
    path = tmp_path / "acquire.emi"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(MicrographError) as excinfo:
        read_micrograph(path)
    message = one_line_error(excinfo, path, "acquire_1.ser", "not beside it")
    assert "truncated" not in message


# ------------------------------------------------------------------ files of several images


def write_emd_images(path: Path, images: dict[str, np.ndarray], step_nm: float = 0.0108) -> Path:
    """An NCEM EMD (v0.2) file with one 2-D image signal per entry, written with h5py."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["version_major"], f.attrs["version_minor"] = 0, 2
        group = f.create_group("data")
        for name, image in images.items():
            signal = group.create_group(name)
            signal.attrs["emd_group_type"] = 1
            signal.create_dataset("data", data=image)
            for i, axis in enumerate("yx"):
                dim = signal.create_dataset(f"dim{i + 1}", data=np.arange(image.shape[i]) * step_nm)
                dim.attrs["name"], dim.attrs["units"] = axis, "[n_m]"
    return path


def test_emd_of_two_images_says_which_was_read(tmp_path: Path) -> None:
    from atomfinder.detection.sample import load_sample

    path = write_emd_images(tmp_path / "two.emd", {"BF": IMAGE, "HAADF": IMAGE[::-1] * 2})  # HDF5 keeps names sorted
    m = read_micrograph(path)
    assert m.metadata["notes"] == ["holds 2 images (1: 'BF' 32x24, 2: 'HAADF' 32x24); read image 1 ('BF') only"]
    sample = load_sample(path)
    assert f"{path}: holds 2 images" in sample.notes[0]  # printed by detect and recorded in provenance["notes"]
    assert read_micrograph(write_emd_images(tmp_path / "one.emd", {"HAADF": IMAGE})).metadata["notes"] == []


def test_tiff_of_two_series_says_which_was_read(tmp_path: Path) -> None:
    """An unmarked small series first is read (with a note); one marked as a reduced-resolution
    copy (a thumbnail) is passed over for the full image, lazily too."""
    import tifffile

    thumb, frames = IMAGE[::2, ::2].copy(), np.stack([IMAGE, IMAGE * 2, IMAGE * 3])
    plain, marked = tmp_path / "plain.tif", tmp_path / "marked.tif"
    for path, subfiletype in ((plain, 0), (marked, 1)):
        with tifffile.TiffWriter(path) as tif:
            tif.write(thumb, subfiletype=subfiletype)
            tif.write(frames, photometric="minisblack")
    m = read_micrograph(plain, min_size=8)
    np.testing.assert_array_equal(m.data, thumb)
    assert m.metadata["notes"] == ["holds 2 images (1: 12x16, 2: 3x24x32); read image 1 only"]
    for lazy in (False, True):
        m = read_micrograph(marked, lazy=lazy)
        np.testing.assert_array_equal(np.asarray(m.data), frames)
        assert m.metadata["notes"] == [
            "holds 2 images (1: 12x16 (reduced-resolution copy), 2: 3x24x32); read image 2 only"]


# ------------------------------------------------------------------ truncated TIFF stacks


def cut(path: Path, fraction: float) -> Path:
    """A copy of ``path`` cut to ``fraction`` of its bytes (a copy or download that stopped)."""
    data = path.read_bytes()
    out = path.with_name(f"cut_{path.name}")
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


@pytest.mark.parametrize("lazy", [False, True])
def test_truncated_imagej_and_ome_stacks_are_refused(tmp_path: Path, lazy: bool) -> None:
    """tifffile reads what is left of a cut stack and only logs the damage: an ImageJ stack came
    out as its first frame, an OME one with blank frames in place of the missing ones."""
    import tifffile

    frames = np.stack([IMAGE * k for k in range(1, 6)])
    imagej, ome, ome_front = tmp_path / "ij.tif", tmp_path / "o.ome.tif", tmp_path / "front.ome.tif"
    tifffile.imwrite(imagej, frames, imagej=True, metadata={"axes": "TYX"})
    tifffile.imwrite(ome, frames, ome=True, metadata={"axes": "TYX"})  # OME-XML written after the pixels
    with tifffile.TiffFile(ome) as tif:
        xml = tif.ome_metadata
    tifffile.imwrite(ome_front, frames, description=xml, metadata=None, photometric="minisblack")  # XML first
    for path, fragment in [(imagej, "its ImageJ metadata declares 5 frames, the file holds"),
                           (ome, "its list of pages leads past the end of the file after page"),
                           (ome_front, "its OME-XML declares 5 frames, the file holds")]:
        assert read_micrograph(path, lazy=lazy).data.shape == frames.shape
        short = cut(path, 0.5)
        with pytest.raises(MicrographError) as excinfo:
            read_micrograph(short, lazy=lazy)
        one_line_error(excinfo, short, fragment, "truncated?")


# ------------------------------------------------------------------ lazily read TIFF (detect)


def test_lazy_colour_tiff_is_read_where_failures_name_the_file(tmp_path: Path) -> None:
    """detect reads TIFFs lazily: a colour TIFF was converted to grey as a dask array, outside the
    reader's error handling, so a cut file said only 'mmap length is greater than file size' (no
    file name, not collected with the other bad inputs) after a dask FutureWarning."""
    import warnings

    import tifffile

    from atomfinder.detection.sample import load_sample

    rgb = (np.stack([IMAGE, IMAGE ** 2, 1 - IMAGE], axis=-1) * 255).astype(np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    short = cut(path, 0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no dask FutureWarning
        assert read_micrograph(path, lazy=True).metadata["colour"] == "rgb"
        with pytest.raises(MicrographError) as excinfo:
            load_sample(short, 0.1, lazy=True)
    one_line_error(excinfo, short, "cannot read it as a TIFF file", "truncated")


# ------------------------------------------------------------------ planar RGB TIFF


def test_planar_rgb_tiff_is_read_with_a_note(tmp_path: Path) -> None:
    """One page of 3 separate planes tagged RGB is what tifffile writes for any [3, H, W] array:
    16-bit (or float) planes are read as frames, 8-bit ones as colour (rosettasciio failed on them:
    'The last dimension size of the array must be 3 or 4'); both say so. Planes not tagged RGB
    are frames, without a note."""
    import tifffile

    from atomfinder.detection.sample import load_sample

    u16 = (np.stack([IMAGE, IMAGE / 2, 1 - IMAGE]) * 60000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", u16, photometric="rgb", planarconfig="separate")
    m = read_micrograph(tmp_path / "rgb16.tif")
    np.testing.assert_array_equal(m.data, u16)
    assert m.metadata["notes"] == ["its 3 uint16 planes are marked as RGB colour, as tifffile marks any [3, H, W] "
                                   "array: read as 3 frames (if it is a colour image, convert it to grey first)"]
    u8 = (u16 >> 8).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb8.tif", u8, photometric="rgb", planarconfig="separate")
    m = read_micrograph(tmp_path / "rgb8.tif")
    assert m.metadata["colour"] == "rgb" and "read as a colour image" in m.metadata["notes"][0]
    with pytest.raises(MicrographError) as excinfo:
        load_sample(tmp_path / "rgb8.tif", 0.1, lazy=True)
    one_line_error(excinfo, tmp_path / "rgb8.tif", "a colour (RGB) image", "photometric='minisblack'")
    grey = np.stack([u8[0]] * 3)
    tifffile.imwrite(tmp_path / "grey8.tif", grey, photometric="rgb", planarconfig="separate")
    sample = load_sample(tmp_path / "grey8.tif", 0.1)
    assert sample.data.shape == (24, 32) and any("read as grey" in n for n in sample.notes)
    tifffile.imwrite(tmp_path / "frames8.tif", u8, photometric="minisblack", planarconfig="separate")
    m = read_micrograph(tmp_path / "frames8.tif")
    assert m.data.shape == (3, 24, 32) and m.metadata["notes"] == []


# ------------------------------------------------------------------ non-square pixels


@pytest.mark.parametrize("sampling_A", [None, 0.108])
def test_non_square_pixels_are_refused_also_with_a_given_size(tmp_path: Path, sampling_A: float | None) -> None:
    """0.108 x 0.216 Å pixels: a given pixel size is one size for both axes and cannot make them
    square (it ran silently with --sampling, recording no file calibration and no note), and the
    refusal without one no longer advises --sampling."""
    import tifffile

    from atomfinder.detection.sample import load_sample

    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, IMAGE, imagej=True, resolution=(1 / 0.0108, 1 / 0.0216), metadata={"unit": "nm"})
    with pytest.raises(MicrographError) as excinfo:
        load_sample(path, sampling_A, sampling_label="--sampling")
    message = one_line_error(excinfo, path, "non-square pixels (0.108 Å wide, 0.216 Å high)",
                             "resample the image to square pixels first")
    assert ("--sampling" in message) == (sampling_A is not None)


# ------------------------------------------------------------------ two channels per pixel


def test_two_channels_are_grey_and_alpha_only_when_they_can_be(tmp_path: Path) -> None:
    """[H, W, 2] lost its second channel as if it were alpha (pair_hw2.npy: two images); now only a
    constant second channel or a PNG's grey+alpha is alpha, other pairs are refused."""
    import imageio.v3 as iio

    from atomfinder.detection.sample import load_sample

    pair = np.stack([IMAGE, IMAGE[::-1]], axis=-1)
    path = tmp_path / "pair.npy"
    np.save(path, pair)
    for read in (lambda: read_micrograph(path), lambda: load_sample(pair, 0.1, source=str(path))):
        with pytest.raises(MicrographError) as excinfo:
            read()
        one_line_error(excinfo, path, "2 values per pixel (shape (24, 32, 2)) whose second varies")
    np.save(path, np.stack([IMAGE, np.ones_like(IMAGE)], axis=-1))
    np.testing.assert_array_equal(read_micrograph(path).data, IMAGE)
    grey = (IMAGE * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "ga.png", np.stack([grey, grey[::-1]], axis=-1))  # varying alpha: still grey+alpha
    np.testing.assert_array_equal(read_micrograph(tmp_path / "ga.png").data, grey)


# ------------------------------------------------------------------ where the calibration came from


def test_imagej_micron_calibration_is_said_to_come_from_imagej(tmp_path: Path) -> None:
    """rosettasciio reads ImageJ's 'micron' itself: the source said 'TIFF metadata'."""
    import tifffile

    path = tmp_path / "micron.tif"
    tifffile.imwrite(path, IMAGE, imagej=True, resolution=(1 / 1.08e-5, 1 / 1.08e-5), metadata={"unit": "micron"})
    meta = read_micrograph(path).metadata
    assert (meta["calibration_source"], meta["unit"]) == ("ImageJ metadata", "µm")
    assert meta["file_sampling_A"] == pytest.approx(0.108)


# ------------------------------------------------------------------ content that its extension misnames


def test_file_is_read_by_its_content_with_a_note(tmp_path: Path) -> None:
    """A calibrated TIFF named .png was read by imageio and lost its calibration; a PNG named .tif
    was refused ('not a TIFF file'). Both are read as what their first bytes say, with a note."""
    import imageio.v3 as iio
    import tifffile

    tif_as_png = tmp_path / "cal.png"
    tifffile.imwrite(tif_as_png, IMAGE, imagej=True, resolution=(1 / 0.0108, 1 / 0.0108), metadata={"unit": "nm"})
    m = read_micrograph(tif_as_png)
    assert m.sampling_A == pytest.approx(0.108) and m.metadata["format"] == "tiff"
    assert m.metadata["notes"] == ["a TIFF file named .png: read as TIFF"]
    png_as_tif = tmp_path / "grey.tif"
    grey = (IMAGE * 255).astype(np.uint8)
    iio.imwrite(png_as_tif, grey, extension=".png")
    m = read_micrograph(png_as_tif)
    np.testing.assert_array_equal(m.data, grey)
    assert m.metadata["notes"] == ["a PNG/JPEG file named .tif: read as PNG/JPEG"]
