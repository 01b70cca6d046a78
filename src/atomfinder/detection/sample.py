"""Read one detection input into a :class:`Sample`: pixels, pixel size and where it came from.

An input is a micrograph file, several single-image files (a focal or time series in
order, stacked), an array, or a HyperSpy-like signal. Its pixel size in Å/px comes
from the file or the signal's axes, or is given; an image without one is an error,
never a guess (DESIGN.md). The pixels are cleaned
(:func:`atomfinder.detection.preprocess.clean_image`). :func:`check_frames`,
:func:`check_size` and :func:`check_focal_step_argument` refuse, in one line, what a
model cannot use before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atomfinder.detection.io import (
    MIN_SIZE,
    FrameStack,
    MicrographError,
    _to_grey,
    read_micrograph,
    require_sampling,
    sampling_hint,
)
from atomfinder.detection.preprocess import clean_image, frame_cleaner, no_data_mask

__all__ = [
    "SAMPLING_RTOL",
    "Sample",
    "check_focal_step_argument",
    "check_frames",
    "check_sampling_value",
    "check_size",
    "is_signal",
    "load_sample",
]

#: Relative difference of the pixel sizes of a focal series' files that is tolerated.
SAMPLING_RTOL = 1e-3


@dataclass(frozen=True)
class Sample:
    """One detection input: an image or stack with its pixel size.

    Attributes
    ----------
    data : ndarray of float32, shape (H, W) or (N, H, W), or FrameStack
        Cleaned pixel values (see :func:`~atomfinder.detection.preprocess.clean_image`); a stack read lazily
        (``load_sample(..., lazy=True)``) is a :class:`~atomfinder.detection.io.FrameStack`
        whose frames are read and cleaned when they are taken.
    sampling_A : float
        Pixel size in Å/px.
    source : str
        What it came from (path(s) or ``"<array>"``), for messages.
    stem : str
        Base name of its output files.
    sampling_source : str
        Where ``sampling_A`` came from: ``"file"`` (the file's calibration),
        ``"signal"`` (a HyperSpy signal's axes) or the label of a given value
        (``"argument"``; ``"--sampling"`` from the command line).
    files : tuple of str
        The files read (empty for an array or signal).
    file_sampling_A : float or None
        The pixel size written in the (first) file, also when a given value replaced
        it; None without one.
    calibration : dict
        The (first) file's calibration as written there: ``source`` (where in the file:
        ``"ImageJ metadata"``, ...; None without a pixel size), ``unit``, ``scale`` (per
        pixel, in ``unit``) and ``note`` (why the file gives no pixel size, or None);
        empty for an array or a signal.
    notes : tuple of str
        One line each about how the input was read (a given pixel size that replaces
        a different one of the file; grey stored as RGB; which of several images in
        the file was read), for the user to see.
    no_data : ndarray of bool, dict or None
        Where the input held no data (NaN or ±inf pixels, before they were filled), same
        shape as ``data``; None when every pixel was finite. For a stack read lazily, a
        dict that receives frame ``i``'s mask (when it has one) as the frame is read.
        Atoms found inside such regions are dropped
        (:func:`~atomfinder.detection.preprocess.in_no_data`).
    """

    data: np.ndarray
    sampling_A: float
    source: str
    stem: str
    sampling_source: str = "argument"
    files: tuple[str, ...] = ()
    file_sampling_A: float | None = None
    calibration: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()
    no_data: np.ndarray | dict[int, np.ndarray] | None = None

    @property
    def n_frames(self) -> int:
        """Number of frames (1 for one image)."""
        return self.data.shape[0] if self.data.ndim == 3 else 1


def is_signal(obj: Any) -> bool:
    """A HyperSpy signal, or any object with ``.data`` and ``.axes_manager``
    (:func:`atomfinder.detection.signals.is_signal`)."""
    from atomfinder.detection.signals import is_signal

    return is_signal(obj)


def check_sampling_value(value: Any, source: str) -> float:
    """``value`` as a positive, finite pixel size in Å/px; else a one-line error naming ``source``."""
    try:
        s = float(value)
    except (TypeError, ValueError):
        s = float("nan")
    if not (math.isfinite(s) and s > 0):
        raise MicrographError(source, f"sampling must be a positive number of Å per pixel, got {value!r}")
    return s


def _grey_from_channels(data: np.ndarray, source: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """An array whose last axis holds channels ([H, W, 1]; RGB(A) as image libraries load a picture):
    one channel is the image; grey stored as RGB(A) is read as grey with a note; colour is refused,
    as for a file (:func:`atomfinder.detection.io._to_grey` decides, for files and arrays alike)."""
    if not (data.ndim == 3 and min(data.shape[:2]) >= MIN_SIZE and data.shape[-1] < MIN_SIZE):
        return data, ()
    if data.shape[-1] == 1:
        return data[..., 0], ()
    try:
        grey, _, colour = _to_grey(data, [{} for _ in range(data.ndim)], channels_last=True)
    except ValueError as exc:  # two channels that are not grey and alpha
        raise MicrographError(source, str(exc)) from None
    if colour == "rgb":
        raise MicrographError(
            source, f"a colour (RGB) image of shape {data.shape}, not a micrograph (a screenshot or an exported "
                    "figure?); give the grey-level image the microscope recorded")
    if colour == "grey-rgb":
        return grey, (f"{source}: grey image stored as {'RGBA' if data.shape[-1] == 4 else 'RGB'} "
                      "(equal channels), read as grey",)
    return grey, ()


def _check_array(data: np.ndarray, source: str) -> np.ndarray:
    """Refuse what is not a real [H, W] or [N, H, W] image of at least MIN_SIZE px."""
    if np.iscomplexobj(data):
        raise MicrographError(source, "complex data (an exit wave or FFT?); give the intensity image")
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise MicrographError(source, f"pixel type {data.dtype} is not a number")
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim not in (2, 3):
        raise MicrographError(
            source, f"{data.ndim}-D data of shape {data.shape}; expected one image [H, W] or a stack [N, H, W]"
        )
    h, w = data.shape[-2:]
    if min(h, w) < MIN_SIZE:
        raise MicrographError(
            source, f"image too small ({h}x{w} pixels; at least {MIN_SIZE}x{MIN_SIZE} needed to hold atoms)"
        )
    return data


def _lazy_signal_stack(signal: Any, source: str) -> FrameStack | None:
    """The frames of a lazy (dask-backed) image-stack signal as a FrameStack, read one frame
    at a time, or None for anything else (an eager signal, a single image, colour data).

    A lazy HyperSpy signal may be larger than memory (a long series of large frames): its
    frames are computed one by one as detection reaches them, as for a multi-frame file
    read with ``lazy=True``.
    """
    from atomfinder.detection.signals import _signal_axes

    data = getattr(signal, "data", None)
    if not (hasattr(data, "dask") and hasattr(data, "compute")) or getattr(data, "dtype", None) is None:
        return None
    if data.dtype.names is not None:  # HyperSpy's rgb8/rgb16: read eagerly, where colour is handled
        return None
    _signal_axes(signal, source)
    data = _check_array(data, source)
    if data.ndim != 3:
        return None
    return FrameStack(data, source=source)


def _check_input_memory(shape: tuple[int, ...], source: str) -> None:
    """Refuse an image whose cleaning would need more memory than is available, before
    it is cleaned (:func:`atomfinder.detection.pipeline.input_memory_problem`)."""
    from atomfinder.detection.pipeline import input_memory_problem

    problem = input_memory_problem(shape)
    if problem:
        raise MicrographError(source, problem)


@dataclass(frozen=True)
class _FileRead:
    """One file as read for detection."""

    data: np.ndarray
    sampling_A: float
    from_file: bool
    file_sampling_A: float | None
    notes: tuple[str, ...]
    calibration: dict[str, Any] = dataclasses.field(default_factory=dict)


def _read_file(path: str | os.PathLike[str], sampling_A: float | None, sampling_name: str,
               lazy: bool = False) -> _FileRead:
    """Pixels and Å/px of one file, whether the Å/px came from the file, and notes (errors name
    the file). A colour image is refused; grey stored as RGB is read with a note. With ``lazy``
    a multi-frame ``.npy`` or TIFF file stays on disk (a FrameStack)."""
    micrograph = read_micrograph(path, sampling_A, sampling_name=sampling_name, lazy=lazy)
    meta = micrograph.metadata
    notes = []
    if meta.get("colour") == "rgb":
        raise MicrographError(
            path, "a colour (RGB) image, not a micrograph (a screenshot or an exported figure?); "
            "give the grey-level image the microscope recorded (dm3/dm4/emd/ser/mrc/tif)"
            + "".join(f"; note: {note}" for note in meta.get("notes", ()))  # e.g. frames stored as RGB planes
        )
    if meta.get("colour") == "grey-rgb":
        notes.append(f"{os.fspath(path)}: grey image stored as RGB (three equal channels), read as grey")
    notes.extend(f"{os.fspath(path)}: {note}" for note in meta.get("notes", ()))
    sampling = require_sampling(micrograph, sampling_name)
    file_sampling = meta.get("file_sampling_A")
    if sampling_A is not None and file_sampling and abs(sampling - file_sampling) > SAMPLING_RTOL * file_sampling:
        notes.append(f"{os.fspath(path)}: {sampling_name} {sampling:.4g} Å/px replaces the file's pixel size "
                     f"{file_sampling:.4g} Å/px")
    data = micrograph.data if isinstance(micrograph.data, FrameStack) else np.asarray(micrograph.data)
    calibration = {"source": meta.get("calibration_source"), "unit": meta.get("unit"), "scale": meta.get("scale"),
                   "note": meta.get("calibration_note")}
    return _FileRead(data, sampling, meta.get("sampling_from") == "file", file_sampling, tuple(notes), calibration)


def _stack_files(
    paths: Sequence[str | os.PathLike[str]], sampling_A: float | None, sampling_name: str,
    series: str = "focal series",
) -> _FileRead:
    """Several single-image files (a ``series`` in order) as one [N, H, W] stack, with the Å/px
    and calibration of the first and the notes of all."""
    frames, samplings, notes = [], [], []
    reads: list[_FileRead] = []
    for p in paths:
        read = _read_file(p, sampling_A, sampling_name)
        data, s = read.data, read.sampling_A
        if data.ndim != 2:
            raise MicrographError(
                p, f"holds {data.shape[0]} frames; give a {series} either as one multi-frame file "
                "or as several single-image files"
            )
        if frames and data.shape != frames[0].shape:
            raise MicrographError(
                p, f"image of {data.shape[0]}x{data.shape[1]} pixels, but {os.fspath(paths[0])} has "
                f"{frames[0].shape[0]}x{frames[0].shape[1]}; {series.replace(' ', '-')} frames must have the same size"
            )
        if samplings and abs(s - samplings[0]) > SAMPLING_RTOL * samplings[0]:
            raise MicrographError(
                p, f"pixel size {s:.6g} Å/px differs from {samplings[0]:.6g} Å/px of {os.fspath(paths[0])}; "
                f"{series.replace(' ', '-')} frames must have the same pixel size"
            )
        frames.append(data)
        samplings.append(s)
        notes.extend(read.notes)
        reads.append(read)
    return dataclasses.replace(reads[0], data=np.stack(frames), notes=tuple(notes))


def load_sample(
    image: Any, sampling_A: float | None = None, *, source: str | None = None,
    sampling_label: str = "argument", sampling_name: str | None = None, series: str = "focal series",
    lazy: bool = False,
) -> Sample:
    """Read and clean one detection input.

    Parameters
    ----------
    image : str, path, sequence of paths, ndarray or HyperSpy-like signal
        A micrograph file (see :func:`atomfinder.detection.io.read_micrograph`);
        several single-image files (a focal series in defocus order, stacked); an
        array ``[H, W]`` or ``[N, H, W]``; or an object with ``.data`` and
        ``.axes_manager`` (a HyperSpy ``Signal2D``: the pixel size comes from
        ``axes_manager.signal_axes[0].scale`` and ``.units``).
    sampling_A : float, optional
        Pixel size in Å/px; overrides the file's or signal's calibration and is
        required for a bare array.
    source : str, optional
        Name used in messages (default: the path, or ``"<array>"``/``"<signal>"``).
    sampling_label : str
        How a given ``sampling_A`` is named in :attr:`Sample.sampling_source`
        (``"argument"``; the command line passes ``"--sampling"``).
    sampling_name : str, optional
        How the user gives a pixel size, named in messages: the keyword of the
        function they called (``"sampling"`` for :func:`atomfinder.detect`) or the command-line
        option. Default: ``sampling_label`` when it is an option (``--...``), else
        ``"sampling_A"``.
    series : str
        What several files form, for messages: ``"focal series"`` or ``"time series"``.
    lazy : bool
        A single multi-frame ``.npy`` or TIFF file, or a lazy (dask-backed) HyperSpy
        stack, is read and cleaned one frame at a time, when the frame is taken
        (``Sample.data`` is a FrameStack): a bad frame is then reported when it is
        reached, not here.

    Returns
    -------
    Sample

    Raises
    ------
    MicrographError
        Unreadable input, not an image, no pixel size, constant or all-NaN image.
    """
    if sampling_name is None:
        sampling_name = sampling_label if sampling_label.startswith("--") else "sampling_A"
    if sampling_A is not None:
        sampling_A = check_sampling_value(sampling_A, source or sampling_name)
    files: tuple[str, ...] = ()
    file_sampling_A: float | None = None
    calibration: dict[str, Any] = {}
    notes: tuple[str, ...] = ()
    if isinstance(image, (str, os.PathLike)) or (
            isinstance(image, (list, tuple)) and image and all(isinstance(p, (str, os.PathLike)) for p in image)):
        paths = [image] if isinstance(image, (str, os.PathLike)) else list(image)
        src = source or os.fspath(paths[0])
        read = (_read_file(paths[0], sampling_A, sampling_name, lazy) if len(paths) == 1
                else _stack_files(paths, sampling_A, sampling_name, series))
        data, s, from_file = read.data, read.sampling_A, read.from_file
        file_sampling_A, notes, calibration = read.file_sampling_A, read.notes, read.calibration
        stem = Path(os.fspath(paths[0])).stem
        files = tuple(os.fspath(p) for p in paths)
    elif is_signal(image):
        from atomfinder.detection.signals import signal_grey, signal_sampling_A, signal_title

        title = signal_title(image)
        src = source or title or "<signal>"
        data = _lazy_signal_stack(image, src) if lazy else None
        if data is None:
            grey, notes = signal_grey(image, src)
            data = _check_array(grey, src)
        s, why = (sampling_A, None) if sampling_A is not None else signal_sampling_A(image, src)
        if s is None:
            raise MicrographError(src, f"no pixel size in the signal's axes ({why}); {sampling_hint(sampling_name)}")
        stem = "signal"
        from_file = False
    elif isinstance(image, np.ndarray) or hasattr(image, "__array__"):
        src = source or "<array>"
        try:
            array = np.asarray(image)
        except (TypeError, RuntimeError, ValueError) as exc:  # e.g. a torch tensor that needs grad, bfloat16
            raise MicrographError(src, f"cannot be read as a NumPy array ({' '.join(str(exc).split())[:120]}); "
                                       "give a NumPy array of numbers (for a torch tensor: t.detach().cpu().float().numpy())"
                                  ) from None
        array, colour_note = _grey_from_channels(array, src)
        notes = colour_note
        data = _check_array(array, src)
        if sampling_A is None:
            raise MicrographError(src, f"an array has no pixel size; {sampling_hint(sampling_name)}")
        s = sampling_A
        stem = "image"
        from_file = False
    else:
        raise MicrographError(
            source or "<input>",
            f"cannot detect atoms in a {type(image).__name__}; give a path, an array or a HyperSpy signal",
        )
    if sampling_A is not None:
        origin = sampling_label
    elif from_file:
        origin = "file"
    else:
        origin = "signal"
    no_data: Any = None
    if isinstance(data, FrameStack):
        _check_input_memory(data.shape[1:], src)  # one frame at a time
        no_data = {}  # filled with a frame's mask when the frame is read
        cleaned = data.with_transform(frame_cleaner(src, no_data))
    else:
        _check_input_memory(np.shape(data), src)
        no_data = no_data_mask(data)
        cleaned = clean_image(data, src)
    return Sample(data=cleaned, sampling_A=float(s), source=src, stem=stem, sampling_source=origin,
                  files=files, file_sampling_A=file_sampling_A, calibration=calibration, notes=notes,
                  no_data=no_data)


def check_frames(sample: Sample, card: Any, focal_series: bool, flag: str = "--focal-series") -> None:
    """Refuse a frame count the model cannot use.

    A focal series needs a focal-series model (``card.in_channels`` > 1) and exactly
    ``card.in_channels`` frames (a single frame is not a series); a single image or a
    stack of independent frames needs a single-image model. ``flag`` is how the user
    says "focal series" in messages (``--focal-series``, or ``focal_series=True`` in Python).

    Raises
    ------
    MicrographError
        Naming the input, its frame count and what the model needs.
    """
    need = int(card.in_channels)
    n = sample.n_frames
    if focal_series and need == 1:
        raise MicrographError(
            sample.source, f"given as a focal series ({flag}), but model {card.name!r} takes single images, "
            f"not a focal series; leave out {flag} or use a focal-series model"
        )
    if focal_series and n == 1:
        raise MicrographError(
            sample.source, f"a single frame given as a focal series ({flag}); model {card.name!r} needs "
            f"a focal series of {need} frames: one multi-frame file or {need} single-image files in defocus order"
        )
    if focal_series and n != need:
        what = f"a focal series of {need} frames" if need > 1 else "single images (not a focal series)"
        raise MicrographError(
            sample.source, f"{n} frame(s) given as a focal series, but model {card.name!r} needs {what}"
        )
    if not focal_series and need > 1:
        raise MicrographError(
            sample.source,
            f"model {card.name!r} needs a focal series of {need} frames (defocus order); "
            f"got {n} frame(s) without {flag}",
        )


def check_size(sample: Sample, card: Any, focal_series: bool) -> None:
    """Refuse an input whose pixel size is far from the model's, or that needs more
    memory than is available, before anything is resampled
    (:func:`atomfinder.detection.pipeline.size_problem`).

    Raises
    ------
    MicrographError
        Naming the input, its pixel size or the memory it needs.
    """
    from atomfinder.detection.pipeline import size_problem

    problem = size_problem(sample.data.shape, sample.sampling_A, card, focal_series=focal_series)
    if problem:
        raise MicrographError(sample.source, problem)


def check_focal_step_argument(
    focal_step_A: float | None, focal_series: bool, names: tuple[str, str] = ("focal_step_A", "focal_series")
) -> float | None:
    """The focal step a user gave, checked: a finite number of Å, and only with a focal series.

    Parameters
    ----------
    focal_step_A : float or None
        Defocus step between consecutive frames (Å, positive = underfocus).
    focal_series : bool
        Whether the input is a focal series.
    names : (str, str)
        How the user gives the step and the focal series, for messages (the Python
        keywords, or ``("--focal-step", "--focal-series")``).

    Returns
    -------
    float or None

    Raises
    ------
    ValueError
        A step that is not a finite number, or a step without a focal series.
    """
    if focal_step_A is None:
        return None
    try:
        step = float(focal_step_A)
    except (TypeError, ValueError):
        step = math.nan
    if not math.isfinite(step):
        raise ValueError(f"{names[0]} must be a number of Å (defocus step between frames), got {focal_step_A!r}")
    if not focal_series:
        raise ValueError(f"{names[0]} is the defocus step of a focal series: it needs {names[1]}")
    return step
