"""The dock widget: pick an image, a model, a threshold and a pixel size, find atoms, save the table.

The threshold and the test-time augmentation switch start at the chosen model
card's settings and may be changed before a run.

Detection runs :func:`atomfinder.detect` (or, for a time series,
:func:`atomfinder.napari._series.track_series`) in a worker thread, so napari stays
responsive; the progress bar shows the frames done (busy while one image is being
detected). The atoms become one Points layer per class (:mod:`atomfinder.napari._points`);
they can be edited with napari's point tools and saved as an atom-table CSV.
An unusable input or model is reported as one line (a napari notification and the
widget's status line), never a traceback.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar, PushButton
from qtpy.QtCore import QObject, Signal

from atomfinder.napari._points import atom_layers, clear_added_features, image_placement
from atomfinder.napari._reader import METADATA_KEY, LayerData, data_checksum
from atomfinder.napari._series import refuse_earlier_run, site_layers, track_series
from atomfinder.napari._writer import save_atom_table

if TYPE_CHECKING:
    import napari

#: What the frames of the image are: the widget's "series" choices.
SINGLE = "image (each frame on its own)"
TIME_SERIES = "time series (track)"
FOCAL_SERIES = "focal series"
SERIES_MODES = (SINGLE, TIME_SERIES, FOCAL_SERIES)
#: How the widget's user says "focal series" in atomfinder's messages (the frames setting).
FOCAL_FLAG = f"frames: {FOCAL_SERIES}"


class _ProgressRelay(QObject):
    """Carries ``(done, total)`` from the worker thread to the widget (a queued Qt signal)."""

    changed = Signal(int, int)


def one_line(exc: BaseException) -> str:
    """An exception as one line: the message of a ValueError (atomfinder's input errors), else type: message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, ValueError) and text else f"{type(exc).__name__}: {text}".rstrip(": ")


def scale_sampling_A(layer: Any) -> float | None:
    """Pixel size (Å/px) of a layer's scale when its last axis is in a length unit (Å, nm, pm, µm), else None."""
    from atomfinder.detection.io import unit_to_angstrom

    units = [str(u) for u in getattr(layer, "units", ())]
    try:
        factor = unit_to_angstrom(units[-1]) if units else None
    except ValueError:  # a reciprocal unit: not a real-space image
        return None
    return float(layer.scale[-1]) * factor if factor else None


def layer_sampling_A(layer: Any) -> float | None:
    """Pixel size (Å/px) of an image layer: its scale in a length unit (converted to Å), else what
    atomfinder's reader found, else None.

    The scale comes first: after a run with another pixel size it is the one used, which the box then shows.
    """
    sampling = scale_sampling_A(layer)
    if sampling:
        return sampling
    meta = layer.metadata.get(METADATA_KEY, {})
    return float(meta["sampling_A"]) if meta.get("sampling_A") else None


def shown_sampling_A(typed: float, layer: Any, step: float) -> float:
    """The pixel size a box showing ``typed`` (to ``step``) means: the layer's exact one when it rounds to it.

    The box shows a few decimals, so a file's 0.1034567 Å/px shows as 0.1035; that is
    not the user's override. The layer's pixel size (:func:`layer_sampling_A`) or
    the file's (reader metadata) is returned when it is within half a step of
    ``typed``, else ``typed``.
    """
    if not typed > 0:
        return typed
    meta = layer.metadata.get(METADATA_KEY, {})
    for exact in (layer_sampling_A(layer), meta.get("sampling_A")):
        if exact and abs(float(exact) - typed) <= 0.5 * step * (1 + 1e-9):
            return float(exact)
    return typed


def card_settings(model: str) -> tuple[float, bool]:
    """The model card's ``(peak threshold, test-time augmentation)``: 0.5 and False when the card has none."""
    from atomfinder.detection.pipeline import detection_settings, uses_augmentation
    from atomfinder.nn.card import load_card, resolve_model

    card = load_card(resolve_model(model))
    return detection_settings(card)[0], uses_augmentation(card)


def file_of(layer: Any) -> str | None:
    """The file an image layer was read from, while its data are still what the reader returned (else None).

    The reader's checksum of the data (:func:`atomfinder.napari._reader.data_checksum`)
    must match the layer's data now: a layer whose data were replaced or edited, or a
    duplicate with other data, is not its file.
    """
    meta = layer.metadata.get(METADATA_KEY, {})
    path = meta.get("path")
    if not path or not os.path.isfile(path) or not meta.get("checksum"):
        return None
    return path if data_checksum(layer.data) == meta["checksum"] else None


def layer_pixels(layer: Any) -> np.ndarray:
    """The pixels of an image layer as float32: its data, or a multiscale layer's full resolution (``data[0]``)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return np.asarray(data, dtype=np.float32)


def detection_input(layer: Any, sampling_A: float) -> tuple[Any, float | None]:
    """What to give :func:`atomfinder.detect` for an image layer: ``(image, sampling_A or None)``.

    A layer opened by atomfinder's reader whose data are unchanged is detected from
    its file (the provenance names it; the file's pixel size is used unless the
    widget's differs); any other layer (or one whose data changed) from the array
    it shows (the full-resolution level of a multiscale layer), with the widget's
    pixel size.
    """
    meta = layer.metadata.get(METADATA_KEY, {})
    path = file_of(layer)
    if path is not None:
        same = meta.get("sampling_A") is not None and np.isclose(meta["sampling_A"], sampling_A, rtol=1e-6)
        return path, None if same else sampling_A
    return layer_pixels(layer), sampling_A


def image_id(layer: Any) -> str:
    """A stable id of an image layer: napari's ``unique_id`` (it survives a rename)."""
    return str(layer.unique_id)


def belongs_to(layer: Any, image: Any) -> bool:
    """Whether an atomfinder Points layer was made from ``image`` (its image id, else its image name)."""
    meta = layer.metadata.get(METADATA_KEY, {})
    return meta["image_id"] == image_id(image) if "image_id" in meta else meta.get("image") == image.name


def tie_to_image(layers: list[LayerData], image: Any) -> None:
    """Record ``image``'s id in the metadata of new Points layer-data tuples (see :func:`belongs_to`)."""
    for _, kwargs, _ in layers:
        kwargs["metadata"][METADATA_KEY]["image_id"] = image_id(image)


def image_points_layers(viewer: Any, image: Any, kinds: tuple[str, ...] = ("atoms",)) -> list[Any]:
    """The atomfinder Points layers of ``kinds`` (``"atoms"``, ``"sites"``) made from ``image``, in layer order."""
    from napari.layers import Points

    return [layer for layer in viewer.layers if isinstance(layer, Points)
            and layer.metadata.get(METADATA_KEY, {}).get("kind") in kinds and belongs_to(layer, image)]


class DetectionWidget(Container):
    """Find atoms in an image layer and edit and save them (napari dock widget).

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (napari passes it).

    Attributes
    ----------
    running : bool
        A detection is running in the worker thread.
    last_error : str
        The last error shown (one line), ``""`` when none.
    """

    def __init__(self, napari_viewer: "napari.Viewer") -> None:
        from atomfinder.nn.card import list_models

        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.running = False
        self.last_error = ""
        self.worker: Any = None
        self._target: Any = None  # the image layer of the running (or last) detection
        self._chosen: Any = None  # the image layer whose pixel size the box shows
        self._model_error = ""  # the error of the model last chosen, while it is shown
        self._temporary_track_dir = ""  # the temporary folder of the last time series, shown in track output
        self.image = ComboBox(label="image", choices=self._image_names)
        models = list_models()
        self.model = ComboBox(label="model", choices=models,
                              value="graphene" if "graphene" in models else None)
        self.model_file = FileEdit(label="or model file", mode="r", filter="*.json", nullable=True, value=None)
        self.series = ComboBox(label="frames", choices=list(SERIES_MODES), value=SINGLE)
        self.threshold = FloatSpinBox(label="threshold", min=0.0, max=1.0, step=0.01, value=0.5)
        self.augment = CheckBox(text="average 8 turned and mirrored views (slower)", value=False)
        self.sampling = FloatSpinBox(label="pixel size (Å/px)", min=0.0, max=1000.0, step=0.0001, value=0.0)
        self.track_dir = FileEdit(label="track output", mode="d", nullable=True, value=None)
        self.run_button = PushButton(text="Find atoms")
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="", value="")
        self.save_path = FileEdit(label="save CSV", mode="w", filter="*.csv", nullable=True, value=None)
        self.save_button = PushButton(text="Save atoms as CSV")
        self.extend([self.image, self.model, self.model_file, self.series, self.threshold, self.augment, self.sampling,
                     self.track_dir, self.run_button, self.progress, self.status, self.save_path,
                     self.save_button])
        self.status.native.setWordWrap(True)  # long messages wrap instead of widening the dock
        self._relay = _ProgressRelay()
        self._relay.changed.connect(self._show_progress)
        self.image.changed.connect(self._image_changed)
        self.model.changed.connect(self._model_changed)
        self.model_file.changed.connect(self._model_changed)
        self.run_button.changed.connect(self.run)
        self.save_button.changed.connect(self.save)
        self.viewer.layers.events.inserted.connect(self._layers_changed)
        self.viewer.layers.events.removed.connect(self._layers_changed)
        self.viewer.layers.events.renamed.connect(self._layers_changed)
        self._model_changed()
        self._image_changed()

    # ------------------------------------------------------------------ choices

    def _image_names(self, *_: Any) -> list[str]:
        """Names of the viewer's image layers."""
        from napari.layers import Image

        return [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]

    def _layers_changed(self, *_: Any) -> None:
        """Refresh the image choices (a layer added, removed or renamed); the chosen image stays chosen."""
        chosen = self._chosen
        with self.image.changed.blocked():
            self.image.reset_choices()
            if chosen is not None and any(layer is chosen for layer in self.viewer.layers):
                self.image.value = chosen.name  # under its new name after a rename
        self._image_changed()

    def _image_changed(self, *_: Any) -> None:
        """Show the chosen image's pixel size (0: unknown, to be typed in) when another image is chosen."""
        layer = self.image_layer()
        if layer is not None and layer is not self._chosen:
            self.sampling.value = layer_sampling_A(layer) or 0.0
        self._chosen = layer

    def sampling_A(self, layer: Any) -> float:
        """The pixel size (Å/px) the box gives for ``layer``: its exact calibration when the box shows it rounded."""
        return shown_sampling_A(float(self.sampling.value), layer, float(self.sampling.step))

    def model_name(self) -> str:
        """The model to use: the model file when one is given, else the shipped model chosen."""
        return os.fspath(self.model_file.value) if self.model_file.value else str(self.model.value)

    def _model_changed(self, *_: Any) -> None:
        """Show the model card's threshold and test-time augmentation (a good model clears an earlier model's error)."""
        try:
            self.threshold.value, self.augment.value = card_settings(self.model_name())
        except ValueError as exc:
            self.report_error(one_line(exc))
            self._model_error = self.last_error
            return
        if self._model_error and self.last_error == self._model_error:
            self.last_error, self.status.value = "", ""
        self._model_error = ""

    def image_layer(self) -> Any:
        """The chosen image layer, or None."""
        name = self.image.value
        return self.viewer.layers[name] if name is not None and name in self.viewer.layers else None

    # ------------------------------------------------------------------ messages

    def report_error(self, message: str) -> None:
        """Show a one-line error in the status line and as a napari notification."""
        from napari.utils.notifications import show_error

        self.last_error = message
        self.status.value = f"error: {message}"
        show_error(message)

    def report(self, message: str) -> None:
        """Show a one-line message in the status line and as a napari notification."""
        from napari.utils.notifications import show_info

        self.status.value = message
        show_info(message)

    def _show_progress(self, done: int, total: int) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = done

    # ------------------------------------------------------------------ detection

    def run(self, *_: Any) -> None:
        """Start detection in a worker thread (refused with one line when the settings are incomplete)."""
        from napari.qt.threading import create_worker

        if self.running:
            return
        layer = self.image_layer()
        if layer is None:
            self.report_error("no image layer: open a micrograph first")
            return
        sampling_A = self.sampling_A(layer)
        if not sampling_A > 0:
            self.report_error(f"{layer.name}: no pixel size; type the pixel size in Å/px")
            return
        out_dir = self.track_folder()
        try:
            if self.series.value == TIME_SERIES and out_dir:
                refuse_earlier_run(out_dir)
        except ValueError as exc:
            self.report_error(one_line(exc))
            return
        image, sampling = detection_input(layer, sampling_A)
        job = self._job(image, sampling, layer.name, sampling_A, image_placement(layer), out_dir)
        self._target = layer
        self.last_error = ""
        self.running = True
        self.run_button.enabled = False
        self.status.value = f"finding atoms in {layer.name} ..."
        self.progress.min, self.progress.max, self.progress.value = 0, 0, 0  # busy until frames report
        # an "errored" connection keeps napari from re-raising the error as a traceback
        self.worker = create_worker(job, _connect={"returned": self._show_result, "errored": self._failed,
                                                   "finished": self._finished})

    def track_folder(self) -> str | None:
        """The time series' output folder: the one given, or None for a new temporary folder (also when the
        field shows the temporary folder of the last run)."""
        folder = os.fspath(self.track_dir.value) if self.track_dir.value else None
        return None if folder is None or folder == self._temporary_track_dir else folder

    def _job(self, image: Any, sampling: float | None, image_name: str, sampling_A: float,
             placement: dict[str, np.ndarray], out_dir: str | None):
        """The function the worker runs: returns ``(layers, message, warnings, sampling_A)``."""
        model, threshold, mode = self.model_name(), float(self.threshold.value), self.series.value
        augment = bool(self.augment.value)
        relay = self._relay

        def job() -> tuple[list[LayerData], str, list[str], float]:
            if mode == TIME_SERIES:
                return _track_job(image, model, sampling, image_name, sampling_A, out_dir, threshold,
                                  relay.changed.emit, augment, placement)
            return _detect_job(image, model, sampling, image_name, threshold, mode == FOCAL_SERIES, augment,
                               placement)

        return job

    def _show_result(self, result: tuple[list[LayerData], str, list[str], float]) -> None:
        """Replace the atom (or site) layers of the image the detection ran on with the new ones."""
        from napari.layers import Layer

        layers, message, warning_lines, sampling_A = result
        image = self._target if any(layer is self._target for layer in self.viewer.layers) else None
        if image is not None:
            tie_to_image(layers, image)
            self._remove_layers_of(image, tuple({kw["metadata"][METADATA_KEY]["kind"] for _, kw, _ in layers}))
            lead = (1.0,) * (image.ndim - 2)
            image.scale = lead + (sampling_A, sampling_A)
            image.units = ("pixel",) * len(lead) + ("angstrom", "angstrom")
        for data, kwargs, kind in layers:
            new = Layer.create(data, kwargs, kind)
            new.current_size = float(np.min(kwargs["size"])) if np.size(kwargs["size"]) else 1.0
            if kwargs["metadata"][METADATA_KEY]["kind"] == "atoms":
                new.events.data.connect(clear_added_features)
            self.viewer.layers.append(new)
        self._show_temporary_folder(layers)
        _scale_bar(self.viewer).visible = True  # in Å: the layers' unit
        self.report(message)
        for line in warning_lines:
            from napari.utils.notifications import show_warning

            show_warning(line)

    def _show_temporary_folder(self, layers: list[LayerData]) -> None:
        """Show in "track output" the new temporary folder of a time series run without a folder of its own."""
        out_dirs = [kw["metadata"][METADATA_KEY].get("out_dir") for _, kw, _ in layers]
        if out_dirs and out_dirs[0] and self.track_folder() is None:
            self._temporary_track_dir = os.fspath(out_dirs[0])
            self.track_dir.value = out_dirs[0]

    def _remove_layers_of(self, image: Any, kinds: tuple[str, ...]) -> None:
        """Remove the Points layers of ``kinds`` made from ``image`` (a rerun replaces them; other images' stay)."""
        for old in image_points_layers(self.viewer, image, kinds):
            self.viewer.layers.remove(old)

    def _failed(self, exc: BaseException) -> None:
        self.report_error(one_line(exc))

    def _finished(self) -> None:
        self.running = False
        self.run_button.enabled = True
        self.progress.min, self.progress.max = 0, max(self.progress.max, 1)
        self.progress.value = self.progress.max if not self.last_error else 0

    # ------------------------------------------------------------------ saving

    def atom_points_layers(self) -> list[Any]:
        """The Points layers of atoms found in the chosen image (none when no image is chosen)."""
        image = self.image_layer()
        return [] if image is None else image_points_layers(self.viewer, image)

    def save(self, *_: Any) -> Path | None:
        """Save the (edited) atom layers as an atom-table CSV (asks for a file when none is set)."""
        from atomfinder.napari._points import atom_table

        image = self.image_layer()
        layers = self.atom_points_layers()
        if not layers:
            where = f"in {image.name}" if image is not None else "(no image chosen)"
            self.report_error(f"no atoms {where} to save: find atoms in it first")
            return None
        path = self.save_path.value or _ask_csv_path()
        if not path:
            return None
        try:
            table = atom_table([layer.as_layer_data_tuple() for layer in layers])
            written = save_atom_table(path, table)
        except (OSError, ValueError) as exc:
            self.report_error(one_line(exc))
            return None
        self.report(f"saved {len(table)} atoms to {written}")
        return written


def _scale_bar(viewer: Any) -> Any:
    """The viewer's scale bar overlay (``viewer.canvas.overlays`` since napari 0.9, else ``viewer.scale_bar``)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return getattr(overlays, "scale_bar", None) or viewer.scale_bar


def _ask_csv_path() -> str:
    """A file dialog for the CSV to write (``""`` when cancelled)."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getSaveFileName(None, "Save atoms as CSV", "atoms.csv", "CSV (*.csv)")
    return path


def _detect_job(image: Any, model: str, sampling: float | None, image_name: str, threshold: float,
                focal_series: bool, augment: bool | None = None,
                placement: dict[str, np.ndarray] | None = None) -> tuple[list[LayerData], str, list[str], float]:
    """Run :func:`atomfinder.detect` (in the worker thread) and make the atom layers.

    Its messages name the frames setting (:data:`FOCAL_FLAG`) where the API's say ``focal_series=True``.
    """
    from atomfinder.detection.micrograph import detect_with_flag
    from atomfinder.detection.validity import ValidityWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ValidityWarning)  # shown one line each from the validity record
        table, info = detect_with_flag(image, model=model, sampling=sampling, threshold=threshold,
                                       focal_series=focal_series, augment=augment, focal_flag=FOCAL_FLAG)
    sampling_A = float(info["sampling_A"])
    layers = atom_layers(table, info["class_names"], sampling_A, image_name, placement)
    counts = ", ".join(f"{(table['label'] == c).sum()} {c}" for c in info["class_names"])
    frames = f" in {table['frame'].nunique()} frames" if "frame" in table.columns else ""
    message = f"{image_name}: {len(table)} atoms{frames} ({counts}) at {sampling_A:.4g} Å/px"
    return layers, message, list(info["validity"].get("warnings", [])), sampling_A


def _track_job(image: Any, model: str, sampling: float | None, image_name: str, sampling_A: float,
               out_dir: str | None, threshold: float, progress: Any, augment: bool | None = None,
               placement: dict[str, np.ndarray] | None = None) -> tuple[list[LayerData], str, list[str], float]:
    """Track a time series (in the worker thread) and make the site layers."""
    import tempfile

    from atomfinder.analysis.timeseries.tracking import TrackWarning
    from atomfinder.detection.registration import RegistrationWarning

    folder = out_dir or tempfile.mkdtemp(prefix=f"atomfinder-track-{image_name}-")
    with warnings.catch_warnings(record=True) as caught:  # doubtful registrations, no site: shown as warnings
        warnings.simplefilter("always", RegistrationWarning)
        warnings.simplefilter("always", TrackWarning)
        result = track_series(image, model, sampling, folder, threshold=threshold, progress=progress,
                              augment=augment)
    lines = [str(w.message) for w in caught if issubclass(w.category, (RegistrationWarning, TrackWarning))]
    lines += result.validity_warnings
    for w in caught:  # anything else goes on as it would have
        if not issubclass(w.category, (RegistrationWarning, TrackWarning)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    n_frames = len(result.drift_px)
    message = (f"{image_name}: {len(result.sites)} sites in {n_frames} frames; "
               f"sites.csv, presence.csv, events.csv, drift.csv in {Path(folder).name}/")
    return site_layers(result, image_name, placement), message, lines, result.sampling_A
