"""Find atoms in micrographs: the Python API (:func:`detect`) and the batch runner
behind ``atomfinder detect`` (:func:`detect_files`).

The steps, in order:

1. **Read** the input (file, array, or a HyperSpy-like signal) with its pixel size
   in Å/px; an image without one is an error, never a guess (DESIGN.md).
2. **Clean** it (:func:`clean_image`): NaN/inf pixels become the median of the
   finite pixels; dead and hot pixels (more than ``n_sigma`` robust standard
   deviations from a 3x3 median filter) become that median; a constant image is
   refused.
3. **Register** focal-series frames to the first one
   (:func:`atomfinder.detection.registration.register_focal_series`, sub-pixel phase
   correlation; the module time series use too) and check the frame count, and the
   focal step when it is given, against the model card.
4. **Detect** with :func:`atomfinder.detection.pipeline.detect_array` (resample to the
   model sampling, normalise, tiled inference, peaks).
5. **Check** each image (each frame of a stack) against the model card's validity
   range (:mod:`atomfinder.detection.validity`) and record the provenance
   (:func:`provenance`): both travel in the table's ``.attrs``, and every failed
   check is a one-line :class:`~atomfinder.detection.validity.ValidityWarning`.

:func:`detect_files` validates every input (read, calibration, frame count, unique
output names, writable output folder) before it writes anything, and then writes, per
input, ``<stem>.csv`` (atom table), ``<stem>.json`` (provenance and validity checks),
``<stem>.png`` (overlay) and optionally ``<stem>_probabilities.tif`` (at the model's
pixel size, or resampled back onto the input's pixels); the files of one input appear
together (temporary files renamed at the end, the JSON sidecar last), so an input that
fails, or a run killed at any point, leaves no file of an unfinished input behind.
:func:`existing_outputs` lists what a run would replace; with ``resume=True`` the
inputs whose outputs are all there (:func:`finished_inputs`) are skipped, so a rerun
after an interruption does only what is missing. With a ``scheduler`` address the
inputs are processed on a dask.distributed cluster (a task lost with a killed worker
is run again by the scheduler). A stack of independent frames in a ``.npy`` or TIFF
file is read frame by frame (:func:`atomfinder.detection.io.open_frames`), and its
probability maps are kept only when they are written, so a long stack needs the
memory of one frame.

Coordinates follow DESIGN.md: ``x`` = column, ``y`` = row, in pixels of the input
image (of the first frame for a registered focal series). This module never imports
the simulation stack (abTEM, ase) nor HyperSpy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from atomfinder._files import remove_stale_temporaries
from atomfinder.detection.io import (
    MIN_SIZE,
    FrameStack,
    MicrographError,
    read_micrograph,
    require_sampling,
    sampling_hint,
    write_tiff_calibrated,
)
from atomfinder.detection.registration import UPSAMPLE, register_focal_series  # noqa: F401 (re-exported)
from atomfinder.detection.resampling import probabilities_on_input_grid

__all__ = [
    "FileReport",
    "Sample",
    "check_focal_step_argument",
    "clean_image",
    "detect",
    "detect_files",
    "existing_outputs",
    "fill_nonfinite",
    "finished_inputs",
    "load_sample",
    "probabilities_on_input_grid",
    "provenance",
    "register_focal_series",
    "repair_outliers",
    "sidecar",
]

#: Robust standard deviations (1.4826 MAD) from the 3x3 median that mark a dead/hot pixel.
OUTLIER_SIGMA = 8.0
#: Relative difference of the pixel sizes of a focal series' files that is tolerated.
SAMPLING_RTOL = 1e-3
#: Grids the probability maps can be written on: the model's pixels or the input's.
PROBABILITY_GRIDS = ("model", "input")

ProgressFn = Callable[[int, int, "FileReport"], None]


# --------------------------------------------------------------------------- cleaning


def fill_nonfinite(image: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN and ±inf by the median of the finite pixels.

    Parameters
    ----------
    image : ndarray
        Any shape; pixel values in any linear unit.

    Returns
    -------
    (ndarray of float32, int)
        The filled copy and the number of pixels replaced.

    Raises
    ------
    ValueError
        When no pixel is finite.
    """
    img = np.array(image, dtype=np.float32)
    bad = ~np.isfinite(img)
    n_bad = int(bad.sum())
    if n_bad == img.size:
        raise ValueError("no finite pixel values (all NaN or infinite)")
    if n_bad:
        img[bad] = np.median(img[~bad])
    return img, n_bad


#: Compare-exchange steps of a 19-step sorting network whose 5th output (index 4)
#: is the median of 9 values (Paeth's network, as in Devillard's ``opt_med9``).
_MEDIAN9_NETWORK = (
    (1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
    (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2),
)


def median3x3(image: np.ndarray) -> np.ndarray:
    """3x3 median filter with mirrored edges, equal to
    ``scipy.ndimage.median_filter(image, size=3, mode="reflect")``.

    Runs a fixed sorting network on the nine shifted copies of the image, in
    cache-sized row blocks: ~4x faster than scipy's general rank filter (0.46 ->
    0.11 s on 2048², measured).
    """
    img = np.asarray(image)
    padded = np.pad(img, 1, mode="symmetric")  # numpy "symmetric" == scipy "reflect"
    h, w = img.shape
    out = np.empty_like(img)
    rows = max(1, (1 << 16) // max(w, 1))  # blocks of ~64k pixels stay in cache
    lo = np.empty((rows, w), dtype=img.dtype)
    for r0 in range(0, h, rows):
        n = min(rows, h - r0)
        v = [padded[r0 + i : r0 + i + n, j : j + w].copy() for i in range(3) for j in range(3)]
        tmp = lo[:n]
        for a, b in _MEDIAN9_NETWORK:
            np.minimum(v[a], v[b], out=tmp)
            np.maximum(v[a], v[b], out=v[b])
            v[a], tmp = tmp, v[a]
        out[r0 : r0 + n] = v[4]
    return out


def repair_outliers(image: np.ndarray, n_sigma: float = OUTLIER_SIGMA) -> tuple[np.ndarray, int]:
    """Replace dead and hot pixels by the median of their 3x3 neighbourhood.

    A pixel is an outlier when it differs from the 3x3 median-filtered image by more
    than ``n_sigma`` robust standard deviations of that difference (``1.4826 *`` the
    median absolute deviation; the standard deviation when the MAD is 0, as in
    low-count images that are mostly zeros). Atoms several pixels wide are barely
    changed by a 3x3 median, so they are never taken for outliers.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Finite pixel values (see :func:`fill_nonfinite`).
    n_sigma : float
        Threshold in robust standard deviations.

    Returns
    -------
    (ndarray of float32, int)
        The repaired copy and the number of pixels replaced.
    """
    img = np.array(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected an [H, W] image, got shape {img.shape}")
    return img, _repair_outliers_in_place(img, n_sigma)


def _repair_outliers_in_place(img: np.ndarray, n_sigma: float) -> int:
    """:func:`repair_outliers` on a float32 image it may overwrite; the count replaced.

    Single precision and in place, so a large image needs about three more copies of
    itself (the median-filtered image, the residual, and a copy for the median).
    """
    med = median3x3(img)
    resid = np.subtract(img, med)
    centre = np.median(resid)
    resid -= centre
    np.abs(resid, out=resid)
    sigma = 1.4826 * float(np.median(resid))
    if not sigma > 0:
        sigma = float(np.std(img - med, dtype=np.float64))
    if not sigma > 0:
        return 0
    bad = resid > n_sigma * sigma
    del resid
    img[bad] = med[bad]
    return int(bad.sum())


def clean_image(
    image: np.ndarray, source: str = "<array>", n_sigma: float = OUTLIER_SIGMA
) -> np.ndarray:
    """Make an image safe for detection: finite values, no dead/hot pixels, not constant.

    Each frame of a stack is cleaned on its own: :func:`fill_nonfinite`, then
    :func:`repair_outliers`.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (N, H, W)
        Pixel values (any linear unit).
    source : str
        Name of the input, for error messages.
    n_sigma : float
        Outlier threshold in robust standard deviations.

    Returns
    -------
    ndarray of float32, same shape
        The cleaned copy.

    Raises
    ------
    MicrographError
        A frame with no finite pixel, or a constant frame (nothing to detect).
    """
    img = np.asarray(image)
    frames = img[None] if img.ndim == 2 else img
    out = np.empty(frames.shape, dtype=np.float32) if img.ndim == 3 else None
    for i, frame in enumerate(frames):
        where = f" (frame {i})" if img.ndim == 3 else ""
        try:
            filled, _ = fill_nonfinite(frame)
        except ValueError as exc:
            raise MicrographError(source, f"{exc}{where}") from None
        low, high = float(filled.min()), float(filled.max())
        if low == high:
            raise MicrographError(
                source, f"constant image{where} (every pixel is {low:g}): nothing to detect; is it a blank frame?"
            )
        _repair_outliers_in_place(filled, n_sigma)  # filled is our own copy
        if out is None:
            return filled
        out[i] = filled
    return out


def _clean_frame(source: str) -> Callable[[np.ndarray, int], np.ndarray]:
    """``clean(frame, i)``: :func:`clean_image` of one frame of a lazily read stack (errors name the frame)."""

    def clean(frame: np.ndarray, i: int) -> np.ndarray:
        try:
            return clean_image(frame, source)
        except MicrographError as exc:
            raise MicrographError(source, f"{str(exc).removeprefix(source + ': ')} (frame {i})") from None

    return clean


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Sample:
    """One detection input: an image or stack with its pixel size.

    Attributes
    ----------
    data : ndarray of float32, shape (H, W) or (N, H, W), or FrameStack
        Cleaned pixel values (see :func:`clean_image`); a stack read lazily
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
    notes : tuple of str
        One line each about how the input was read (a given pixel size that replaces
        a different one of the file; grey stored as RGB), for the user to see.
    """

    data: np.ndarray
    sampling_A: float
    source: str
    stem: str
    sampling_source: str = "argument"
    files: tuple[str, ...] = ()
    file_sampling_A: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def n_frames(self) -> int:
        """Number of frames (1 for one image)."""
        return self.data.shape[0] if self.data.ndim == 3 else 1


def _is_signal(obj: Any) -> bool:
    """A HyperSpy signal, or any object with ``.data`` and ``.axes_manager``
    (:func:`atomfinder.detection.signals.is_signal`)."""
    from atomfinder.detection.signals import is_signal

    return is_signal(obj)


def _check_sampling_value(value: Any, source: str) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        s = float("nan")
    if not (math.isfinite(s) and s > 0):
        raise MicrographError(source, f"sampling must be a positive number of Å per pixel, got {value!r}")
    return s


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
        )
    if meta.get("colour") == "grey-rgb":
        notes.append(f"{os.fspath(path)}: grey image stored as RGB (three equal channels), read as grey")
    sampling = require_sampling(micrograph, sampling_name)
    file_sampling = meta.get("file_sampling_A")
    if sampling_A is not None and file_sampling and abs(sampling - file_sampling) > SAMPLING_RTOL * file_sampling:
        notes.append(f"{os.fspath(path)}: {sampling_name} {sampling:.4g} Å/px replaces the file's pixel size "
                     f"{file_sampling:.4g} Å/px")
    data = micrograph.data if isinstance(micrograph.data, FrameStack) else np.asarray(micrograph.data)
    return _FileRead(data, sampling, meta.get("sampling_from") == "file", file_sampling, tuple(notes))


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
                p, f"pixel size {s:.6g} Å differs from {samplings[0]:.6g} Å of {os.fspath(paths[0])}; "
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
        function they called (``"sampling"`` for :func:`detect`) or the command-line
        option. Default: ``sampling_label`` when it is an option (``--...``), else
        ``"sampling_A"``.
    series : str
        What several files form, for messages: ``"focal series"`` or ``"time series"``.
    lazy : bool
        A single multi-frame ``.npy`` or TIFF file is read and cleaned one frame at a
        time, when the frame is taken (``Sample.data`` is a FrameStack): a bad frame is
        then reported when it is reached, not here.

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
        sampling_A = _check_sampling_value(sampling_A, source or sampling_name)
    files: tuple[str, ...] = ()
    file_sampling_A: float | None = None
    notes: tuple[str, ...] = ()
    if isinstance(image, (str, os.PathLike)) or (
            isinstance(image, (list, tuple)) and image and all(isinstance(p, (str, os.PathLike)) for p in image)):
        paths = [image] if isinstance(image, (str, os.PathLike)) else list(image)
        src = source or os.fspath(paths[0])
        read = (_read_file(paths[0], sampling_A, sampling_name, lazy) if len(paths) == 1
                else _stack_files(paths, sampling_A, sampling_name, series))
        data, s, from_file = read.data, read.sampling_A, read.from_file
        file_sampling_A, notes = read.file_sampling_A, read.notes
        stem = Path(os.fspath(paths[0])).stem
        files = tuple(os.fspath(p) for p in paths)
    elif _is_signal(image):
        from atomfinder.detection.signals import signal_image, signal_sampling_A, signal_title

        title = signal_title(image)
        src = source or title or "<signal>"
        data = _check_array(signal_image(image, src), src)
        s, why = (sampling_A, None) if sampling_A is not None else signal_sampling_A(image, src)
        if s is None:
            raise MicrographError(src, f"no pixel size in the signal's axes ({why}); {sampling_hint(sampling_name)}")
        stem = "signal"
        from_file = False
    elif isinstance(image, np.ndarray) or hasattr(image, "__array__"):
        src = source or "<array>"
        data = _check_array(np.asarray(image), src)
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
    if isinstance(data, FrameStack):
        _check_input_memory(data.shape[1:], src)  # one frame at a time
        cleaned = data.with_transform(_clean_frame(src))
    else:
        _check_input_memory(np.shape(data), src)
        cleaned = clean_image(data, src)
    return Sample(data=cleaned, sampling_A=float(s), source=src, stem=stem,
                  sampling_source=origin, files=files, file_sampling_A=file_sampling_A, notes=notes)


def check_frames(sample: Sample, card: Any, focal_series: bool) -> None:
    """Refuse a frame count the model cannot use.

    A focal series needs a focal-series model (``card.in_channels`` > 1) and exactly
    ``card.in_channels`` frames (a single frame is not a series); a single image or a
    stack of independent frames needs a single-image model.

    Raises
    ------
    MicrographError
        Naming the input, its frame count and what the model needs.
    """
    need = int(card.in_channels)
    n = sample.n_frames
    if focal_series and need == 1:
        raise MicrographError(
            sample.source, f"given as a focal series (--focal-series), but model {card.name!r} takes single images, "
            "not a focal series; leave out --focal-series or use a focal-series model"
        )
    if focal_series and n == 1:
        raise MicrographError(
            sample.source, f"a single frame given as a focal series (--focal-series); model {card.name!r} needs "
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
            f"got {n} frame(s) without --focal-series",
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


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class SampleResult:
    """Everything written for one input (internal; picklable for dask)."""

    table: pd.DataFrame
    probabilities: np.ndarray | None
    height: np.ndarray | None
    overlay_image: np.ndarray
    sampling_A: float
    model_sampling_A: float
    class_names: tuple[str, ...]
    shifts_px: np.ndarray | None
    source: str
    stem: str
    n_frames: int
    provenance: dict = dataclasses.field(default_factory=dict)
    validity: dict = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()


def _effective_precision(device: Any, precision: str) -> str:
    """The arithmetic the network runs in: ``"float32"``, ``"bfloat16"`` or ``"float16"``."""
    import torch

    from atomfinder.nn.infer import autocast_dtype

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = autocast_dtype(dev, precision)
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def provenance(
    sample: Sample, card: Any, *, focal_series: bool, threshold: float | None, device: Any = None,
    precision: str = "auto", model_path: str | None = None, focal_step_A: float | None = None,
    augment: bool | None = None,
) -> dict[str, Any]:
    """What an atom table was made from and how (the ``provenance`` of DESIGN.md).

    Parameters
    ----------
    sample : Sample
        The input as read.
    card : ModelCard
        The model's card.
    focal_series : bool
        Whether the frames were used as one focal series.
    threshold : float, optional
        The threshold asked for (None: the card's).
    device, precision
        As given to the detection.
    model_path : str, optional
        The model's stem on disk, when known.
    focal_step_A : float, optional
        The focal series' defocus step between frames as given (Å), when known.
    augment : bool, optional
        Test-time augmentation as asked for (None: the card's setting).

    Returns
    -------
    dict
        ``input``, ``input_files``, ``frames``, ``focal_series``, ``focal_step_A``
        (focal series: the step given, else None), ``sampling_A``,
        ``sampling_source``, ``model`` (``name``, ``version``, ``path``,
        ``sampling_A``), ``threshold``, ``threshold_source`` (``"card"`` or
        ``"argument"``), ``min_distance_A``, ``class_log_bias`` (the card's class priors,
        or None), ``honeycomb`` (the card's sublattice rule, or None), ``test_time_augmentation``
        (whether the maps were averaged over the square's symmetries: the card's setting
        unless ``augment`` overrides it),
        ``min_confidence`` (the card's confidence floor, 0 for none), ``precision`` (the arithmetic used),
        ``precision_requested`` and ``atomfinder_version``.
    """
    from atomfinder import __version__
    from atomfinder.detection.pipeline import confidence_floor, detection_settings, uses_augmentation

    used_threshold, min_distance_A = detection_settings(card, threshold)
    return {
        "input": sample.source,
        "input_files": list(sample.files),
        "frames": sample.n_frames,
        "focal_series": bool(focal_series),
        "focal_step_A": None if focal_step_A is None else float(focal_step_A),
        "sampling_A": float(sample.sampling_A),
        "sampling_source": sample.sampling_source,
        "model": {"name": card.name, "version": card.version, "path": model_path,
                  "sampling_A": float(card.sampling_A)},
        "threshold": used_threshold,
        "threshold_source": "card" if threshold is None else "argument",
        "min_distance_A": min_distance_A,
        "min_confidence": confidence_floor(card),
        "class_log_bias": card.detection.get("class_log_bias"),
        "honeycomb": card.detection.get("honeycomb"),
        "test_time_augmentation": uses_augmentation(card, augment),
        "precision": _effective_precision(device, precision),
        "precision_requested": precision,
        "atomfinder_version": __version__,
    }


def _image_validity(
    table: pd.DataFrame, cnr: float, sample: Sample, card: Any, reference: dict, frame: int | None,
    focal_series: bool = False, focal_step_A: float | None = None,
) -> Any:
    """The validity checks of one image (or frame, or focal series), its detections and its
    contrast-to-noise ratio (and a focal series' step)."""
    from atomfinder.detection import validity

    return validity.check_image(table, reference, contrast_to_noise_ratio=cnr, sampling_A=sample.sampling_A,
                                model_sampling_A=float(card.sampling_A), source=sample.source, frame=frame,
                                focal_series=focal_series, focal_step_A=focal_step_A)


def trained_on_drift(card: Any) -> bool:
    """Whether a focal-series model learned drifting frames (its recipe's ``drift_px`` > 0).

    Such a model takes the frames as they are: registering them first was measured to
    do harm. On the MoS2 test series at 1e4 e/Å² (drift up to 4 px) phase correlation
    between frames of different defocus missed the true drift by a median 2-9 px
    (global or windowed peak, with or without smoothing): on a periodic lattice whose
    contrast changes with defocus, lattice vectors and the Mo-to-S shift correlate as
    well as the drift. A model trained on aligned frames gets them registered.
    """
    sim = (card.training or {}).get("data", {}).get("simulation", {})
    return float(sim.get("drift_px", 0.0) or 0.0) > 0.0


def _run_sample(
    net: Any, card: Any, sample: Sample, focal_series: bool, threshold: float | None, device: Any,
    precision: str = "auto", model_path: str | None = None, focal_step_A: float | None = None,
    keep_maps: bool = True, augment: bool | None = None,
) -> SampleResult:
    """Detect atoms in one validated sample, with its provenance and validity checks (a focal
    series' step, when given, is checked against the card's trained range). Frames of a stack
    are taken one at a time; without ``keep_maps`` a stack's probability and height maps are
    not kept (``None``), so that its memory is that of one frame."""
    from atomfinder.detection.pipeline import detect_array
    from atomfinder.detection.validity import card_reference, validity_record

    check_frames(sample, card, focal_series)
    check_size(sample, card, focal_series)
    shifts = None
    stack = sample.data.ndim == 3 and not focal_series
    if focal_series and sample.n_frames > 1:
        if trained_on_drift(card):
            data, shifts = np.asarray(sample.data, dtype=np.float32), np.zeros((sample.n_frames, 2))
        else:
            data, shifts = register_focal_series(np.asarray(sample.data))
        images: Any = [data]
    elif stack:
        images = sample.data  # an array or a FrameStack: frames are taken one at a time
    else:
        images = [sample.data]
    keep = keep_maps or not stack
    tables, probs, heights, cnrs = [], [], [], []
    first = None
    for image in images:
        if first is None:
            first = np.asarray(image[0] if image.ndim == 3 else image, dtype=np.float32)
        result = detect_array(net, card, image, sample.sampling_A, threshold=threshold, device=device,
                              precision=precision, augment=augment)
        tables.append(result.to_frame())
        if keep:
            probs.append(result.probabilities.astype(np.float32, copy=False))
            heights.append(result.height)
        cnrs.append(result.contrast_to_noise)
        del result
    reference = card_reference(card)
    checks = [_image_validity(t, cnr, sample, card, reference, i if stack else None, focal_series, focal_step_A)
              for i, (t, cnr) in enumerate(zip(tables, cnrs))]
    if stack:
        for i, t in enumerate(tables):
            t.insert(0, "frame", i)
        table = pd.concat(tables, ignore_index=True)
        probabilities = np.stack(probs) if keep else None
        height = None if not keep or heights[0] is None else np.stack(heights).astype(np.float32)
    else:
        table, probabilities, height = tables[0], probs[0], heights[0]
    return SampleResult(
        table=table,
        probabilities=probabilities,
        height=height,
        overlay_image=first,
        sampling_A=sample.sampling_A,
        model_sampling_A=float(card.sampling_A),
        class_names=tuple(card.class_names),
        shifts_px=shifts,
        source=sample.source,
        stem=sample.stem,
        n_frames=sample.n_frames,
        provenance=provenance(sample, card, focal_series=focal_series, threshold=threshold, device=device,
                              precision=precision, model_path=model_path, focal_step_A=focal_step_A,
                              augment=augment),
        validity=validity_record(checks),
        notes=sample.notes,
    )


def _with_attrs(table: pd.DataFrame, res: SampleResult) -> pd.DataFrame:
    """The table carrying its provenance and validity in ``.attrs``."""
    table.attrs["provenance"] = res.provenance
    table.attrs["validity"] = res.validity
    return table


def _check_threshold(threshold: float | None) -> None:
    if threshold is not None and not (0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"threshold must be a probability between 0 and 1, got {threshold}")


def _load(model: Any, device: Any = None) -> tuple[Any, Any, str | None]:
    """``(net, card, stem)`` from a name, a path, or an already loaded ``(net, card)`` pair
    (whose stem is unknown: None)."""
    from atomfinder.nn.card import load_model, resolve_model

    if isinstance(model, tuple) and len(model) == 2:
        return model[0], model[1], None
    stem = resolve_model(model)
    net, card = load_model(stem, device=device or "cpu")
    return net, card, str(stem)


def detect(
    image: Any,
    model: Any = "graphene",
    sampling: float | None = None,
    *,
    focal_series: bool = False,
    threshold: float | None = None,
    device: Any = None,
    precision: str = "auto",
    focal_step_A: float | None = None,
    augment: bool | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Find atoms in a micrograph.

    Parameters
    ----------
    image : str, path, sequence of paths, ndarray or HyperSpy-like signal
        A micrograph file; an array ``[H, W]`` or ``[N, H, W]`` (needs
        ``sampling``); a HyperSpy ``Signal2D`` (pixel size from its signal axes'
        ``scale`` and ``units``); or, with ``focal_series=True``, several
        single-image files in defocus order.
    model : str, path or (net, card)
        A shipped model's name, a path to ``<stem>.safetensors``/``.json``, or a
        model already loaded with :func:`atomfinder.nn.card.load_model`.
    sampling : float, optional
        Pixel size in Å/px; overrides the file's calibration.
    focal_series : bool
        The frames are one sample at several defoci (in the model card's order,
        ``validity["focal_order"]``: increasing underfocus for the simulations of
        ``atomfinder simulate``): they are registered to the first frame
        (:func:`atomfinder.detection.registration.register_focal_series`) and fed to
        the model together. Their number must equal the card's ``in_channels``; a
        single frame, or a single-image model, is refused. **All coordinates are in
        the first frame's pixel grid.**
    threshold : float, optional
        Smallest atom probability (default: the card's value, else 0.5).
    device : str or torch.device, optional
        Inference device (default CUDA when available, else CPU).
    precision : {"auto", "float32", "bfloat16", "float16"}
        Network arithmetic: ``"auto"`` is bfloat16 on CPUs with native support,
        float16 on CUDA, else float32.
    focal_step_A : float, optional
        Focal series only: the defocus step between consecutive frames (Å, positive
        = each frame more underfocused than the one before). A step outside the
        range the model was trained on (``validity["focal_step_A"]`` of its card), or
        of the wrong sign, gives a one-line validity warning (check ``focal_step``).
    augment : bool, optional
        Test-time augmentation: average the network's maps over the image turned by
        quarter turns and mirrored (eight views, eight times the network time). Default:
        the model card's ``detection.test_time_augmentation``; ``False`` trades it for
        speed (the card's confidence was fitted with its own setting).

    Returns
    -------
    Detection (a ``(DataFrame, dict)`` tuple)
        Unpacks as ``table, info``; it also draws itself (``.plot()`` returns a
        matplotlib Figure, Jupyter shows a thumbnail and a summary; see
        :class:`atomfinder.detection.overlay.Detection`).
        The atom table (columns ``x, y, x_angstrom, y_angstrom, label,
        probability, height``, and ``confidence, sigma_angstrom`` when the model
        is calibrated; a stack of independent frames gets a leading
        ``frame`` column) with positions in pixels of the input (of the first frame
        for a focal series: its first frame's pixel grid), and a dict with ``"probabilities"`` (float32
        ``[k, h, w]`` at the model sampling, class 0 = background; ``[N, k, h, w]``
        for a stack), ``"height"`` (float32 ``[h, w]`` / ``[N, h, w]`` or None),
        ``"sampling_A"`` (input Å/px), ``"model_sampling_A"`` (Å/px of the maps),
        ``"class_names"``, ``"shifts_px"`` (focal series: ``(dy, dx)`` applied
        to each frame, else None), ``"provenance"`` and ``"validity"``. The table's
        ``.attrs`` carry the same ``"provenance"`` (input, pixel size and its
        source, model name/version/path, threshold, precision, atomfinder version;
        :func:`provenance`) and ``"validity"`` (the per-image checks of
        :mod:`atomfinder.detection.validity`, per frame for a stack).

    Warns
    -----
    ValidityWarning
        One per failed validity check (one line naming the input; for a stack, one
        per check listing the frames).

    Raises
    ------
    MicrographError (a ValueError)
        Unreadable or unusable input, no pixel size, wrong frame count, a focal series
        of one frame or given to a single-image model.
    ValueError
        Unknown model (the message lists the shipped ones), bad threshold or precision,
        a focal step without ``focal_series``.
    """
    from atomfinder.detection.validity import warn
    from atomfinder.nn.infer import check_precision  # imports torch, which detection needs anyway

    _check_threshold(threshold)
    check_precision(precision)
    focal_step_A = check_focal_step_argument(focal_step_A, focal_series)
    sample = load_sample(image, sampling, sampling_name="sampling")
    net, card, stem = _load(model, device)
    res = _run_sample(net, card, sample, focal_series, threshold, device, precision, model_path=stem,
                      focal_step_A=focal_step_A, augment=augment)
    warn(res.validity["warnings"])
    info = {
        "probabilities": res.probabilities,
        "height": res.height,
        "sampling_A": res.sampling_A,
        "model_sampling_A": res.model_sampling_A,
        "class_names": res.class_names,
        "shifts_px": res.shifts_px,
        "provenance": res.provenance,
        "validity": res.validity,
    }
    from atomfinder.detection.overlay import Detection

    shown = sample.data if sample.data.ndim == 3 and not focal_series else res.overlay_image
    calibration = None
    if _is_signal(image):
        from atomfinder.detection.signals import signal_calibration

        calibration = signal_calibration(image)
    return Detection(_with_attrs(res.table, res), info, image=shown, signal_calibration=calibration)


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class FileReport:
    """What :func:`detect_files` did with one input.

    Attributes
    ----------
    source : str
        The input (first file of a multi-file focal series).
    stem : str
        Base name of the outputs.
    n_atoms : int
        Rows of the atom table (all frames of a stack).
    n_frames : int
        Frames in the input.
    outputs : tuple of Path
        Files written.
    warnings : tuple of str
        One line per failed validity check (see :mod:`atomfinder.detection.validity`).
    sampling_A : float or None
        Pixel size used, in Å/px.
    sampling_source : str
        Where it came from (:attr:`Sample.sampling_source`: ``"file"``, ``"--sampling"``, ...).
    notes : tuple of str
        One line each about how the input was read (:attr:`Sample.notes`).
    """

    source: str
    stem: str
    n_atoms: int
    n_frames: int
    outputs: tuple[Path, ...]
    warnings: tuple[str, ...] = ()
    sampling_A: float | None = None
    sampling_source: str = ""
    notes: tuple[str, ...] = ()


def _groups(paths: Sequence[str | os.PathLike[str]], focal_series: bool) -> list[tuple[str, ...]]:
    """Inputs as samples: one per file, or all files as one focal series."""
    items = tuple(os.fspath(p) for p in paths)
    if not items:
        raise ValueError("no input files given")
    if focal_series and len(items) > 1:
        return [items]
    return [(p,) for p in items]


def _check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder that cannot be created or written (creates nothing)."""
    probe = out_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ValueError(f"{out_dir}: cannot be an output directory ({probe} is a file)")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "output directory" if probe == out_dir else f"output directory (cannot create it in {probe})"
        raise ValueError(f"{out_dir}: {what} is not writable")


def _outputs(out_dir: Path, stem: str, probabilities: bool, overlay_format: str = "png") -> list[Path]:
    """``<stem>.csv``, ``<stem>.json``, ``<stem>.<overlay_format>`` and optionally ``<stem>_probabilities.tif``."""
    names = [f"{stem}.csv", f"{stem}.json", f"{stem}.{overlay_format}"] + (
        [f"{stem}_probabilities.tif"] if probabilities else [])
    return [out_dir / n for n in names]


def existing_outputs(
    paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *, focal_series: bool = False,
    probabilities: bool = False, overlay_format: str = "png",
) -> list[Path]:
    """The files of ``out_dir`` that :func:`detect_files` would replace (reads no input).

    Parameters
    ----------
    paths, out_dir, focal_series, probabilities
        As given to :func:`detect_files`.
    overlay_format : str
        Suffix of the overlay (``OverlayStyle.format``).

    Returns
    -------
    list of Path
        Existing ``<stem>.csv``, ``.json``, ``.png`` (and ``_probabilities.tif``) of
        the inputs, in input order; empty when nothing would be replaced.
    """
    return [p for _, outputs in _outputs_by_input(paths, out_dir, focal_series, probabilities, overlay_format)
            for p in outputs if p.exists()]


def finished_inputs(
    paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *, focal_series: bool = False,
    probabilities: bool = False, overlay_format: str = "png",
) -> list[tuple[str, ...]]:
    """The inputs whose outputs are all in ``out_dir`` (what ``resume=True`` skips; reads no input).

    The files of one input are published together with the JSON sidecar last, so an
    input with every output present was finished; one with only some of them was
    interrupted while they were renamed into place and is done again.

    Parameters
    ----------
    paths, out_dir, focal_series, probabilities
        As given to :func:`detect_files`.
    overlay_format : str
        Suffix of the overlay (``OverlayStyle.format``).

    Returns
    -------
    list of tuple of str
        The finished inputs (groups of files for a focal series), in input order.
    """
    return [group for group, outputs in _outputs_by_input(paths, out_dir, focal_series, probabilities, overlay_format)
            if all(p.exists() for p in outputs)]


def _outputs_by_input(paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], focal_series: bool,
                      probabilities: bool, overlay_format: str) -> list[tuple[tuple[str, ...], list[Path]]]:
    """Each input (a group of files for a focal series) with the output files :func:`detect_files` gives it."""
    out = Path(out_dir)
    return [(group, _outputs(out, Path(group[0]).stem, probabilities, overlay_format))
            for group in _groups(paths, focal_series)]


def sidecar(res: SampleResult, table_name: str) -> dict[str, Any]:
    """The JSON sidecar of an atom table: its provenance and validity checks.

    Parameters
    ----------
    res : SampleResult
        The detection result.
    table_name : str
        File name of the atom table it describes.

    Returns
    -------
    dict
        ``{"atom_table": name, "columns": [...], "rows": n, "provenance": {...},
        "validity": {...}}``.
    """
    return {"atom_table": table_name, "columns": [str(c) for c in res.table.columns], "rows": int(len(res.table)),
            "provenance": res.provenance, "validity": res.validity}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    import json

    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, allow_nan=False, ensure_ascii=False)
        f.write("\n")


def _validate(
    groups: list[tuple[str, ...]], card: Any, sampling_A: float | None, focal_series: bool,
    sampling_label: str = "argument",
) -> None:
    """Read every input and check it against the model before anything is written."""
    stems: dict[str, str] = {}
    for group in groups:
        sample = load_sample(list(group), sampling_A, sampling_label=sampling_label, lazy=True)
        check_frames(sample, card, focal_series)
        check_size(sample, card, focal_series)
        if sample.stem in stems:
            raise MicrographError(
                group[0], f"has the same name as {stems[sample.stem]}; their outputs {sample.stem}.* would collide"
            )
        stems[sample.stem] = group[0]


def _check_distinct_stems(groups: list[tuple[str, ...]]) -> None:
    """Refuse inputs whose outputs would have the same names (reads no input)."""
    stems: dict[str, str] = {}
    for group in groups:
        stem = Path(group[0]).stem
        if stem in stems:
            raise MicrographError(
                group[0], f"has the same name as {stems[stem]}; their outputs {stem}.* would collide")
        stems[stem] = group[0]


def _temp_beside(final: Path) -> Path:
    """An empty, uniquely named temporary file beside ``final``, created with the
    permissions a new file gets here (0o666 less the umask), unlike ``mkstemp``'s 0o600."""
    for _ in range(100):
        name = final.parent / f".{final.name}.{secrets.token_hex(4)}.partial{final.suffix}"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return name
    raise FileExistsError(f"{final}: cannot create a temporary file beside it")


def _publish(tmp: Path, final: Path, mode: int) -> None:
    """Rename ``tmp`` onto ``final`` with permission bits ``mode``.

    Writers that stage through ``mkstemp`` (0o600) may have replaced ``tmp``; the
    mode recorded when ``tmp`` was created is restored.
    """
    os.chmod(tmp, mode)
    os.replace(tmp, final)


def write_probabilities_tiff(path: str | os.PathLike[str], probabilities: np.ndarray, sampling_A: float) -> Path:
    """Write probability maps as a calibrated float32 ImageJ TIFF (atomically).

    Parameters
    ----------
    path : path
        Destination ``.tif``.
    probabilities : ndarray, shape (k, h, w) or (N, k, h, w)
        Per-class maps (class 0 = background); a 4-D array (a stack of frames) is
        written as an ImageJ hyperstack with axes ``TCYX``.
    sampling_A : float
        Pixel size of the maps in Å/px.
    """
    data = np.ascontiguousarray(probabilities, dtype=np.float32)
    if data.ndim in (2, 3):
        return write_tiff_calibrated(path, data, sampling_A)
    if data.ndim != 4:
        raise ValueError(f"{path}: probabilities must be [k, h, w] or [N, k, h, w], got {data.shape}")
    import tifffile

    target = Path(path)
    tmp = _temp_beside(target)
    try:
        ppa = 1.0 / float(sampling_A)
        tifffile.imwrite(tmp, data, imagej=True, resolution=(ppa, ppa),
                         metadata={"unit": "\\u00C5", "axes": "TCYX"})
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _write_result(
    res: SampleResult, out_dir: Path, probabilities: bool, model_name: str, grid: str = "model",
    overlay: Any = None,
) -> FileReport:
    """Write the outputs of one input: all appear, or none; the probability maps on the
    ``grid`` of the model or of the input, the overlay in the :class:`OverlayStyle` ``overlay``."""
    from atomfinder.detection.overlay import OverlayStyle, overlay_figure

    overlay = overlay or OverlayStyle()
    out_dir.mkdir(parents=True, exist_ok=True)
    finals = _outputs(out_dir, res.stem, probabilities, overlay.format)
    staged: list[tuple[Path, Path]] = []
    mode = 0o644
    try:
        csv_tmp = _temp_beside(finals[0])
        staged.append((csv_tmp, finals[0]))
        mode = os.stat(csv_tmp).st_mode & 0o777
        res.table.to_csv(csv_tmp, index=False, float_format="%.4f")
        json_tmp = _temp_beside(finals[1])
        staged.append((json_tmp, finals[1]))
        _write_json(json_tmp, sidecar(res, finals[0].name))
        png_tmp = _temp_beside(finals[2])
        staged.append((png_tmp, finals[2]))
        frame_note = f", frame 0 of {res.n_frames}" if res.n_frames > 1 and "frame" in res.table else ""
        table0 = res.table[res.table["frame"] == 0] if "frame" in res.table else res.table
        title = f"{len(table0)} atoms{frame_note} (model {model_name}, {res.sampling_A:.4g} Å/px)"
        overlay_figure(res.overlay_image, table0, res.class_names, res.sampling_A, png_tmp,
                       title=overlay.figure_title(title), **overlay.options())
        if probabilities:
            tif_tmp = _temp_beside(finals[3])
            staged.append((tif_tmp, finals[3]))
            if grid == "input":
                maps = probabilities_on_input_grid(res.probabilities, res.model_sampling_A, res.sampling_A,
                                                   res.overlay_image.shape[-2:])
                write_probabilities_tiff(tif_tmp, maps, res.sampling_A)
            else:
                write_probabilities_tiff(tif_tmp, res.probabilities, res.model_sampling_A)
        for tmp, final in sorted(staged, key=lambda pair: pair[1] == finals[1]):  # the sidecar last
            _publish(tmp, final, mode)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    return FileReport(source=res.source, stem=res.stem, n_atoms=len(res.table), n_frames=res.n_frames,
                      outputs=tuple(finals), warnings=tuple(res.validity.get("warnings", ())),
                      sampling_A=res.sampling_A, sampling_source=str(res.provenance.get("sampling_source", "")),
                      notes=res.notes)


@functools.lru_cache(maxsize=2)
def _cached_model(model_path: str) -> tuple[Any, Any]:
    """A worker's model, loaded once per process (CPU; moved by inference as needed)."""
    from atomfinder.nn.card import load_model

    return load_model(model_path)


def _remote_task(
    group: tuple[str, ...], model_path: str, sampling_A: float | None, focal_series: bool,
    threshold: float | None, keep_probabilities: bool, precision: str = "auto",
    sampling_label: str = "argument", focal_step_A: float | None = None, augment: bool | None = None,
) -> SampleResult:
    """One input on a dask worker: load the model (cached), read, detect.

    Errors come back as plain ``ValueError`` with the one-line message
    (``MicrographError`` cannot be unpickled on the client).
    """
    try:
        net, card = _cached_model(model_path)
        sample = load_sample(list(group), sampling_A, sampling_label=sampling_label, lazy=True)
        res = _run_sample(net, card, sample, focal_series, threshold, None, precision, model_path=model_path,
                          focal_step_A=focal_step_A, keep_maps=keep_probabilities, augment=augment)
    except (ValueError, OSError) as exc:
        raise ValueError(str(exc)) from None
    if not keep_probabilities:
        res = dataclasses.replace(res, probabilities=None, height=None)
    return res


def _run_distributed(
    groups: list[tuple[str, ...]], model_path: str, scheduler: Any, out_dir: Path, *,
    sampling_A: float | None, focal_series: bool, probabilities: bool, threshold: float | None,
    model_name: str, report: Callable[[FileReport], None], precision: str = "auto", overlay: Any = None,
    sampling_label: str = "argument", grid: str = "model", focal_step_A: float | None = None,
    augment: bool | None = None,
) -> None:
    """Send inputs to a dask.distributed cluster; write results as they complete."""
    from distributed import Client, as_completed

    if isinstance(scheduler, Client):
        client, own = scheduler, False
    else:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ValueError(f"cannot connect to the dask scheduler {scheduler}: {exc}") from None
        own = True
    try:
        futures = client.map(
            _remote_task, groups, model_path=model_path, sampling_A=sampling_A, focal_series=focal_series,
            threshold=threshold, keep_probabilities=probabilities, precision=precision,
            sampling_label=sampling_label, focal_step_A=focal_step_A, augment=augment, pure=False,
        )
        try:
            for future in as_completed(futures):
                report(_write_result(future.result(), out_dir, probabilities, model_name, grid, overlay))
        except BaseException:
            client.cancel(futures)
            raise
    finally:
        if own:
            client.close()


def detect_files(
    paths: Sequence[str | os.PathLike[str]],
    model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    sampling_A: float | None = None,
    focal_series: bool = False,
    probabilities: bool = False,
    threshold: float | None = None,
    progress: ProgressFn | None = None,
    scheduler: Any = None,
    precision: str = "auto",
    sampling_label: str = "argument",
    probabilities_grid: str = "model",
    focal_step_A: float | None = None,
    resume: bool = False,
    overlay: Any = None,
    augment: bool | None = None,
) -> list[Path]:
    """Find atoms in micrograph files and write a table and an overlay for each.

    For each input (``<stem>`` = its file name without extension) writes
    ``<out_dir>/<stem>.csv`` (atom table, DESIGN.md columns; a ``frame`` column for a
    stack of independent frames), ``<out_dir>/<stem>.json`` (provenance and
    validity checks, :func:`sidecar`), ``<out_dir>/<stem>.png`` (overlay of the first
    frame) and, with ``probabilities``, ``<out_dir>/<stem>_probabilities.tif``
    (float32 ``[k, h, w]`` at the model sampling, class 0 = background; ``[N, k, h,
    w]`` as an ImageJ hyperstack for a stack; calibrated in Å; with
    ``probabilities_grid="input"`` resampled onto the input's pixels,
    :func:`probabilities_on_input_grid`). Existing files are replaced (see
    :func:`existing_outputs`), unless ``resume`` skips their input.

    Every input is read and checked (calibration, frame count, distinct output
    names) and the output folder's writability is checked before anything is
    written; the files of one input are renamed into place together, the JSON
    sidecar last, so that a run killed at any point leaves every input either with
    all its outputs or with none that a rerun with ``resume`` would keep. A stack of
    independent frames in one ``.npy`` or TIFF file is read and detected frame by
    frame (:func:`load_sample` with ``lazy=True``); its frames are checked when they
    are reached.

    Parameters
    ----------
    paths : sequence of paths
        Micrograph files. With ``focal_series``: one multi-frame file, or several
        single-image files in defocus order, which are stacked into one series
        (named after the first; a multi-frame file among several is refused).
    model : str or path
        Shipped model name or path to ``<stem>.safetensors``/``.json``.
    out_dir : path
        Output folder (created if missing).
    sampling_A : float, optional
        Pixel size in Å/px for all inputs; overrides the files' calibration.
    focal_series : bool
        Frames form a focal series (registered to the first frame, then fed to the
        model together; coordinates are in the first frame's pixel grid); their
        number must equal the card's ``in_channels`` (see :func:`detect`).
    probabilities : bool
        Also write the probability maps.
    threshold : float, optional
        Smallest atom probability (default: the card's, else 0.5).
    progress : callable, optional
        ``progress(done, total, report)`` after each input, with its
        :class:`FileReport`.
    scheduler : str or distributed.Client, optional
        A dask.distributed scheduler address (``tcp://host:8786``) or client: each
        input becomes a task that loads the model from its path (which workers must
        be able to read, as the inputs); results are written here as they complete.
    precision : {"auto", "float32", "bfloat16", "float16"}
        Network arithmetic (see :func:`detect`).
    sampling_label : str
        How a given ``sampling_A`` is named in the provenance (``"argument"``; the
        command line passes ``"--sampling"``) and, when it is an option, in messages.
    probabilities_grid : {"model", "input"}
        Grid of the written probability maps: the model's pixel size (as inferred) or
        the input image's pixels.
    focal_step_A : float, optional
        Focal series only: the defocus step between frames (Å, positive =
        underfocus), checked against the card's trained range (see :func:`detect`).
    resume : bool
        Continue an interrupted run: inputs whose outputs are all in ``out_dir``
        (:func:`finished_inputs`) are skipped (neither read nor written), the others
        are done (again), and temporary files a killed run left beside their outputs
        are removed. ``progress`` counts the skipped inputs as done.
    overlay : OverlayStyle, optional
        Format (PNG, SVG, PDF), dpi, colouring, marker size and title of the overlay
        (:class:`atomfinder.detection.overlay.OverlayStyle`; default: a 150-dpi PNG
        coloured by class, or by height for a model with a height head).
    augment : bool, optional
        Test-time augmentation (see :func:`detect`; default: the card's setting).

    Returns
    -------
    list of Path
        The files written, input by input (in completion order with a scheduler);
        not those of skipped inputs.

    Warns
    -----
    ValidityWarning
        One per failed validity check of an input (also in :attr:`FileReport.warnings`).

    Raises
    ------
    MicrographError (a ValueError)
        An unreadable or unusable input (the message names it and the problem).
    ValueError
        Unknown model (lists the shipped ones), unwritable output folder, bad
        threshold or precision, unreachable scheduler.
    """
    from atomfinder.detection.validity import warn
    from atomfinder.nn.card import load_model, resolve_model
    from atomfinder.nn.infer import check_precision

    _check_threshold(threshold)
    check_precision(precision)
    if probabilities_grid not in PROBABILITY_GRIDS:
        raise ValueError(f"probabilities grid must be one of {', '.join(PROBABILITY_GRIDS)}, got {probabilities_grid!r}")
    if sampling_A is not None:
        sampling_A = _check_sampling_value(
            sampling_A, sampling_label if sampling_label.startswith("--") else "sampling_A")
    cli = sampling_label.startswith("--")
    focal_step_A = check_focal_step_argument(
        focal_step_A, focal_series, ("--focal-step", "--focal-series") if cli else ("focal_step_A", "focal_series"))
    groups = _groups(paths, focal_series)
    from atomfinder.detection.overlay import OverlayStyle

    overlay = overlay or OverlayStyle()
    stem = resolve_model(model)
    net, card = load_model(stem)
    if overlay.colour_by == "height" and not card.architecture.get("height_head"):
        raise ValueError(f"model {card.name} predicts no column heights: the overlay cannot be coloured by height")
    out = Path(out_dir)
    _check_out_dir(out)
    todo = groups
    if resume:
        _check_distinct_stems(groups)
        done = set(finished_inputs(paths, out, focal_series=focal_series, probabilities=probabilities,
                                   overlay_format=overlay.format))
        todo = [g for g in groups if g not in done]
    _validate(todo, card, sampling_A, focal_series, sampling_label)
    if resume:
        remove_stale_temporaries(*(f for g in todo for f in _outputs(out, Path(g[0]).stem, probabilities,
                                                                      overlay.format)))
    skipped = len(groups) - len(todo)

    written: list[Path] = []
    reports: list[FileReport] = []

    def report(rep: FileReport) -> None:
        written.extend(rep.outputs)
        reports.append(rep)
        warn(rep.warnings, stacklevel=4)
        if progress is not None:
            progress(skipped + len(reports), len(groups), rep)

    if scheduler is not None:
        _run_distributed(
            todo, str(stem), scheduler, out, sampling_A=sampling_A, focal_series=focal_series,
            probabilities=probabilities, threshold=threshold, model_name=card.name, report=report,
            precision=precision, sampling_label=sampling_label, grid=probabilities_grid, focal_step_A=focal_step_A,
            overlay=overlay, augment=augment,
        )
        return written
    for group in todo:
        sample = load_sample(list(group), sampling_A, sampling_label=sampling_label, lazy=True)
        res = _run_sample(net, card, sample, focal_series, threshold, None, precision, model_path=str(stem),
                          focal_step_A=focal_step_A, keep_maps=probabilities, augment=augment)
        del sample
        report(_write_result(res, out, probabilities, card.name, probabilities_grid, overlay))
    return written
