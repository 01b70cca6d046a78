"""HyperSpy signals in and out: `atomfinder.detect(signal)` on signals loaded by
`hyperspy.api.load` from real microscope files, results as calibrated signals with
markers, probability maps, and Atomap sublattices (src/atomfinder/detection/signals.py)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

hs = pytest.importorskip("hyperspy.api")

import atomfinder  # noqa: E402
from atomfinder.detection.io import MicrographError  # noqa: E402
from atomfinder.detection.micrograph import InputNote  # noqa: E402
from atomfinder.detection.signals import marker_positions, signal_sampling_A  # noqa: E402
from atomfinder.detection.validity import ValidityWarning  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tests" / "data" / "io-samples"
EXAMPLE = ROOT / "examples" / "graphene_defect_hrtem.tif"
SAMPLING_A = 0.108  # the example's pixel size (examples/README.md)
OFFSET_NM = (1.0, 2.0)  # x, y origins of the test signal, to check offsets are honoured

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")


@pytest.fixture(scope="module")
def model():
    """The shipped graphene model, loaded once."""
    from atomfinder.nn.card import load_model, resolve_model

    return load_model(resolve_model("graphene"), device="cpu")


def _calibrate(signal, scale: float, units: str, offsets=(0.0, 0.0)):
    for axis, offset in zip(signal.axes_manager.signal_axes, offsets):
        axis.scale, axis.units, axis.offset = scale, units, offset
    return signal


@pytest.fixture(scope="module")
def graphene_signal():
    """A 128 x 160 (rows x columns) crop of the bundled micrograph as loaded by `hs.load`,
    calibrated at 0.0108 nm/px, origin (1, 2) nm: non-square, so x/y mix-ups show."""
    signal = hs.load(EXAMPLE)
    _calibrate(signal, SAMPLING_A / 10, "nm", OFFSET_NM)
    signal.metadata.General.title = "graphene"
    return signal.isig[:160, :128]


@pytest.fixture(scope="module")
def found(model, graphene_signal):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ValidityWarning)
        return atomfinder.detect(graphene_signal, model=model, device="cpu")


def _detect_quietly(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ValidityWarning)
        return atomfinder.detect(*args, device="cpu", **kwargs)


# --------------------------------------------------------------------------- imports


def test_importing_atomfinder_does_not_load_hyperspy():
    code = ("import sys, atomfinder, atomfinder.detection.micrograph, atomfinder.detection.batch, atomfinder.detection.signals, "
            "atomfinder.detection.overlay; atomfinder.to_signal; atomfinder.to_atomap; "
            "print(sorted(m for m in ('hyperspy', 'atomap', 'exspy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- real files


@pytest.mark.parametrize("name, sampling_A", [
    ("tia_old_64x64_TEM_images_acquire_1.ser", 62.81833616298531),
    ("tiff_test_loading_image_saved_with_DM.tif", 1686.7469251155853),
    ("digitalmicrograph_test_stackbuilder_imagestack.dm3", 599.8290330171585),
])
def test_calibration_of_loaded_signals_in_angstrom(name, sampling_A):
    signal = hs.load(SAMPLES / name)
    assert signal.axes_manager.signal_dimension == 2
    assert signal_sampling_A(signal, name) == (pytest.approx(sampling_A), None)


@pytest.mark.parametrize("name", [
    "digitalmicrograph_2D_test-1.dm3", "digitalmicrograph_2D_test-1.dm4", "digitalmicrograph_3D_test-1.dm3",
    "digitalmicrograph_test_stackbuilder_imagestack.dm3", "emd_example_image.emd", "mrc_20241021_00405_movie.mrc",
])
def test_small_loaded_signals_are_refused(model, name):
    with pytest.raises(MicrographError, match=r"^\S.*: image too small \(\d+x\d+ pixels") as err:
        atomfinder.detect(hs.load(SAMPLES / name), model=model)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("name, shown", [("tia_old_64x64_TEM_images_acquire_1.ser", "62.8"),
                                         ("tiff_test_loading_image_saved_with_DM.tif", "1687")])
def test_coarse_loaded_signals_are_refused_by_the_size_guard(model, name, shown, lazy):
    signal = hs.load(SAMPLES / name, lazy=lazy)
    with pytest.raises(MicrographError, match=rf"^{name}: pixel size {shown} Å/px is far too coarse") as err:
        atomfinder.detect(signal, model=model)
    assert "\n" not in str(err.value)


def test_loaded_signal_runs_with_a_given_sampling(model):
    signal = hs.load(SAMPLES / "tia_old_64x64_TEM_images_acquire_1.ser", lazy=True)
    result = _detect_quietly(signal, model=model, sampling=SAMPLING_A)
    prov = result.table.attrs["provenance"]
    assert prov["sampling_source"] == "argument" and prov["sampling_A"] == SAMPLING_A
    assert prov["input"] == "tia_old_64x64_TEM_images_acquire_1.ser"  # no title: the file's name
    out = result.to_signal()  # the file's 6.28 nm/px was replaced: axes in Å at the given size
    assert [(a.scale, a.units) for a in out.axes_manager.signal_axes] == [(SAMPLING_A, "Å")] * 2


# --------------------------------------------------------------------------- detect(signal)


def test_detect_reads_the_signal_axes(found, graphene_signal, model):
    table, info = found
    assert len(table) > 20
    assert info["sampling_A"] == pytest.approx(SAMPLING_A)
    prov = table.attrs["provenance"]
    assert (prov["sampling_source"], prov["input"]) == ("signal", "graphene")
    same = _detect_quietly(np.asarray(graphene_signal.data), model=model, sampling=SAMPLING_A)
    np.testing.assert_allclose(table[["x", "y"]], same.table[["x", "y"]])
    assert table["x"].max() > 128  # columns run to 160: x is the column
    cal = found.signal_calibration
    assert (cal.x.name, cal.x.units, cal.x.offset, cal.y.offset) == ("width", "nm", *OFFSET_NM)
    assert pickle.loads(pickle.dumps(found)).signal_calibration == cal


@pytest.mark.parametrize("units, factor", [("Å", 1.0), ("angstrom", 1.0), ("nm", 10.0), ("µm", 1e4), ("um", 1e4)])
def test_signal_units_are_converted_to_angstrom(model, graphene_signal, units, factor):
    signal = _calibrate(graphene_signal.deepcopy(), SAMPLING_A / factor, units)
    assert _detect_quietly(signal, model=model).info["sampling_A"] == pytest.approx(SAMPLING_A)


def _refusal(model, signal, pattern):
    with pytest.raises(MicrographError, match=pattern) as err:
        atomfinder.detect(signal, model=model)
    assert "\n" not in str(err.value)


def test_signals_that_are_not_calibrated_images_are_refused(model, graphene_signal):
    data = np.asarray(graphene_signal.data)
    _refusal(model, hs.signals.Signal2D(data), r"^<signal>: no pixel size in the signal's axes \(x axis: scale 1 "
             r"without a length unit\); give it with sampling=")
    _refusal(model, hs.signals.Signal1D(data), r"a Signal1D with 1 signal dimension; expected an image signal "
             r"\(two signal axes, e.g. a HyperSpy Signal2D; s\.as_signal2D\(\(0, 1\)\) converts others\)$")
    _refusal(model, _calibrate(hs.signals.Signal2D(data), 1.0, "1/nm"), "reciprocal unit '1/nm'")
    _refusal(model, _calibrate(hs.signals.Signal2D(data), -1.0, "nm"), r"no pixel size .*invalid scale -1 nm")
    uneven = _calibrate(hs.signals.Signal2D(data), 0.0108, "nm")
    uneven.axes_manager.signal_axes[0].convert_to_non_uniform_axis()
    _refusal(model, uneven, "x axis is non-uniform")
    wide = _calibrate(hs.signals.Signal2D(data), 0.0108, "nm")
    wide.axes_manager.signal_axes[0].scale = 0.02
    _refusal(model, wide, "non-square pixels")


def _rgb8(red, green, blue):
    """An rgb8 signal (HyperSpy's colour image) of three uint8 channels, calibrated like the test signal."""
    signal = hs.signals.Signal1D(np.stack([red, green, blue], axis=-1).astype(np.uint8))
    signal.change_dtype("rgb8")
    return _calibrate(signal, SAMPLING_A / 10, "nm")


def test_rgb_signals_are_read_as_rgb_files_are(model, graphene_signal):
    data = np.asarray(graphene_signal.data, dtype=np.float64)
    grey = np.rint(255 * (data - data.min()) / np.ptp(data))
    _refusal(model, _rgb8(grey, grey / 2, 255 - grey), r"^<signal>: a colour \(RGB\) image, not a micrograph "
             r"\(a screenshot or an exported figure\?\); give the grey-level image the microscope recorded$")
    with pytest.warns(InputNote, match="grey image stored as RGB"):
        table, info = _detect_quietly(_rgb8(grey, grey, grey), model=model)
    assert len(table) > 0 and info["sampling_A"] == pytest.approx(SAMPLING_A)


# --------------------------------------------------------------------------- results as signals


def test_to_signal_has_calibrated_axes_and_a_marker_per_class(found, graphene_signal):
    out = atomfinder.to_signal(found)
    assert isinstance(out, hs.signals.Signal2D) and out.data.shape == (128, 160)
    axes = out.axes_manager.signal_axes
    assert [(a.name, a.units, a.offset) for a in axes] == [("width", "nm", OFFSET_NM[0]),
                                                           ("height", "nm", OFFSET_NM[1])]
    assert [a.scale for a in axes] == pytest.approx([SAMPLING_A / 10] * 2)
    markers = out.metadata.Markers
    assert list(markers.keys()) == ["C"]
    marker = markers.get_item("C")
    assert isinstance(marker, hs.plot.markers.Points)
    table = found.table
    scale_nm = SAMPLING_A / 10
    expected = np.column_stack([OFFSET_NM[0] + table["x"] * scale_nm, OFFSET_NM[1] + table["y"] * scale_nm])
    np.testing.assert_allclose(marker.kwargs["offsets"], expected)
    # the same in Å, and on a copy of the original signal (its metadata kept)
    in_A = found.to_signal(units="Å")
    assert [(a.scale, a.units, a.offset) for a in in_A.axes_manager.signal_axes] == [
        (pytest.approx(SAMPLING_A), "Å", pytest.approx(10 * OFFSET_NM[0])),
        (pytest.approx(SAMPLING_A), "Å", pytest.approx(10 * OFFSET_NM[1]))]
    np.testing.assert_allclose(in_A.metadata.Markers.C.kwargs["offsets"], 10 * expected)
    copy = found.to_signal(graphene_signal)
    assert copy.metadata.General.title == "graphene" and copy is not graphene_signal
    assert not graphene_signal.metadata.has_item("Markers")
    np.testing.assert_array_equal(copy.data, graphene_signal.data)


def test_a_signal_of_another_shape_is_refused(found):
    other = _calibrate(hs.signals.Signal2D(np.zeros((64, 64), np.float32)), SAMPLING_A / 10, "nm")
    pattern = (r"^the signal's data have shape \(64, 64\), but the atoms were found in an image of shape "
               r"\(128, 160\); give the signal the detection was made from$")
    with pytest.raises(ValueError, match=pattern):
        atomfinder.to_signal(found, signal=other)
    with pytest.raises(ValueError, match=pattern):
        found.probabilities_signal(signal=other)


def test_markers_round_trip_to_table_positions(found):
    out = found.to_signal()
    back = marker_positions(out)
    assert list(back.columns) == ["x", "y", "x_nm", "y_nm", "label"]
    np.testing.assert_allclose(back[["x", "y"]], found.table[["x", "y"]], atol=1e-9)
    assert (back["label"] == found.table["label"].to_numpy()).all()
    # plotting the signal draws the markers (headless backend)
    import matplotlib

    matplotlib.use("Agg")
    out.plot()
    import matplotlib.pyplot as plt

    plt.close("all")


def test_to_signal_of_an_array_detection_is_in_angstrom(model, graphene_signal):
    result = _detect_quietly(np.asarray(graphene_signal.data), model=model, sampling=SAMPLING_A)
    out = result.to_signal()
    assert [(a.scale, a.units, a.offset) for a in out.axes_manager.signal_axes] == [(SAMPLING_A, "Å", 0.0)] * 2
    np.testing.assert_allclose(out.metadata.Markers.C.kwargs["offsets"],
                               result.table[["x_angstrom", "y_angstrom"]].to_numpy())


def test_probability_maps_share_the_calibration(found):
    info = found.info
    maps = found.probabilities_signal()
    assert maps.data.shape == info["probabilities"].shape
    assert maps.axes_manager.navigation_axes[0].name == "class"
    assert maps.metadata.Signal.class_names == ["background", "C"]
    x = maps.axes_manager.signal_axes[0]
    assert (x.units, x.offset) == ("nm", OFFSET_NM[0])
    assert x.scale == pytest.approx(info["model_sampling_A"] / 10)
    on_input = found.probabilities_signal(grid="input", units="Å")
    assert on_input.data.shape == (2, 128, 160)
    assert on_input.axes_manager.signal_axes[0].scale == pytest.approx(SAMPLING_A)


def test_stack_signal_gives_frames_and_ragged_markers(model, graphene_signal):
    data = np.asarray(hs.load(EXAMPLE).data)
    stack = _calibrate(hs.signals.Signal2D(np.stack([data[:96, :128], data[200:296, 300:428]])), 0.0108, "nm")
    nav = stack.axes_manager.navigation_axes[0]
    nav.name, nav.scale, nav.units = "time", 0.5, "s"
    result = _detect_quietly(stack, model=model)
    table = result.table
    assert set(table["frame"]) == {0, 1}
    out = result.to_signal()
    assert out.data.shape == (2, 96, 128)
    time = out.axes_manager.navigation_axes[0]
    assert (time.name, time.scale, time.units) == ("time", 0.5, "s")
    offsets = out.metadata.Markers.C.kwargs["offsets"]
    assert offsets.dtype == object and [len(o) for o in offsets] == [int((table["frame"] == i).sum()) for i in (0, 1)]
    back = marker_positions(out)
    np.testing.assert_allclose(back[["frame", "x", "y"]], table[["frame", "x", "y"]], atol=1e-9)
    maps = result.probabilities_signal()
    assert [a.name for a in maps.axes_manager.navigation_axes[::-1]] == ["time", "class"]


def test_a_lazy_stack_signal_is_read_one_frame_at_a_time(model):
    """A lazy (dask-backed) stack is not computed whole when read: detect takes its frames one
    by one, and finds what it finds in the same stack held in memory."""
    import dask.array as da

    from atomfinder.detection.io import FrameStack
    from atomfinder.detection.sample import load_sample

    data = np.asarray(hs.load(EXAMPLE).data, dtype=np.float32)
    frames = np.stack([data[:96, :128], data[200:296, 300:428], data[400:496, 100:228]])
    computed = []

    def note(block, block_info=None):
        computed.append(block_info[0]["chunk-location"][0])
        return block

    lazy_data = da.from_array(frames, chunks=(1, 96, 128)).map_blocks(note, dtype=frames.dtype)
    lazy = _calibrate(hs.signals.Signal2D(lazy_data).as_lazy(), 0.0108, "nm")
    sample = load_sample(lazy, lazy=True)
    assert isinstance(sample.data, FrameStack) and sample.data.shape == (3, 96, 128)
    assert computed == []  # nothing read yet
    found_lazy = _detect_quietly(lazy, model=model)
    eager = _detect_quietly(_calibrate(hs.signals.Signal2D(frames), 0.0108, "nm"), model=model)
    assert sorted(set(computed)) == [0, 1, 2]
    assert len(found_lazy.table) == len(eager.table) > 0
    np.testing.assert_allclose(found_lazy.table[["frame", "x", "y"]], eager.table[["frame", "x", "y"]])
    assert found_lazy.to_signal().data.shape == (3, 96, 128)


# --------------------------------------------------------------------------- Atomap


def test_to_atomap_gives_a_sublattice_in_signal_pixels(found, graphene_signal):
    pytest.importorskip("atomap.api")  # atomap.sublattice alone hits a circular import
    from atomap.sublattice import Sublattice

    sub = atomfinder.to_atomap(found.table, graphene_signal)
    assert isinstance(sub, Sublattice)
    assert len(sub.atom_list) == len(found.table)
    np.testing.assert_allclose(np.column_stack([sub.x_position, sub.y_position]), found.table[["x", "y"]])
    assert sub.image.shape == (128, 160)
    assert (sub.pixel_size, sub.units) == (pytest.approx(SAMPLING_A / 10), "nm")
    own = found.to_atomap(label="C")  # the detection's own image, in Å
    assert (own.name, own.pixel_size, own.units) == ("C", pytest.approx(SAMPLING_A), "Å")
    with pytest.raises(ValueError, match="no atoms labelled 'Mo'; the table has C"):
        atomfinder.to_atomap(found, graphene_signal, label="Mo")


def test_to_atomap_refuses_a_frame_outside_the_stack():
    pytest.importorskip("atomap.api")
    import pandas as pd

    table = pd.DataFrame({"frame": [0, 1, 2], "x": [10.0, 11.0, 12.0], "y": [20.0, 21.0, 22.0], "label": "C"})
    stack = _calibrate(hs.signals.Signal2D(np.random.default_rng(0).random((3, 32, 32))), 0.0108, "nm")
    for image in (stack, np.asarray(stack.data)):
        with pytest.raises(ValueError, match=r"^frame 5 is not in the stack: it has 3 frames \(0 to 2\)$"):
            atomfinder.to_atomap(table, image, frame=5)
    assert len(atomfinder.to_atomap(table, stack, frame=2).atom_list) == 1


def test_to_atomap_without_atomap_says_how_to_install(found, graphene_signal, monkeypatch):
    monkeypatch.setitem(sys.modules, "atomap.api", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"^Atomap is not installed; install it with: pip install atomap$"):
        atomfinder.to_atomap(found.table, graphene_signal)
