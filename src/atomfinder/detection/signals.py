"""HyperSpy and Atomap glue: signals in, calibrated signals with markers and Atomap
sublattices out.

* Input: :func:`atomfinder.detect` accepts a HyperSpy ``Signal2D`` (one image, or a
  stack with one navigation axis). :func:`signal_image` and
  :func:`signal_sampling_A` read its pixels and its pixel size in Å from the signal
  axes' ``scale`` and ``units`` (nm, Å, µm, ... converted to Å); any object with
  ``.data`` and ``.axes_manager`` works the same way.
* Output: :func:`to_signal` gives the input image back as a ``Signal2D`` with
  calibrated axes and one ``hs.plot.markers.Points`` per class (permanent markers, in
  the axes' calibrated units); :func:`probabilities_signal` gives the probability
  maps with the same calibration; :func:`marker_positions` reads markers back into
  pixel positions.
* :func:`to_atomap` makes an Atomap ``Sublattice`` of an atom table.

HyperSpy and Atomap are imported only inside the functions that build their objects:
``import atomfinder`` and :func:`atomfinder.detect` never load them (reading a signal
given by the user needs only its attributes).

Coordinates follow DESIGN.md: table positions ``x`` (column), ``y`` (row) are in
pixels of the input, origin at the top-left pixel's centre; a signal axis maps pixel
``i`` to ``offset + i * scale`` in its ``units``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from atomfinder.detection.io import MicrographError, _axis_sampling_A, _to_grey, unit_to_angstrom

__all__ = [
    "AxisCalibration",
    "SignalCalibration",
    "is_signal",
    "marker_positions",
    "probabilities_signal",
    "signal_calibration",
    "signal_grey",
    "signal_image",
    "signal_sampling_A",
    "signal_title",
    "to_atomap",
    "to_signal",
]

#: Relative difference below which two pixel sizes are the same calibration.
SAMPLING_RTOL = 1e-3
#: Default marker diameter of :func:`to_signal` (points).
MARKER_SIZE_PT = 8.0
#: Titles HyperSpy readers give a signal without one.
_NO_TITLES = {"", "__unnamed__", "<undefined>"}
_HYPERSPY_HINT = "HyperSpy is not installed; install it with: pip install 'atomfinder[hyperspy]'"
_ATOMAP_HINT = "Atomap is not installed; install it with: pip install atomap"


# --------------------------------------------------------------------------- reading signals


def is_signal(obj: Any) -> bool:
    """True for a HyperSpy signal or any object with ``.data`` and ``.axes_manager``."""
    return hasattr(obj, "data") and hasattr(obj, "axes_manager")


def _text(value: Any) -> str:
    """A trait value as text: HyperSpy's ``<undefined>`` (and None) become ``""``."""
    text = "" if value is None else str(value)
    return "" if text == "<undefined>" else text


def signal_title(signal: Any) -> str | None:
    """The signal's title, else the name of the file it was loaded from, else None."""
    general = getattr(getattr(signal, "metadata", None), "General", None)
    for key in ("title", "original_filename"):
        text = _text(getattr(general, key, None)).strip()
        if text not in _NO_TITLES:
            return text
    return None


def _signal_axes(signal: Any, source: str) -> list[Any]:
    """The two signal axes ``[x, y]`` (columns, rows) of an image signal.

    Raises
    ------
    MicrographError
        When the signal does not have exactly two signal axes (a spectrum, a
        transposed signal), naming its dimensions.
    """
    manager = signal.axes_manager
    axes = list(manager.signal_axes)
    n = int(getattr(manager, "signal_dimension", len(axes)))
    if n != 2 or len(axes) != 2:
        kind = type(signal).__name__
        raise MicrographError(
            source, f"a {kind} with {n} signal dimension{'s' * (n != 1)}; expected an image signal "
            "(two signal axes, e.g. a HyperSpy Signal2D; s.as_signal2D((0, 1)) converts others)"
        )
    return axes


def signal_grey(signal: Any, source: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """The pixels of an image signal, ``[H, W]`` or ``[N, H, W]`` (navigation first), and notes.

    A lazy signal is computed here (:func:`atomfinder.detect` instead reads a lazy stack
    one frame at a time, through ``load_sample(..., lazy=True)``). At most one navigation axis is accepted (a stack of
    frames); more are refused by the caller's shape check. An RGB signal (HyperSpy's
    ``rgb8``/``rgb16``) is treated as an RGB file is: grey stored as RGB (three equal
    channels) is read as grey with a note, colour is refused.

    Raises
    ------
    MicrographError
        Not an image signal (:func:`_signal_axes`), or a colour image.
    """
    _signal_axes(signal, source)
    data = np.asarray(signal.data)
    grey, _, colour = _to_grey(data, [{} for _ in range(data.ndim)], channels_last=False)
    if colour == "rgb":
        raise MicrographError(source, "a colour (RGB) image, not a micrograph (a screenshot or an exported "
                                      "figure?); give the grey-level image the microscope recorded")
    notes = (f"{source}: grey image stored as RGB (three equal channels), read as grey",) if colour else ()
    return grey, notes


def signal_image(signal: Any, source: str) -> np.ndarray:
    """The pixels of an image signal, ``[H, W]`` or ``[N, H, W]`` (navigation first); see :func:`signal_grey`.

    Raises
    ------
    MicrographError
        Not an image signal (:func:`_signal_axes`), or a colour image.
    """
    return signal_grey(signal, source)[0]


def signal_sampling_A(signal: Any, source: str) -> tuple[float | None, str | None]:
    """Pixel size in Å of an image signal, from its signal axes' ``scale`` and ``units``.

    Parameters
    ----------
    signal : hyperspy Signal2D or similar
        An object with ``.axes_manager.signal_axes`` (``scale``, ``units``).
    source : str
        Name used in messages.

    Returns
    -------
    (sampling_A, note) : (float or None, str or None)
        The pixel size in Å/px, or None with the reason (no length unit, an invalid
        scale) when the axes carry no calibration.

    Raises
    ------
    MicrographError
        A reciprocal unit (diffraction, FFT), a non-uniform axis, non-square pixels,
        or not an image signal.
    """
    samplings = []
    for axis, name in zip(_signal_axes(signal, source), ("x", "y")):
        if not getattr(axis, "is_uniform", True):
            raise MicrographError(source, f"the signal's {name} axis is non-uniform; give an image with even pixels")
        try:
            sampling, note = _axis_sampling_A(getattr(axis, "scale", None), _text(getattr(axis, "units", None)))
        except ValueError as exc:
            raise MicrographError(source, f"pixel size in a {exc}: a diffraction pattern or FFT") from None
        if sampling is None:
            return None, f"{name} axis: {note}"
        samplings.append(sampling)
    if abs(samplings[0] - samplings[1]) > SAMPLING_RTOL * max(samplings):
        raise MicrographError(source, f"non-square pixels ({samplings[0]:.6g} Å wide, {samplings[1]:.6g} Å high)")
    return samplings[0], None


@dataclass(frozen=True)
class AxisCalibration:
    """One axis of a signal: pixel ``i`` lies at ``offset + i * scale`` ``units``."""

    name: str
    scale: float
    units: str
    offset: float = 0.0

    def coordinates(self, pixels: np.ndarray) -> np.ndarray:
        """Calibrated coordinates of pixel positions (float pixels, origin at pixel 0's centre)."""
        return self.offset + np.asarray(pixels, dtype=np.float64) * self.scale

    def pixels(self, coordinates: np.ndarray) -> np.ndarray:
        """Pixel positions of calibrated coordinates (the inverse of :meth:`coordinates`)."""
        return (np.asarray(coordinates, dtype=np.float64) - self.offset) / self.scale

    def in_units(self, units: str) -> "AxisCalibration":
        """The same axis in another length unit (``"Å"``, ``"nm"``, ``"pm"``, ...).

        Raises
        ------
        ValueError
            When either unit is not a length unit.
        """
        here, there = unit_to_angstrom(self.units), unit_to_angstrom(units)
        if here is None or there is None:
            raise ValueError(f"cannot convert {self.units!r} to {units!r}: both must be length units (Å, nm, ...)")
        f = here / there
        return replace(self, scale=self.scale * f, units=units, offset=self.offset * f)

    def sampling_A(self) -> float | None:
        """The scale in Å, or None without a length unit."""
        try:
            factor = unit_to_angstrom(self.units)
        except ValueError:
            return None
        return None if factor is None else self.scale * factor

    def apply(self, axis: Any) -> None:
        """Write this calibration onto a HyperSpy axis."""
        axis.name, axis.scale, axis.units, axis.offset = self.name, self.scale, self.units, self.offset

    @classmethod
    def of(cls, axis: Any, default_name: str = "") -> "AxisCalibration":
        """The calibration of a HyperSpy (or HyperSpy-like) uniform axis."""
        scale, offset = _number(getattr(axis, "scale", None), 1.0), _number(getattr(axis, "offset", None), 0.0)
        return cls(_text(getattr(axis, "name", "")) or default_name, scale, _text(getattr(axis, "units", "")), offset)


def _number(value: Any, default: float) -> float:
    """``value`` as a finite float, else ``default``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


@dataclass(frozen=True)
class SignalCalibration:
    """The axes of a signal :func:`atomfinder.detect` read, to give results back in them.

    Attributes
    ----------
    x, y : AxisCalibration
        The signal axes (columns, rows).
    navigation : tuple of AxisCalibration
        The navigation axes in array order (one for a stack of frames; none for one image).
    title : str or None
        The signal's title (:func:`signal_title`).
    """

    x: AxisCalibration
    y: AxisCalibration
    navigation: tuple[AxisCalibration, ...] = ()
    title: str | None = None

    def sampling_A(self) -> float | None:
        """The x axis' pixel size in Å, or None without a length unit."""
        return self.x.sampling_A()


def signal_calibration(signal: Any) -> SignalCalibration | None:
    """The axes of an image signal (:class:`SignalCalibration`), or None when it has no two
    uniform signal axes."""
    manager = signal.axes_manager
    axes = list(manager.signal_axes)
    if len(axes) != 2 or not all(getattr(a, "is_uniform", True) for a in axes):
        return None
    navigation = list(getattr(manager, "navigation_axes", ()))[::-1]  # HyperSpy lists them x first
    return SignalCalibration(
        AxisCalibration.of(axes[0], "x"), AxisCalibration.of(axes[1], "y"),
        tuple(AxisCalibration.of(a) for a in navigation if getattr(a, "is_uniform", True)),
        signal_title(signal),
    )


# --------------------------------------------------------------------------- results as signals


def _hyperspy() -> Any:
    """``hyperspy.api``, or an ImportError with the install line."""
    try:
        import hyperspy.api as hs
    except ImportError as exc:
        raise ImportError(_HYPERSPY_HINT) from exc
    return hs


def _result_parts(result: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``(table, info)`` of a Detection (or of any such pair)."""
    table, info = result
    return table, info


def _image_axes(result: Any, signal: Any, units: str | None) -> SignalCalibration:
    """The axes results are given in: the signal's (given, or the one ``detect`` read) when
    its calibration is the pixel size used, else Å axes at the used pixel size from 0;
    converted to ``units`` when given."""
    _, info = _result_parts(result)
    sampling = float(info["sampling_A"])
    known = signal_calibration(signal) if signal is not None else getattr(result, "signal_calibration", None)
    if known is not None and _same(known.sampling_A(), sampling) and _same(known.y.sampling_A(), sampling):
        axes = known
    else:
        axes = SignalCalibration(AxisCalibration("x", sampling, "Å"), AxisCalibration("y", sampling, "Å"),
                                 known.navigation if known is not None else (),
                                 known.title if known is not None else None)
    if units is not None:
        axes = replace(axes, x=axes.x.in_units(units), y=axes.y.in_units(units))
    return axes


def _same(a: float | None, b: float) -> bool:
    return a is not None and math.isfinite(a) and abs(a - b) <= SAMPLING_RTOL * b


def _frames_of(table: pd.DataFrame, n_frames: int | None) -> list[pd.DataFrame]:
    """The table split by its ``frame`` column (``n_frames`` parts), or whole (``None``)."""
    if n_frames is None:
        return [table]
    frames = table["frame"].to_numpy() if "frame" in table and len(table) else np.zeros(len(table), dtype=int)
    return [table[frames == i] for i in range(n_frames)]


def _offsets(parts: list[pd.DataFrame], axes: SignalCalibration, stack: bool) -> np.ndarray:
    """Marker offsets ``(x, y)`` in calibrated units: one ``[n, 2]`` array, or a ragged
    object array with one per frame."""
    arrays = [np.column_stack([axes.x.coordinates(p["x"].to_numpy(float)),
                               axes.y.coordinates(p["y"].to_numpy(float))]).reshape(-1, 2) for p in parts]
    if not stack:
        return arrays[0]
    ragged = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        ragged[i] = a
    return ragged


def _class_names(table: pd.DataFrame, info: dict[str, Any]) -> list[str]:
    """The model's class names, then any other label of the table."""
    names = [str(n) for n in info.get("class_names", ())]
    labels = set(table["label"].astype(str)) if "label" in table and len(table) else set()
    return names + sorted(labels - set(names))


def _add_class_markers(out: Any, table: pd.DataFrame, info: dict[str, Any], axes: SignalCalibration,
                       n_frames: int | None, marker_size: float) -> None:
    """One permanent ``Points`` marker per class, named after it (the class colours of
    :func:`atomfinder.detection.overlay.overlay_plot`)."""
    from atomfinder._figures import CLASS_COLOURS

    hs = _hyperspy()
    labels = table["label"].astype(str) if "label" in table else pd.Series([], dtype=str)
    for i, name in enumerate(_class_names(table, info), start=1):
        parts = _frames_of(table[labels.to_numpy() == name], n_frames)
        marker = hs.plot.markers.Points(offsets=_offsets(parts, axes, n_frames is not None), sizes=marker_size,
                                        color=CLASS_COLOURS[i % len(CLASS_COLOURS)], name=name)
        out.add_marker(marker, plot_marker=False, permanent=True)


def _frame_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """An image shape without leading length-1 axes (as detection reads it)."""
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    return shape


def check_signal_fits(result: Any, signal: Any) -> None:
    """Refuse a signal whose image is not the shape of the one the detection was made from.

    A focal series' signal is compared by its frame size (the detection's image is its
    first frame). A detection without an image (a bare ``(table, info)``) is not checked.

    Raises
    ------
    ValueError
        Naming both shapes (one line).
    """
    image = getattr(result, "image", None)
    if signal is None or image is None:
        return
    _, info = _result_parts(result)
    focal = bool(info.get("provenance", {}).get("focal_series"))
    want, have = _frame_shape(tuple(np.shape(image))), _frame_shape(tuple(np.shape(signal.data)))
    if focal:
        want, have = want[-2:], have[-2:]
    if have != want:
        raise ValueError(f"the signal's data have shape {have}, but the atoms were found in an image of shape "
                         f"{want}; give the signal the detection was made from")


def _base_image(result: Any, signal: Any, focal_series: bool) -> tuple[np.ndarray | None, Any]:
    """``(data, None)`` from the detection's image, or ``(None, copy)`` of the given signal
    (its first frame for a focal series: the table is in that frame's grid)."""
    if signal is None:
        image = getattr(result, "image", None)
        if image is None:
            raise ValueError("this detection holds no image; give the signal it was made from")
        return np.asarray(image), None
    if focal_series and signal.axes_manager.navigation_dimension:
        signal = signal.inav[0]
    return None, signal.deepcopy()


def to_signal(result: Any, signal: Any = None, *, units: str | None = None,
              marker_size: float = MARKER_SIZE_PT) -> Any:
    """The detected atoms as HyperSpy markers on a calibrated ``Signal2D`` of the image.

    Parameters
    ----------
    result : Detection
        What :func:`atomfinder.detect` returned.
    signal : hyperspy Signal2D, optional
        The signal the atoms were found in; the output is a copy of it (metadata
        kept). Default: the detection's own (cleaned) image.
    units : str, optional
        A length unit for the image axes (``"Å"``, ``"nm"``, ``"pm"``, ...).
        Default: the axes of the signal given to :func:`atomfinder.detect` (or of
        ``signal``) when their calibration is the pixel size that was used; else Å,
        with the origin at the top-left pixel's centre.
    marker_size : float
        Marker diameter in points.

    Returns
    -------
    hyperspy.signals.Signal2D
        The image (a stack keeps its navigation axis), with one permanent
        ``hs.plot.markers.Points`` per class in ``metadata.Markers``, named after
        the class, at ``offset + x * scale`` of the signal axes (calibrated units; a
        stack's markers are ragged, one set per frame). ``s.plot()`` shows them.

    Raises
    ------
    ImportError
        Without HyperSpy (one line: how to install it).
    ValueError
        A unit that is not a length, a detection without an image and no ``signal``,
        or a ``signal`` of another shape than the detection's image (:func:`check_signal_fits`).
    """
    hs = _hyperspy()
    check_signal_fits(result, signal)
    table, info = _result_parts(result)
    focal = bool(info.get("provenance", {}).get("focal_series"))
    data, out = _base_image(result, signal, focal)
    axes = _image_axes(result, signal, units)
    if out is None:
        out = hs.signals.Signal2D(data)
        out.metadata.General.title = f"atoms found in {axes.title or info.get('provenance', {}).get('input', 'image')}"
    if out.data.ndim not in (2, 3):
        raise ValueError(f"expected an image or a stack of images, got data of shape {out.data.shape}")
    _apply_axes(out, axes)
    n_frames = out.data.shape[0] if out.data.ndim == 3 else None
    _add_class_markers(out, table, info, axes, n_frames, marker_size)
    return out


def _apply_axes(out: Any, axes: SignalCalibration) -> None:
    """Write image axes (and the navigation axes, when they fit) onto a signal."""
    sig = out.axes_manager.signal_axes
    axes.x.apply(sig[0])
    axes.y.apply(sig[1])
    nav = list(out.axes_manager.navigation_axes)[::-1]
    if len(nav) == len(axes.navigation):
        for target, cal in zip(nav, axes.navigation):
            cal.apply(target)


def probabilities_signal(result: Any, signal: Any = None, *, units: str | None = None,
                         grid: str = "model") -> Any:
    """The per-class probability maps as a ``Signal2D`` calibrated like :func:`to_signal`.

    Parameters
    ----------
    result : Detection
        What :func:`atomfinder.detect` returned.
    signal : hyperspy Signal2D, optional
        The signal the atoms were found in (its axes, as in :func:`to_signal`).
    units : str, optional
        A length unit for the map axes (default as :func:`to_signal`).
    grid : {"model", "input"}
        ``"model"``: the maps as the network made them, at the model's pixel size
        (the axes' scale is that size in the image's units, the offset the image's:
        both grids start at the centre of the top-left pixel); ``"input"``: resampled
        onto the image's pixels (:func:`atomfinder.detection.resampling.probabilities_on_input_grid`).

    Returns
    -------
    hyperspy.signals.Signal2D or None
        Navigation axis ``class`` (index 0 = background, then
        ``info["class_names"]``; the names are in ``metadata.Signal.class_names``),
        and the frame axis first for a stack; None when the detection holds no maps.

    Raises
    ------
    ValueError
        An unknown ``grid``, or a ``signal`` of another shape than the detection's
        image (:func:`check_signal_fits`).
    """
    if grid not in ("model", "input"):
        raise ValueError(f"grid must be 'model' or 'input', got {grid!r}")
    hs = _hyperspy()
    check_signal_fits(result, signal)
    table, info = _result_parts(result)
    maps = info.get("probabilities")
    if maps is None:
        return None
    axes = _image_axes(result, signal, units)
    maps = np.asarray(maps, dtype=np.float32)
    if grid == "input":
        from atomfinder.detection.resampling import probabilities_on_input_grid

        shape = np.shape(getattr(result, "image", None) if signal is None else signal.data)[-2:]
        maps = probabilities_on_input_grid(maps, info["model_sampling_A"], info["sampling_A"], tuple(shape))
    else:
        f = float(info["model_sampling_A"]) / float(info["sampling_A"])
        axes = replace(axes, x=replace(axes.x, scale=axes.x.scale * f), y=replace(axes.y, scale=axes.y.scale * f))
    out = hs.signals.Signal2D(maps)
    nav = list(out.axes_manager.navigation_axes)[::-1]
    nav[-1].name = "class"
    if len(nav) == 2 and len(axes.navigation) == 1:
        axes.navigation[0].apply(nav[0])
    axes.x.apply(out.axes_manager.signal_axes[0])
    axes.y.apply(out.axes_manager.signal_axes[1])
    out.metadata.General.title = "atom probability maps"
    out.metadata.set_item("Signal.class_names", ["background", *map(str, info.get("class_names", ()))])
    out.metadata.set_item("Signal.quantity", "probability")
    return out


def marker_positions(signal: Any, names: list[str] | None = None) -> pd.DataFrame:
    """Positions of a signal's ``Points`` markers, in pixels (the inverse of :func:`to_signal`).

    Parameters
    ----------
    signal : hyperspy Signal2D
        A signal with permanent markers (``metadata.Markers``).
    names : list of str, optional
        The markers to read (default: every ``Points`` marker).

    Returns
    -------
    DataFrame
        ``x, y`` (pixels of the signal), ``x_<units>, y_<units>`` as stored, ``label``
        (the marker's name), and ``frame`` for a stack.
    """
    cal = signal_calibration(signal)
    if cal is None:
        raise ValueError("expected a signal with two uniform signal axes")
    markers = signal.metadata.get_item("Markers") if signal.metadata.has_item("Markers") else None
    rows = []
    for name in (list(markers.keys()) if markers is not None else []):
        marker = markers.get_item(name)
        if type(marker).__name__ != "Points" or (names is not None and name not in names):
            continue
        offsets = marker.kwargs["offsets"]
        per_frame = list(offsets) if offsets.dtype == object else [offsets]
        for frame, xy in enumerate(per_frame):
            xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
            rows.append(pd.DataFrame({"frame": frame, "x": cal.x.pixels(xy[:, 0]), "y": cal.y.pixels(xy[:, 1]),
                                      "x_cal": xy[:, 0], "y_cal": xy[:, 1], "label": name}))
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        {"frame": [], "x": [], "y": [], "x_cal": [], "y_cal": [], "label": []})
    unit = cal.x.units or "px"
    out = out.rename(columns={"x_cal": f"x_{unit}", "y_cal": f"y_{unit}"})
    return out if signal.axes_manager.navigation_dimension else out.drop(columns="frame")


# --------------------------------------------------------------------------- Atomap


def _atomap_sublattice_class() -> Any:
    """``atomap.sublattice.Sublattice``, or an ImportError with the install line."""
    try:
        import atomap.api  # noqa: F401  (atomap.sublattice alone hits a circular import)
        from atomap.sublattice import Sublattice
    except ImportError as exc:
        raise ImportError(_ATOMAP_HINT) from exc
    return Sublattice


def _check_frame(frame: int | None, n_frames: int) -> None:
    """Refuse a frame index outside a stack of ``n_frames`` (one line)."""
    if frame is not None and not 0 <= int(frame) < n_frames:
        raise ValueError(f"frame {frame} is not in the stack: it has {n_frames} frames (0 to {n_frames - 1})")


def _atomap_image(table: pd.DataFrame, signal: Any, frame: int | None) -> tuple[pd.DataFrame, Any, dict[str, Any]]:
    """The rows of one frame, its image (a signal, or an array), and Atomap's calibration
    arguments for an array (the table's pixel size in Å)."""
    stacked = "frame" in table.columns
    image = signal
    if is_signal(signal) and signal.axes_manager.navigation_dimension:
        _check_frame(frame, int(signal.axes_manager.navigation_size))
        image = signal.inav[frame or 0]
    elif not is_signal(signal) and np.ndim(signal) == 3:
        _check_frame(frame, int(np.shape(signal)[0]))
        image = np.asarray(signal)[frame or 0]
    rows = table[table["frame"] == (frame or 0)] if stacked else table
    extra: dict[str, Any] = {}
    if not is_signal(image):
        sampling = table.attrs.get("provenance", {}).get("sampling_A")
        if sampling:
            extra = {"pixel_size": float(sampling), "units": "Å"}
    return rows, image, extra


def to_atomap(table: Any, signal: Any, *, label: str | None = None, frame: int | None = None,
              name: str | None = None, color: str = "red", **kwargs: Any) -> Any:
    """An Atomap ``Sublattice`` of detected atoms, for Atomap's refinement and analysis.

    Parameters
    ----------
    table : DataFrame or Detection
        An atom table (``x``, ``y`` in pixels of ``signal``; a Detection gives its table).
    signal : hyperspy Signal2D or ndarray
        The image the atoms were found in (a stack: the frame ``frame`` is used). A
        signal's axes give the sublattice's pixel size and units; for an array they
        come from the table's provenance (Å).
    label : str, optional
        Only atoms of this class (e.g. ``"Mo"``); default all.
    frame : int, optional
        For a stack (a table with a ``frame`` column): the frame (default 0).
    name, color
        The sublattice's name (default: ``label``, else ``"atoms"``) and plot colour.
    **kwargs
        Passed to ``atomap.sublattice.Sublattice`` (``fix_negative_values``, ...).

    Returns
    -------
    atomap.sublattice.Sublattice
        Atom positions ``(x, y)`` in pixels of the image, as in the table.

    Raises
    ------
    ImportError
        Without Atomap (one line: how to install it).
    ValueError
        An unknown ``label``, a table without ``x``/``y``, or a ``frame`` outside the stack.
    """
    Sublattice = _atomap_sublattice_class()
    if isinstance(table, tuple):
        table = table[0]
    if not {"x", "y"} <= set(table.columns):
        raise ValueError("the table needs 'x' and 'y' columns (pixels)")
    rows, image, extra = _atomap_image(table, signal, frame)
    if label is not None:
        known = set(table["label"].astype(str)) if "label" in table else set()
        if label not in known:
            raise ValueError(f"no atoms labelled {label!r}; the table has {', '.join(sorted(known)) or 'none'}")
        rows = rows[rows["label"].astype(str) == label]
    positions = rows[["x", "y"]].to_numpy(dtype=np.float64)
    return Sublattice(positions, image, name=name or label or "atoms", color=color, **(extra | kwargs))
