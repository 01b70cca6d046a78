"""The napari plugin, headless (Qt offscreen): reader, dock widget, edited atoms saved as CSV, series.

The widget runs the shipped graphene model on a 256x256 crop of the bundled example
(0.108 Å/px, typed into the widget: the file has no pixel size). With
``ATOMFINDER_WRITE_SCREENSHOTS=1`` the screenshots go to ``docs/guide/images/napari-*.png``
(else to a temporary folder).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes the QApplication

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
tifffile = pytest.importorskip("tifffile")

from atomfinder.detection.io import SUPPORTED_EXTENSIONS, read_micrograph  # noqa: E402
from atomfinder.napari._points import FEATURE_COLUMNS, TABLE_COLUMNS, atom_layers, atom_table  # noqa: E402
from atomfinder.napari._reader import get_reader  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "graphene_defect_hrtem.tif"
IO_SAMPLES = ROOT / "tests" / "data" / "io-samples"
SAMPLING_A = 0.108
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def crop_tif(tmp_path_factory) -> Path:
    """A 256x256 crop of the bundled example as an uncalibrated float32 TIFF."""
    data = read_micrograph(EXAMPLE).data
    path = tmp_path_factory.mktemp("napari") / "graphene_crop.tif"
    tifffile.imwrite(path, np.ascontiguousarray(data[128:384, 128:384]))
    return path


@pytest.fixture(scope="module")
def stack_tif(tmp_path_factory) -> Path:
    """A 3-frame time series (multi-page TIFF): crops of the example shifted by one pixel per frame."""
    data = read_micrograph(EXAMPLE).data
    frames = np.stack([data[128 + i:320 + i, 128 + i:320 + i] for i in range(3)])
    path = tmp_path_factory.mktemp("napari") / "graphene_series.tif"
    tifffile.imwrite(path, np.ascontiguousarray(frames), photometric="minisblack")  # not planar RGB
    return path


@pytest.fixture(autouse=True)
def atomfinder_plugin(npe2pm):
    """Only the installed atomfinder manifest registered with npe2 (no discovery of other plugins)."""
    from npe2 import PluginManifest

    npe2pm.register(PluginManifest.from_distribution("atomfinder"))
    return npe2pm


@pytest.fixture
def screenshot_dir(tmp_path) -> Path:
    """``docs/guide/images/`` with ATOMFINDER_WRITE_SCREENSHOTS=1, else a temporary folder."""
    return ROOT / "docs" / "guide" / "images" if os.environ.get("ATOMFINDER_WRITE_SCREENSHOTS") == "1" else tmp_path


def _opengl_works() -> bool:
    """Whether Qt can make an OpenGL context (napari's canvas needs one: a display or Xvfb)."""
    from qtpy.QtGui import QOpenGLContext

    return QOpenGLContext().create()


@pytest.fixture
def viewer(qapp, request):
    """A napari Viewer (hidden window) where OpenGL works, else a ViewerModel (layers, no canvas).

    The widget needs only the layer list; screenshots need the window.
    """
    if _opengl_works():
        return request.getfixturevalue("make_napari_viewer")()
    from napari.components import ViewerModel

    return ViewerModel()


def _widget(viewer):
    from atomfinder.napari._widget import DetectionWidget

    widget = DetectionWidget(viewer)
    if hasattr(viewer, "window"):
        viewer.window.add_dock_widget(widget, name="Find atoms", area="right")
    return widget


def _run(widget, qtbot) -> None:
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)


def _screenshot(viewer, path: Path) -> None:
    """The whole window (canvas and dock widget) as a PNG; nothing without a window (no OpenGL)."""
    if not hasattr(viewer, "window"):
        return
    import imageio.v3 as iio

    viewer.window.resize(1200, 760)
    viewer.reset_view()
    viewer.layers.selection.active = viewer.layers[-1]  # the points: their controls show the editing tools
    iio.imwrite(path, viewer.screenshot(canvas_only=False, flash=False))


# ------------------------------------------------------------------ manifest and reader


def test_manifest_is_valid_and_lists_every_readable_format():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("atomfinder")  # the installed entry point
    manifest.validate_imports()
    patterns = {p for reader in manifest.contributions.readers for p in reader.filename_patterns}
    assert patterns == {f"*{ext}" for ext in SUPPORTED_EXTENSIONS}
    assert [w.display_name for w in manifest.contributions.widgets] == ["Find atoms"]
    assert manifest.contributions.writers[0].layer_types == ["points+"]


def test_reader_gives_the_calibration_as_scale(qapp):
    from napari.components import ViewerModel

    path = IO_SAMPLES / "tia_old_64x64_TEM_images_acquire_1.ser"  # 6.28 nm per pixel in its metadata
    expected = read_micrograph(path, min_size=1).sampling_A
    assert expected is not None
    data, kwargs, kind = get_reader(str(path))(str(path))[0]
    assert kind == "image" and kwargs["scale"] == (expected, expected)
    assert get_reader("notes.txt") is None

    viewer = ViewerModel()
    layer = viewer.open(path, plugin="atomfinder")[0]
    np.testing.assert_allclose(layer.scale, [expected, expected])
    assert str(layer.units[-1]) == "angstrom"
    assert layer.metadata["atomfinder"]["sampling_A"] == pytest.approx(expected)
    stack = viewer.open(IO_SAMPLES / "digitalmicrograph_test_stackbuilder_imagestack.dm3", plugin="atomfinder")[0]
    assert stack.data.shape == (3, 2, 16)
    np.testing.assert_allclose(stack.scale, [1.0, 599.829, 599.829], rtol=1e-4)


def test_reader_without_calibration_keeps_pixels(crop_tif):
    data, kwargs, _ = get_reader(str(crop_tif))(str(crop_tif))[0]
    assert data.shape == (256, 256) and "scale" not in kwargs
    assert kwargs["metadata"]["atomfinder"]["sampling_A"] is None


def test_a_layer_is_detected_from_its_file_only_while_its_data_are_unchanged(qapp, crop_tif):
    from napari.components import ViewerModel
    from napari.layers import Layer

    from atomfinder.napari._widget import detection_input

    viewer = ViewerModel()
    layer = viewer.open(crop_tif, plugin="atomfinder")[0]
    image, sampling = detection_input(layer, SAMPLING_A)
    assert Path(image) == crop_tif and sampling == SAMPLING_A  # the file, with the typed pixel size
    data, kwargs, kind = layer.as_layer_data_tuple()
    copy = viewer.add_layer(Layer.create(data, kwargs | {"name": "copy"}, kind))
    assert Path(detection_input(copy, SAMPLING_A)[0]) == crop_tif  # a duplicate with the same data: still the file
    flipped = viewer.add_layer(Layer.create(np.ascontiguousarray(data[:, ::-1]), kwargs | {"name": "flipped"}, kind))
    np.testing.assert_array_equal(detection_input(flipped, SAMPLING_A)[0], data[:, ::-1])  # the array shown
    edited = data.copy()
    edited[5, 5] += 1.0  # one pixel changed
    layer.data = edited
    assert isinstance(detection_input(layer, SAMPLING_A)[0], np.ndarray)
    layer.data = np.zeros_like(data)  # replaced
    np.testing.assert_array_equal(detection_input(layer, SAMPLING_A)[0], 0.0)


def test_a_multiscale_layer_is_detected_at_full_resolution(qapp):
    from napari.components import ViewerModel

    from atomfinder.napari._widget import detection_input

    full = np.arange(64 * 48, dtype=np.float64).reshape(64, 48)
    layer = ViewerModel().add_image([full, full[::2, ::2]], name="pyramid", multiscale=True)
    image, sampling = detection_input(layer, SAMPLING_A)
    assert image.dtype == np.float32 and sampling == SAMPLING_A
    np.testing.assert_array_equal(image, full)


# ------------------------------------------------------------------ points <-> table


def test_atom_table_round_trip_through_points_layers():
    rng = np.random.default_rng(0)
    n = 6
    table = pd.DataFrame({"frame": np.repeat([0, 1], 3), "x": rng.uniform(0, 50, n), "y": rng.uniform(0, 50, n)})
    table["x_angstrom"], table["y_angstrom"] = table["x"] * 0.2, table["y"] * 0.2
    table["label"] = ["Au", "Au", "X", "Au", "X", "Au"]
    table["confidence"], table["sigma_angstrom"] = rng.uniform(size=n), rng.uniform(0.01, 0.1, n)
    table["probability"] = rng.uniform(size=n)
    table["height"] = pd.array([1, 2, None, 3, 4, 5], dtype="Int64")
    layers = atom_layers(table, ("Au", "X"), 0.2, "img")
    assert [kw["name"] for _, kw, _ in layers] == ["atoms: Au [img]", "atoms: X [img]"]
    back = atom_table(layers).sort_values(["frame", "x"], ignore_index=True)
    expected = table.sort_values(["frame", "x"], ignore_index=True)
    assert list(back.columns) == ["frame", *TABLE_COLUMNS]
    pd.testing.assert_frame_equal(back, expected[back.columns], check_dtype=False)


# ------------------------------------------------------------------ the dock widget


def test_widget_finds_edits_and_saves_atoms(viewer, qtbot, crop_tif, tmp_path, screenshot_dir):
    from napari.layers import Points

    image = viewer.open(crop_tif, plugin="atomfinder")[0]
    widget = _widget(viewer)
    assert widget.image.value == image.name and widget.sampling.value == 0.0
    _run(widget, qtbot)  # no pixel size yet: refused with one line
    assert "no pixel size" in widget.last_error and widget.status.value.startswith("error:")

    widget.model.value = "graphene"
    widget.sampling.value = SAMPLING_A
    widget.threshold.value = 0.5
    _run(widget, qtbot)
    assert widget.last_error == ""
    layer = viewer.layers["atoms: C [graphene_crop]"]
    assert isinstance(layer, Points) and len(layer.data) > 50
    assert list(layer.features.columns) == list(FEATURE_COLUMNS)
    assert np.all(layer.features["confidence"].between(0, 1))
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(image.scale, [SAMPLING_A, SAMPLING_A])
    assert np.all(layer.size >= 0.5 / SAMPLING_A - 1e-9)
    assert widget.progress.value == widget.progress.max
    _screenshot(viewer, screenshot_dir / "napari-detect.png")

    n = len(layer.data)
    moved = layer.data[0] + np.array([1.5, -2.0])  # (row, col)
    layer.data = np.vstack([moved, layer.data[1:]])
    layer.selected_data = {1}
    layer.remove_selected()
    layer.add(np.array([[10.0, 20.0]]))  # a hand-added atom at x=20, y=10
    widget.save_path.value = tmp_path / "edited.csv"
    widget.save_button.clicked.emit()

    saved = pd.read_csv(tmp_path / "edited.csv")
    assert list(saved.columns) == list(TABLE_COLUMNS)
    assert len(saved) == n
    first = saved.iloc[0]
    assert (first["x"], first["y"]) == pytest.approx((moved[1], moved[0]), abs=1e-4)
    assert (first["x_angstrom"], first["y_angstrom"]) == pytest.approx(
        (moved[1] * SAMPLING_A, moved[0] * SAMPLING_A), abs=1e-4)
    assert 0 <= first["confidence"] <= 1
    added = saved.iloc[-1]
    assert (added["x"], added["y"], added["label"]) == (20.0, 10.0, "C")
    assert added[["confidence", "sigma_angstrom", "probability", "height"]].isna().all()
    assert "saved" in widget.status.value

    viewer.layers.selection = {layer}  # File > Save Selected Layers: the npe2 writer, the same table
    viewer.layers.save(str(tmp_path / "writer.csv"), selected=True, plugin="atomfinder")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "writer.csv"), saved)


def test_atoms_of_two_images_stay_apart_and_each_image_saves_its_own(viewer, qtbot, crop_tif, tmp_path):
    first = viewer.open(crop_tif, plugin="atomfinder")[0]
    viewer.add_image(np.ascontiguousarray(first.data[:160, :160]), name="other")
    widget = _widget(viewer)
    widget.image.value, widget.sampling.value = first.name, SAMPLING_A
    _run(widget, qtbot)
    mine = viewer.layers["atoms: C [graphene_crop]"]
    mine.selected_data = {0}
    mine.remove_selected()  # an edit that must survive the other image's run
    n_mine = len(mine.data)

    widget.image.value = "other"
    widget.save_path.value = tmp_path / "other.csv"
    widget.save_button.clicked.emit()  # no atoms found in "other" yet: refused, not the first image's atoms
    assert widget.last_error.startswith("no atoms in other to save") and not (tmp_path / "other.csv").exists()
    widget.sampling.value = SAMPLING_A
    _run(widget, qtbot)
    theirs = viewer.layers["atoms: C [other]"]
    assert viewer.layers["atoms: C [graphene_crop]"] is mine and len(mine.data) == n_mine
    assert theirs.metadata["atomfinder"]["image"] == "other"

    widget.image.value = first.name
    widget.save_path.value = tmp_path / "first.csv"
    widget.save_button.clicked.emit()
    assert len(pd.read_csv(tmp_path / "first.csv")) == n_mine
    _run(widget, qtbot)  # a rerun replaces the first image's layers only
    assert mine not in viewer.layers and theirs in viewer.layers
    assert sorted(layer.name for layer in viewer.layers if layer.name.startswith("atoms: ")) == [
        "atoms: C [graphene_crop]", "atoms: C [other]"]


def test_points_lie_on_a_moved_and_turned_image(viewer, qtbot, crop_tif):
    data = tifffile.imread(crop_tif)
    image = viewer.add_image(data, name="moved", scale=(SAMPLING_A, SAMPLING_A), units="angstrom",
                             translate=(10.0, 20.0), rotate=30.0, shear=[0.1])
    widget = _widget(viewer)
    assert widget.sampling.value == pytest.approx(SAMPLING_A)
    _run(widget, qtbot)
    assert widget.last_error == ""
    points = viewer.layers["atoms: C [moved]"]
    for row in points.data[:5]:
        np.testing.assert_allclose(points.data_to_world(row), image.data_to_world(row), atol=1e-9)


def test_site_layers_lie_on_a_moved_stack():
    from napari.layers import Image, Layer

    from atomfinder.napari._points import image_placement
    from atomfinder.napari._series import SeriesResult, site_layers

    stack = Image(np.zeros((2, 32, 32), np.float32), scale=(1.0, 0.5, 0.5), translate=(0.0, -3.0, 7.0), rotate=15.0)
    result = SeriesResult(sites=pd.DataFrame({"site": [0], "x": [4.0], "y": [6.0], "label": ["C"]}),
                          presence=pd.DataFrame({"frame": [0, 1], "site": [0, 0], "present": [True, True],
                                                 "probability": [0.9, 0.8]}),
                          drift_px=np.array([[0.0, 0.0], [1.0, 2.0]]), sampling_A=0.5, class_names=("C",),
                          written={"sites.csv": Path("track/sites.csv")})
    layer = Layer.create(*site_layers(result, "stack", image_placement(stack))[0])
    np.testing.assert_allclose(layer.translate, stack.translate)
    for row in layer.data:
        np.testing.assert_allclose(layer.data_to_world(row), stack.data_to_world(row), atol=1e-9)


def test_a_renamed_image_stays_chosen_under_its_new_name(viewer, crop_tif):
    image = viewer.open(crop_tif, plugin="atomfinder")[0]
    viewer.add_image(np.zeros((32, 32), np.float32), name="other")
    widget = _widget(viewer)
    widget.image.value = image.name
    widget.sampling.value = SAMPLING_A  # typed: kept through the rename
    image.name = "renamed"
    assert "renamed" in widget.image.choices
    assert widget.image.value == "renamed" and widget.image_layer() is image
    assert widget.sampling.value == pytest.approx(SAMPLING_A)
    viewer.layers["other"].name = "other2"  # renaming another image changes nothing chosen
    assert widget.image.choices == ("renamed", "other2") and widget.image.value == "renamed"


def test_the_pixel_size_box_keeps_an_exact_calibration_and_shows_an_override(viewer, qtbot, crop_tif):
    from atomfinder.napari._widget import detection_input

    exact = 0.1034567  # Å/px: the box shows 0.1035
    data = tifffile.imread(crop_tif)[:128, :128]
    image = viewer.add_image(data, name="in_nm", scale=(exact / 10, exact / 10), units="nm")
    widget = _widget(viewer)
    assert widget.sampling.value == pytest.approx(0.1035, abs=1e-9)  # nm converted to Å, shown to 4 decimals
    _run(widget, qtbot)
    assert widget.last_error == ""
    np.testing.assert_allclose(image.scale, [exact, exact], rtol=1e-12)  # the exact value was used

    widget.sampling.value = 0.1  # an override: used, and shown again after switching images
    _run(widget, qtbot)
    np.testing.assert_allclose(image.scale, [0.1, 0.1])
    viewer.add_image(data, name="other")
    widget.image.value = "other"
    widget.image.value = "in_nm"
    assert widget.sampling.value == pytest.approx(image.scale[-1])

    read = viewer.open(crop_tif, plugin="atomfinder")[0]  # as if the file said 0.1034567 Å/px
    read.metadata["atomfinder"]["sampling_A"] = exact
    read.scale, read.units = (exact, exact), ("angstrom", "angstrom")
    widget.image.value = read.name
    image_in, sampling = detection_input(read, widget.sampling_A(read))
    assert Path(image_in) == crop_tif and sampling is None  # the file's calibration, not an override of 0.1035


def test_a_good_model_clears_the_error_of_a_bad_model_file(viewer, tmp_path):
    lonely = tmp_path / "lonely.json"
    lonely.write_text("{}")  # a card without its weights
    widget = _widget(viewer)
    widget.model_file.value = lonely
    assert "lonely.safetensors is missing" in widget.last_error and widget.status.value.startswith("error:")
    widget.model_file.value = None  # back to the shipped model chosen
    assert widget.last_error == "" and widget.status.value == ""
    widget.model_file.value = lonely
    widget.model.value = "gold"  # the file still replaces the shipped model: its error stays
    assert "lonely.safetensors is missing" in widget.last_error


def test_the_writer_refuses_site_layers(tmp_path):
    from atomfinder.napari._series import SeriesResult, site_layers
    from atomfinder.napari._writer import write_atom_table

    result = SeriesResult(sites=pd.DataFrame({"site": [0], "x": [4.0], "y": [6.0], "label": ["C"]}),
                          presence=pd.DataFrame({"frame": [0], "site": [0], "present": [True], "probability": [0.9]}),
                          drift_px=np.zeros((1, 2)), sampling_A=0.5, class_names=("C",),
                          written={"sites.csv": tmp_path / "sites.csv"})
    with pytest.raises(ValueError, match=r"^'sites: C \[stack\]' holds the sites of a tracked time series") as err:
        write_atom_table(str(tmp_path / "out.csv"), site_layers(result, "stack"))
    assert "\n" not in str(err.value) and not (tmp_path / "out.csv").exists()


def test_focal_series_with_a_single_image_model_is_one_line_error(viewer, qtbot, crop_tif):
    from atomfinder.napari._widget import FOCAL_SERIES

    viewer.open(crop_tif, plugin="atomfinder")
    widget = _widget(viewer)
    widget.sampling.value = SAMPLING_A
    widget.series.value = FOCAL_SERIES
    _run(widget, qtbot)
    assert "not a focal series" in widget.last_error and "\n" not in widget.last_error
    assert "(frames: focal series)" in widget.last_error and "focal_series=True" not in widget.last_error
    assert widget.status.value.startswith("error:") and widget.run_button.enabled
    assert not [layer for layer in viewer.layers if layer.name.startswith("atoms: ")]


def test_a_stack_for_a_focal_series_model_names_the_frames_setting(viewer, qtbot, stack_tif):
    from atomfinder.napari._widget import SINGLE

    viewer.open(stack_tif, plugin="atomfinder")
    widget = _widget(viewer)
    widget.model.value, widget.series.value, widget.sampling.value = "mos2-focal", SINGLE, SAMPLING_A
    _run(widget, qtbot)
    assert widget.last_error.endswith("without frames: focal series") and "focal_series" not in widget.last_error


def test_time_series_tracks_sites_through_the_stack(viewer, qtbot, stack_tif, tmp_path,
                                                     screenshot_dir):
    from atomfinder.napari._widget import TIME_SERIES

    image = viewer.open(stack_tif, plugin="atomfinder")[0]
    assert image.data.shape == (3, 192, 192)
    widget = _widget(viewer)
    widget.model.value = "graphene"
    widget.sampling.value = SAMPLING_A
    widget.series.value = TIME_SERIES
    widget.track_dir.value = tmp_path / "track"
    _run(widget, qtbot)
    assert widget.last_error == ""
    sites = viewer.layers["sites: C [graphene_series]"]
    assert sites.data.shape[1] == 3 and set(np.unique(sites.data[:, 0])) == {0.0, 1.0, 2.0}
    np.testing.assert_allclose(sites.scale, [1.0, SAMPLING_A, SAMPLING_A])
    assert widget.progress.value == widget.progress.max == 3
    for name in ("sites.csv", "presence.csv", "events.csv", "drift.csv"):
        assert (tmp_path / "track" / name).is_file()
    drift = pd.read_csv(tmp_path / "track" / "drift.csv")
    np.testing.assert_allclose(drift[["dx", "dy"]].to_numpy()[2], [-2.0, -2.0], atol=0.3)
    viewer.dims.set_current_step(0, 2)
    _screenshot(viewer, screenshot_dir / "napari-time-series.png")


def test_a_time_series_of_noise_reports_its_doubtful_registrations(tmp_path):
    """The track warnings (doubtful registration, no site) come back as the widget's warning lines."""
    from atomfinder.napari._widget import _track_job

    noise = np.random.default_rng(3).normal(100.0, 5.0, (3, 128, 128)).astype(np.float32)
    _, message, lines, _ = _track_job(noise, "graphene", SAMPLING_A, "noise", SAMPLING_A, str(tmp_path / "t"),
                                      0.5, progress=None)
    assert "noise: " in message
    assert lines and any("registration" in line for line in lines)


def test_a_time_series_rerun_does_not_overwrite_an_earlier_run(viewer, qtbot, stack_tif, tmp_path):
    from atomfinder.napari._widget import TIME_SERIES

    viewer.open(stack_tif, plugin="atomfinder")
    widget = _widget(viewer)
    widget.sampling.value, widget.series.value = SAMPLING_A, TIME_SERIES
    earlier = tmp_path / "track"
    earlier.mkdir()
    (earlier / "sites.csv").write_text("an earlier run's\n")
    widget.track_dir.value = earlier
    _run(widget, qtbot)  # refused before anything runs
    assert widget.last_error == f"{earlier}: already holds sites.csv from an earlier run; choose another track " \
                                "output folder, or clear it for a new temporary folder"
    assert (earlier / "sites.csv").read_text() == "an earlier run's\n"

    widget.track_dir.value = None  # a new temporary folder, shown in the field afterwards
    _run(widget, qtbot)
    assert widget.last_error == ""
    shown = Path(widget.track_dir.value)
    assert (shown / "sites.csv").is_file() and shown.parent != tmp_path
    assert widget.track_folder() is None  # a rerun makes another temporary folder instead of replacing this one


def test_augment_switch_follows_the_card_and_reaches_detection(viewer, qtbot, crop_tif):
    import atomfinder

    viewer.open(crop_tif, plugin="atomfinder")
    widget = _widget(viewer)
    widget.model.value = "gold"  # gold's card averages the eight views
    assert widget.augment.value is True
    widget.model.value = "graphene"  # graphene's does not
    assert widget.augment.value is False

    widget.sampling.value = SAMPLING_A
    widget.augment.value = True
    _run(widget, qtbot)
    assert widget.last_error == ""
    found = viewer.layers["atoms: C [graphene_crop]"].data[:, ::-1]  # (row, col) -> (x, y) in pixels
    image = tifffile.imread(crop_tif)
    table_on, info_on = atomfinder.detect(image, model="graphene", sampling=SAMPLING_A, augment=True)
    table_off, _ = atomfinder.detect(image, model="graphene", sampling=SAMPLING_A, augment=False)
    assert info_on["provenance"]["test_time_augmentation"] is True
    np.testing.assert_allclose(found, table_on[["x", "y"]].to_numpy(), atol=1e-3)
    assert len(table_off) != len(table_on) or not np.allclose(table_off[["x", "y"]].to_numpy(),
                                                              table_on[["x", "y"]].to_numpy(), atol=1e-3)
