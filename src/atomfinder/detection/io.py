"""Read HRTEM micrographs together with their pixel size, and write calibrated TIFFs.

Vendor formats are decoded by maintained libraries, never by hand-written
parsers: Gatan DM3/DM4 (``rsciio.digitalmicrograph``), Velox and NCEM EMD
(``rsciio.emd``, needs ``h5py``), FEI TIA SER/EMI (``rsciio.tia``), MRC
(``rsciio.mrc``), TIFF (``rsciio.tiff`` for the data and the DM/FEI/Zeiss/...
tags, ``tifffile`` for ImageJ units other than µm and for OME-XML), PNG/JPEG
(``imageio``) and NPY (``numpy``).

Policy
------
* Every image becomes ``float32``: ``[H, W]`` for one image, ``[N, H, W]`` for a
  stack (time or focal series, in file order). RGB(A) is converted to grey
  (ITU-R BT.709 luma, as ``skimage.color.rgb2gray``) and recorded as such
  (``metadata["colour"]``: ``"rgb"``, or ``"grey-rgb"`` when the three channels
  are equal), so that detection can refuse a colour screenshot; complex data is
  refused.
* The pixel size is converted to Å (units m, cm, mm, µm/um/micron, nm, Å/A,
  pm). A scale with no or an unknown unit, a non-positive or non-finite scale
  (the MRC header of some cameras says -1 nm), an MRC header whose sampling
  ``MX``/``MY`` is 0 (pixel size = cell / sampling) and the resolution tags of a
  plain TIFF (usually 72 dpi) mean *no calibration*, never 1 Å/px. A reciprocal unit
  (``1/nm``: a diffraction pattern or FFT) is an error, and so are non-square
  pixels, also with a ``sampling_A`` (one size cannot describe them): the image
  must be resampled first. A ``sampling_A`` given by the user overrides the file.
* :func:`read_micrograph` accepts uncalibrated files (``sampling_A is None``);
  code that needs physical units calls :func:`require_sampling`, which raises
  the one-line error that tells the user to pass ``--sampling`` (or the keyword
  the caller names). Keeping the
  two apart lets previews and format checks read any image, while detection
  can never silently guess a pixel size.
* Every failure is a :class:`MicrographError` (a ``ValueError``) with a
  one-line message that starts with the path and says what is wrong and, where
  it helps, what to do.
* Damaged files must not hang, crash or exhaust the machine (found by fuzzing,
  ``tests/test_fuzz.py``): readers whose library can loop forever on one (HDF5:
  EMD; DigitalMicrograph DM3/DM4) run in a child process killed after :func:`read_timeout_s`; an MRC header
  that declares more data than the file holds is refused before reading; running
  out of memory while reading is a :class:`MicrographError` too.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import unicodedata
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from atomfinder._files import atomic_write

__all__ = [
    "LAZY_READERS",
    "MIN_SIZE",
    "SUPPORTED_EXTENSIONS",
    "FrameStack",
    "Micrograph",
    "MicrographError",
    "read_micrograph",
    "require_sampling",
    "sampling_hint",
    "unit_to_angstrom",
    "write_tiff_calibrated",
]

#: Smallest image side (pixels) that can hold atoms; ``read_micrograph(min_size=...)``.
MIN_SIZE = 16

#: File extension (lower case) -> reader name.
SUPPORTED_EXTENSIONS: dict[str, str] = {
    ".dm3": "digitalmicrograph",
    ".dm4": "digitalmicrograph",
    ".emd": "emd",
    ".ser": "tia",
    ".emi": "tia",
    ".mrc": "mrc",
    ".mrcs": "mrc",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".png": "image",
    ".jpg": "image",
    ".jpeg": "image",
    ".npy": "npy",
}

_FORMAT_NAMES = {
    "digitalmicrograph": "Gatan DigitalMicrograph",
    "emd": "EMD (Velox/NCEM)",
    "tia": "FEI TIA SER/EMI",
    "mrc": "MRC",
    "tiff": "TIFF",
    "image": "PNG/JPEG",
    "npy": "NumPy .npy",
}
#: Readers whose format name is said with "an" (an EMD, an FEI, an MRC file).
_AN_FORMATS = frozenset({"emd", "tia", "mrc"})

# Length units -> Å per unit; keys are normalised by `_normalise_unit`.
_ANGSTROM_PER_UNIT: dict[str, float] = {
    "m": 1e10, "meter": 1e10, "metre": 1e10,
    "cm": 1e8, "centimeter": 1e8, "centimetre": 1e8,
    "mm": 1e7, "millimeter": 1e7, "millimetre": 1e7,
    "μm": 1e4, "um": 1e4, "micron": 1e4, "microns": 1e4,
    "micrometer": 1e4, "micrometre": 1e4,
    "nm": 10.0, "nanometer": 10.0, "nanometre": 10.0,
    "å": 1.0, "a": 1.0, "ang": 1.0, "angstrom": 1.0, "ångström": 1.0, "ångstrom": 1.0,
    "pm": 0.01, "picometer": 0.01, "picometre": 0.01,
}
# Units that say "pixels, not calibrated".
_NO_UNITS = {"", "px", "pixel", "pixels", "<auto>", "none", "unknown", "[]"}

#: Leading bytes -> reader, for files whose content is not what their extension says.
_MAGIC: dict[bytes, str] = {
    b"II*\0": "tiff", b"MM\0*": "tiff", b"II+\0": "tiff", b"MM\0+": "tiff",  # TIFF, BigTIFF
    b"\x89PNG\r\n\x1a\n": "image", b"\xff\xd8\xff": "image",  # PNG, JPEG
}

_LUMA = np.array([0.2125, 0.7154, 0.0721])  # ITU-R BT.709, as skimage.color.rgb2gray


class MicrographError(ValueError):
    """A micrograph cannot be read or used; the message is one line naming the file."""

    def __init__(self, source: str | os.PathLike[str], problem: str) -> None:
        message = f"{os.fspath(source)}: {problem}"
        super().__init__(" ".join(message.split()))  # one line, always


class _FileProblem(ValueError):
    """What a reader found wrong with a file, said in full: :func:`read_micrograph` reports
    it as it is, not as "cannot read it as ... (reason); it may be truncated ..."."""


def _reader_by_content(path: Path) -> str | None:
    """The reader that the file's first bytes name (TIFF, PNG, JPEG), or None.

    Those signatures cannot begin a DM3/DM4 (a version number), EMD (HDF5), TIA
    (``II`` then 0x0197), MRC (an ``NX`` of millions) or NPY file.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    return next((reader for magic, reader in _MAGIC.items() if head.startswith(magic)), None)


def _one_line_reason(exc: BaseException) -> str:
    """A library's exception as at most 160 characters on one line (its type name when it says nothing)."""
    return " ".join(str(exc).split())[:160] or type(exc).__name__


@dataclass(frozen=True, eq=False)
class Micrograph:
    """An image or image stack with its pixel size.

    Attributes
    ----------
    data : ndarray of float32, shape (H, W) or (N, H, W)
        Pixel values, rows first; a stack holds N frames (time or focal series)
        in file order. The array is read-only: copy it before changing it.
    sampling_A : float or None
        Pixel size in Å per pixel, from the file or from the user; ``None`` when
        neither gave one (see :func:`require_sampling`).
    source : str
        The path as given to :func:`read_micrograph`.
    metadata : dict
        Small, JSON-able facts: ``format`` (the reader) and ``format_name``,
        ``dtype`` and ``shape`` in the file,
        ``unit`` and ``scale`` of the file's calibration as written there,
        ``file_sampling_A``, ``calibration_source`` (where in the file it was
        found: ``"TIFF metadata"``, ``"ImageJ metadata"``, ...; ``None`` without
        one), ``sampling_from`` (``"file"``, ``"user"`` or ``None``),
        ``calibration_note`` (why the file's calibration was not used, or
        ``None``), ``colour`` (``None`` for a grey image, ``"rgb"`` for a
        colour one, ``"grey-rgb"`` for grey stored as RGB with equal channels) and
        ``notes`` (one line each on what was doubtful in reading it: which of
        several images was read, ...).
    """

    data: np.ndarray
    sampling_A: float | None
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def is_stack(self) -> bool:
        """True for an ``[N, H, W]`` stack."""
        return self.data.ndim == 3

    @property
    def n_frames(self) -> int:
        """Number of frames (1 for a single image)."""
        return self.data.shape[0] if self.data.ndim == 3 else 1


class FrameStack:
    """A stack of frames ``[N, H, W]`` read (and transformed) one frame at a time.

    ``read_micrograph(..., lazy=True)`` returns one for a multi-frame ``.npy`` or TIFF
    file, so that a long series is never held in memory whole: ``stack[i]`` reads
    frame ``i`` from the file (a memory map, or one TIFF page), as float32, through
    the optional ``transform(frame, i)`` (the detection's cleaning).

    Parameters
    ----------
    frames : array-like, shape (N, H, W)
        Anything whose ``frames[i]`` is one frame: a ``numpy.memmap``, a dask array,
        or a :class:`_TiffPages` reader.
    transform : callable, optional
        ``transform(frame, i) -> ndarray`` applied to each frame read.
    source : str, optional
        The file, for errors: a frame that cannot be read (a damaged page, a file
        truncated after it was opened) raises a one-line :class:`MicrographError`
        naming it and the frame.
    """

    ndim = 3
    dtype = np.dtype(np.float32)

    def __init__(self, frames: Any, transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
                 source: str = "<stack>") -> None:
        self._frames = frames
        self._transform = transform
        self._source = source
        self.shape = tuple(int(n) for n in frames.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"frame {i} of a stack of {len(self)}")
        i %= len(self)
        try:
            frame = np.ascontiguousarray(np.asarray(self._frames[i]), dtype=np.float32)
            if frame.shape != self.shape[1:]:
                raise ValueError(f"frame of shape {frame.shape} in a stack of {self.shape[1:]} frames")
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a lazily read stack fails only when a frame is read
            reason = _one_line_reason(exc)
            raise MicrographError(
                self._source, f"cannot read frame {i} ({reason}); the file may be truncated or damaged"
            ) from exc
        return frame if self._transform is None else self._transform(frame, i)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """All frames at once (what the lazy reading avoids; for callers that need an array)."""
        out = np.stack(list(self))
        return out if dtype is None else out.astype(dtype)

    def with_transform(self, transform: Callable[[np.ndarray, int], np.ndarray]) -> "FrameStack":
        """The same frames through ``transform(frame, i)`` (after this stack's own transform)."""
        inner = self._transform
        if inner is None:
            return FrameStack(self._frames, transform, self._source)
        return FrameStack(self._frames, lambda frame, i: transform(inner(frame, i), i), self._source)


class _TiffPages:
    """Frame ``i`` of a TIFF's series (the first by default), read page by page (for files that
    cannot be memory-mapped)."""

    def __init__(self, path: Path, shape: tuple[int, ...], series: int = 0) -> None:
        self.path, self.shape, self.series = path, shape, series

    def __getitem__(self, i: int) -> np.ndarray:
        import tifffile

        with _quiet_logger("tifffile"), tifffile.TiffFile(self.path) as tif:
            series = tif.series[self.series]
            return series.asarray(key=i) if len(series.pages) > 1 else series.asarray()[i]


#: Readers that ``read_micrograph(..., lazy=True)`` reads frame by frame.
LAZY_READERS = frozenset({"npy", "tiff"})


def _lazy_tiff_frames(path: Path, shape: tuple[int, ...], series: int = 0) -> Any:
    """The frames of a TIFF's series (the first by default) without reading them: a memory
    map when the pixels are stored uncompressed in one block, else a page-by-page reader."""
    import tifffile

    try:
        with _quiet_logger("tifffile"):
            mapped = tifffile.memmap(path, series=series, mode="r")
        if tuple(mapped.shape) == tuple(shape):
            return mapped
    except (ValueError, OSError):
        pass
    return _TiffPages(path, shape, series)


def _read_lazy(path: Path, reader: str) -> tuple[Any, list[dict[str, Any]]]:
    """Data (memory map or lazy array, never read whole) and axes of a ``.npy`` or TIFF file."""
    if reader == "npy":
        data = np.load(path, mmap_mode="r", allow_pickle=False)
        return data, [{} for _ in range(data.ndim)]
    import rsciio.tiff

    if _planar_samples_tiff(path):  # one page: reading it whole is what there is
        return _read_planar_tiff(path)
    with warnings.catch_warnings(), _quiet_logger("tifffile"):
        warnings.simplefilter("ignore")
        results = rsciio.tiff.file_reader(str(path), lazy=True)
        result = _pick_image(list(results) if not isinstance(results, dict) else [results],
                             _tiff_reduced_series(path))
        axes = _rsciio_axes(result)
        data = result["data"]  # a dask array: nothing read yet
        if len(axes) != data.ndim:
            axes = [{} for _ in range(data.ndim)]
        axes = _tiff_fill_units(path, axes)
        if data.ndim < 3 or data.dtype.names:  # one image, or colour: read it here, where a failure names the file
            data = np.asarray(data.compute(scheduler="synchronous"))
    return data, axes


# --------------------------------------------------------------------------- units


def _unescape(text: str) -> str:
    """Resolve ImageJ/Java ``\\uXXXX`` escapes (``\\u00C5`` -> ``Å``)."""
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)


def _normalise_unit(unit: Any) -> str:
    """Lower-case, NFKC-normalised unit string without spaces, brackets or ``_``."""
    if unit is None:
        return ""
    if isinstance(unit, bytes):
        unit = unit.decode("utf-8", "replace")
    text = unicodedata.normalize("NFKC", _unescape(str(unit)))  # µ -> μ, Å (U+212B) -> Å, ⁻¹ -> −1 (then -1)
    text = text.strip().strip("[]").replace("_", "").replace(" ", "").replace("\u2212", "-")
    return text.casefold()


def _is_reciprocal(unit_norm: str) -> bool:
    """True for units such as ``1/nm``, ``nm^-1``, ``nm-1`` (normalised input)."""
    return unit_norm.startswith("1/") or unit_norm.endswith(("-1", "^-1", "**-1"))


def unit_to_angstrom(unit: Any) -> float | None:
    """Å per one ``unit`` of length.

    Parameters
    ----------
    unit : str or None
        A length unit as written by microscope software: ``m``, ``cm``, ``mm``,
        ``µm``/``um``/``micron``, ``nm``, ``Å``/``A``/``angstrom``, ``pm`` (case,
        spaces, brackets and ImageJ ``\\u00C5`` escapes are tolerated).

    Returns
    -------
    float or None
        The factor, or ``None`` for no unit, ``pixel`` or an unknown unit.

    Raises
    ------
    ValueError
        For a reciprocal length unit (``1/nm``): diffraction or FFT data.
    """
    norm = _normalise_unit(unit)
    if _is_reciprocal(norm):
        raise ValueError(f"reciprocal unit {unit!r}")
    factor = _ANGSTROM_PER_UNIT.get(norm)
    if factor is None and len(norm) > 2 and norm.endswith("s"):  # plurals: "nanometers", "angstroms"
        factor = _ANGSTROM_PER_UNIT.get(norm[:-1])
    return factor


def _axis_sampling_A(scale: Any, unit: Any) -> tuple[float | None, str | None]:
    """Pixel size in Å of one axis, or ``None`` with the reason.

    Parameters
    ----------
    scale : float
        Length of one pixel in ``unit``.
    unit : str or None
        Unit of ``scale``.

    Returns
    -------
    (sampling_A, note) : (float or None, str or None)
        ``note`` says why there is no calibration (``None`` when there is one).

    Raises
    ------
    ValueError
        For a reciprocal unit.
    """
    try:
        scale_f = float(scale)
    except (TypeError, ValueError):
        return None, f"scale {scale!r} is not a number"
    unit_txt = "" if unit is None else str(unit)
    factor = unit_to_angstrom(unit)  # raises for 1/length
    if not math.isfinite(scale_f) or scale_f <= 0:
        return None, f"invalid scale {scale_f:g} {unit_txt}".rstrip()
    if factor is None:
        if _normalise_unit(unit) in _NO_UNITS:
            return None, f"scale {scale_f:g} without a length unit"
        return None, f"unknown unit {unit_txt!r}"
    return scale_f * factor, None


def _calibration(
    axis_y: dict[str, Any] | None, axis_x: dict[str, Any] | None
) -> tuple[float | None, str | None]:
    """Square-pixel size in Å from the two image axes, or ``None`` with the reason.

    Raises
    ------
    ValueError
        For reciprocal units or non-square pixels.
    """
    if not axis_x or not axis_y:  # PNG, JPEG, NPY: the format has no calibration
        return None, "no calibration"
    for axis in (axis_x, axis_y):  # a reader found the file's scale to be a placeholder
        if axis.get("calibration_note"):
            return None, str(axis["calibration_note"])
    sx, note_x = _axis_sampling_A(axis_x.get("scale", 1.0), axis_x.get("units"))
    sy, note_y = _axis_sampling_A(axis_y.get("scale", 1.0), axis_y.get("units"))
    if sx is None or sy is None:
        return None, note_x or note_y
    if abs(sx - sy) > 1e-3 * max(sx, sy):
        raise ValueError(f"non-square pixels ({sx:.6g} Å wide, {sy:.6g} Å high)")
    return sx, None


# --------------------------------------------------------------------------- readers
# Each returns (data, axes): data in file order, axes one dict per array dimension
# with optional keys "scale", "units", "navigate" (rsciio's axis dictionaries).


def _rsciio_axes(result: dict[str, Any]) -> list[dict[str, Any]]:
    """rsciio axis dictionaries sorted by their position in the array."""
    axes = list(result.get("axes", []))
    if all("index_in_array" in a for a in axes):
        axes.sort(key=lambda a: int(a["index_in_array"]))
    return axes


def _n_signal_axes(result: dict[str, Any]) -> int:
    """Number of signal (non-navigation) axes of an rsciio result."""
    axes = _rsciio_axes(result)
    if axes and all("navigate" in a for a in axes):
        return sum(not a["navigate"] for a in axes)
    return min(np.ndim(result["data"]), 2)


def _is_length_unit(unit: Any) -> bool:
    """Whether ``unit`` is a length (or a reciprocal length, refused later with its own message)."""
    try:
        return unit_to_angstrom(unit) is not None
    except ValueError:
        return True


def _as_frame_stack(result: dict[str, Any]) -> dict[str, Any] | None:
    """An rsciio result with three signal axes as a stack of frames, or None.

    NCEM EMD files (HyperSpy's too) mark every axis of a ``[N, H, W]`` stack as a
    signal axis. When the last two have length units and the first has none, the
    first is taken as the frame axis (navigation).
    """
    axes = _rsciio_axes(result)
    if len(axes) != 3 or np.ndim(result["data"]) != 3 or _n_signal_axes(result) != 3:
        return None
    if _is_length_unit(axes[0].get("units")) or not all(_is_length_unit(a.get("units")) for a in axes[1:]):
        return None
    return {**result, "axes": [dict(axes[0], navigate=True), *(dict(a, navigate=False) for a in axes[1:])]}


def _pick_image(results: list[dict[str, Any]], reduced: Sequence[bool] = ()) -> dict[str, Any]:
    """The first result whose signal is a 2-D image (or a stack of them, :func:`_as_frame_stack`).

    Parameters
    ----------
    results : list of dict
        rosettasciio's results, in file order.
    reduced : sequence of bool
        Per result, whether the file marks it as a reduced-resolution copy (a TIFF
        thumbnail): the first image not so marked is taken, when there is one.

    Returns
    -------
    dict
        The result taken. When the file holds several images its x axis carries a note
        (``read_notes``) that says how many, which one was read and its index (``image_index``).

    Raises
    ------
    ValueError
        When the file holds no image (only spectra, say).
    """
    if not results:
        raise ValueError("the file holds no image")
    images = []
    for i, result in enumerate(results):
        image = result if _n_signal_axes(result) == 2 else _as_frame_stack(result)
        if image is not None:
            images.append((i, image))
    if images:
        full = [(i, r) for i, r in images if not (i < len(reduced) and reduced[i])]
        index, chosen = (full or images)[0]
        axes = [dict(a) for a in _rsciio_axes(chosen)]
        if axes:
            axes[-1]["image_index"] = index
            if len(images) > 1:
                axes[-1]["read_notes"] = [_several_images_note(images, index, reduced)]
        return {**chosen, "axes": axes}
    shapes = ", ".join(_shape_and_units(r) for r in results) or "nothing"
    raise ValueError(f"no 2-D image or stack of images in the file (it holds {shapes}: spectra or 4-D data?)")


def _several_images_note(images: list[tuple[int, dict[str, Any]]], index: int, reduced: Sequence[bool]) -> str:
    """``holds 2 images (1: 'HAADF' 512x512, 2: 'BF' 512x512); read image 1 ('HAADF') only``."""
    titles = [str(r.get("metadata", {}).get("General", {}).get("title") or "") for _, r in images]
    named = len(set(titles)) == len(titles) and all(titles)  # titles that tell the images apart
    parts, read = [], ""
    for k, ((i, result), title) in enumerate(zip(images, titles), start=1):
        size = "x".join(str(int(n)) for n in np.shape(result["data"]))
        thumb = " (reduced-resolution copy)" if i < len(reduced) and reduced[i] else ""
        parts.append(f"{k}: {repr(title) + ' ' if named else ''}{size}{thumb}")
        if i == index:
            read = f"image {k}" + (f" ({title!r})" if named else "")
    return f"holds {len(images)} images ({', '.join(parts)}); read {read} only"


def _tiff_reduced_series(path: Path) -> list[bool]:
    """Per series of a TIFF, whether tifffile marks it as a reduced-resolution copy (a thumbnail)."""
    import tifffile

    try:
        with warnings.catch_warnings(), _quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
            warnings.simplefilter("ignore")
            return [bool(series.keyframe.is_reduced) for series in tif.series]
    except Exception:  # noqa: BLE001 - not for us to judge: rosettasciio reports it
        return []


def _shape_and_units(result: dict[str, Any]) -> str:
    """``(128, 96, 3) in nm, nm, s``: an rsciio result's shape and axis units, for messages."""
    shape = str(tuple(int(n) for n in np.shape(result["data"])))
    units = [str(a.get("units") or "-") for a in _rsciio_axes(result)]
    return f"{shape} in {', '.join(units)}" if any(u != "-" for u in units) else shape


def _format_size(n_bytes: int) -> str:
    """A file or array size for a message: ``"3.1 kB"``, ``"12 MB"``, ``"1.5 EB"``."""
    value = float(n_bytes)
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} EB"


def _mrc_header(path: Path) -> np.void | str | None:
    """The MRC standard header (rsciio's layout, ``rsciio.mrc._api.get_std_dtype_list``),
    the reason there is none (a file shorter than it), or None without that layout."""
    try:
        from rsciio.mrc._api import get_std_dtype_list
    except ImportError:  # pragma: no cover - another rsciio layout
        return None
    header_type = np.dtype(get_std_dtype_list("<"))
    size = path.stat().st_size
    if size < header_type.itemsize:
        return f"{_format_size(size)}, shorter than the {header_type.itemsize}-byte MRC header"
    return np.fromfile(path, dtype=header_type, count=1)[0]


def _mrc_size_problem(path: Path) -> str | None:
    """Why an MRC file cannot hold the data its header declares, or None.

    rsciio maps ``NX x NY x NZ`` pixels of the header's mode from the end of the
    (extended) header on; a damaged header that declares more than the file holds
    makes it build index arrays of exabytes or loop for hours. The header is read
    with rsciio's own layout (:func:`_mrc_header`); without it, no check is made.
    """
    try:
        from rsciio.mrc._api import get_data_type
    except ImportError:  # pragma: no cover - another rsciio layout
        return None
    header = _mrc_header(path)
    if header is None or isinstance(header, str):
        return header
    size = path.stat().st_size
    nx, ny, nz = (int(header[k]) for k in ("NX", "NY", "NZ"))
    try:
        itemsize = get_data_type(np.array([header["MODE"]])).itemsize
    except ValueError:
        return f"unknown MRC mode {int(header['MODE'])} in the header"
    need = 1024 + int(header["NEXT"]) + nx * ny * nz * itemsize  # Python ints: no overflow
    if min(nx, ny, nz) < 1 or need > size:
        return (f"the header declares {nz}x{ny}x{nx} pixels ({_format_size(need)} with its headers) but the "
                f"file holds {_format_size(size)}")
    return None


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Silence a library's logger for a read: tifffile logs ``<TiffFile ...> contains no
    pages`` on stderr beside the one-line error of an empty TIFF."""
    logger = logging.getLogger(name)
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


@contextlib.contextmanager
def _caught_log(name: str) -> Iterator[list[str]]:
    """A library's log messages, kept in the list yielded instead of printed."""
    logger = logging.getLogger(name)
    caught: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        caught.append(record.getMessage())
        return False

    was = logger.disabled
    logger.disabled = False
    logger.addFilter(keep)
    try:
        yield caught
    finally:
        logger.removeFilter(keep)
        logger.disabled = was


#: What tifffile logs when a TIFF's list of pages leads outside the file.
_TIFF_BROKEN_PAGE_LIST = ("invalid page offset", "invalid offset to page", "corrupted tag list of page")


def _tiff_truncation_problem(path: Path, frames_read: int, series: int = 0) -> str | None:
    """Why a TIFF seems cut short, or None.

    tifffile reads what it can of a truncated file and only logs the damage: a stack whose
    ImageJ metadata declares more frames than the pages it finds is read as one image
    (``ImageJ series metadata invalid or corrupted file``), and an OME series is filled
    with blank frames. The ImageJ ``images`` or the OME-XML planes are compared with what
    the file holds (``frames_read``, or its pages when the list of pages leads outside
    the file).
    """
    import tifffile

    try:
        with warnings.catch_warnings(), _caught_log("tifffile") as caught, tifffile.TiffFile(path) as tif:
            warnings.simplefilter("ignore")
            n_pages = len(tif.pages)
            kind = tif.series[series].kind if series < len(tif.series) else ""
            imagej = tif.imagej_metadata
            ome_planes = _ome_planes(tif.ome_metadata) if tif.is_ome else None
    except Exception:  # noqa: BLE001 - not for us to judge: the reader reports it
        return None
    broken = any(m in message for message in caught for m in _TIFF_BROKEN_PAGE_LIST)
    held = min(frames_read, n_pages) if broken else frames_read
    if imagej and kind != "imagej":
        declared = int(imagej.get("images") or 1)
        if declared > held:
            return f"its ImageJ metadata declares {declared} frames, the file holds {held}: truncated?"
    if broken:
        if ome_planes and ome_planes > held:
            return f"its OME-XML declares {ome_planes} frames, the file holds {held}: truncated?"
        return f"its list of pages leads past the end of the file after page {n_pages}: truncated?"
    return None


def _ome_planes(ome_xml: str | None) -> int | None:
    """Number of 2-D planes of the first OME ``Pixels`` element (``SizeZ x SizeT x SizeC``
    over its samples per pixel), or None."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(ome_xml or "")
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Pixels":
            a = element.attrib
            try:
                size = int(a.get("SizeZ", 1)) * int(a.get("SizeT", 1)) * int(a.get("SizeC", 1))
                samples = max(1, int(next((c.attrib.get("SamplesPerPixel", 1) for c in element
                                           if c.tag.rsplit("}", 1)[-1] == "Channel"), 1)))
            except ValueError:
                return None
            return max(1, size // samples)
    return None


def _read_with_rsciio(path: Path, reader: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Read DM3/DM4, EMD, SER/EMI, MRC or TIFF with rosettasciio."""
    import importlib

    if reader == "mrc":
        problem = _mrc_size_problem(path)
        if problem:
            raise ValueError(problem)
    if reader == "tia" and path.suffix.lower() == ".emi":
        problem = _emi_companion_problem(path)
        if problem:
            raise _FileProblem(problem)
    module = importlib.import_module(f"rsciio.{reader}")
    kwargs: dict[str, Any] = {}
    if reader == "emd":
        kwargs["select_type"] = "images"  # Velox: skip spectra (and the `sparse` dependency)
    with warnings.catch_warnings(), _quiet_logger("tifffile"):
        warnings.simplefilter("ignore")
        results = module.file_reader(str(path), **kwargs)
        if isinstance(results, dict):
            results = [results]
        result = _pick_image(list(results), _tiff_reduced_series(path) if reader == "tiff" else ())
        data = np.array(result["data"])  # copies memmaps (MRC), releasing the file
        axes = _rsciio_axes(result)
        if len(axes) != data.ndim:
            axes = [{} for _ in range(data.ndim)]
        if reader == "tiff":
            axes = _tiff_fill_units(path, axes)
        if reader == "mrc":
            axes = _mrc_check_sampling(path, axes)
    return data, axes


def _emi_companion_problem(path: Path) -> str | None:
    """Why a TIA ``.emi`` file gives no image, or None: it holds only metadata, and the
    images are in ``<stem>_1.ser``, ``<stem>_2.ser``, ... beside it (rsciio's pattern)."""
    import glob

    stem = os.path.splitext(os.fspath(path))[0]
    if glob.glob(glob.escape(stem) + "_[0-9].ser"):
        return None
    return (f"a TIA .emi file holds only metadata; its images are in {Path(stem).name}_1.ser, which is not "
            "beside it: copy the .ser file(s) with the .emi, or read the .ser file")


#: ``NEXT`` of an MRC file with an FEI extended header, whose pixel size rsciio reads
#: from that header instead of the cell (``Xlen / MX``).
_MRC_FEI_NEXT = 128 * 1024


def _mrc_check_sampling(path: Path, axes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark the image axes of an MRC file uncalibrated when its header has no sampling.

    MRC2014 gives the pixel size along x as ``cella.x / mx`` (``Xlen / MX``, in Å),
    likewise for y. With ``MX`` or ``MY`` zero there is none, and rsciio then puts a
    placeholder scale of 1 nm on the axis (dropped here); the cell is not divided by ``NX`` instead
    (that would be a guess). Files with an FEI extended header, whose pixel size rsciio
    reads from there, are left as they are.
    """
    header = _mrc_header(path)
    if header is None or isinstance(header, str) or int(header["NEXT"]) == _MRC_FEI_NEXT or len(axes) < 2:
        return axes
    mx, my = int(header["MX"]), int(header["MY"])
    if mx > 0 and my > 0:
        return axes
    note = (f"MX = {mx}, MY = {my} in the MRC header: its cell ({float(header['Xlen']):g} x "
            f"{float(header['Ylen']):g} Å) gives no pixel size")
    axes = [dict(a) for a in axes]
    for axis in axes[-2:]:
        axis.update(scale=None, units=None, calibration_note=note)  # no scale in the file, not 1
    return axes


def _planar_samples_tiff(path: Path) -> bool:
    """Whether a TIFF holds one page of several planar samples (separate planes).

    ``tifffile.imwrite(path, frames)`` stores a ``[3, H, W]`` or ``[4, H, W]`` array of
    any type as one "RGB" page with separate planes, which rosettasciio cannot read
    (:func:`_read_planar_tiff` reads them).
    """
    import tifffile

    try:
        with warnings.catch_warnings(), _quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
            warnings.simplefilter("ignore")
            series = tif.series[0]
            return len(tif.pages) == 1 and series.axes.startswith("S") and series.ndim == 3
    except Exception:  # noqa: BLE001 - not for us to judge: rosettasciio reports it
        return False


def _read_planar_tiff(path: Path) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Read the planar samples of :func:`_planar_samples_tiff`: 8-bit RGB as colour, others as frames.

    The tag says RGB both for a colour image and for any ``[3, H, W]`` array that
    ``tifffile.imwrite`` stored with its defaults, which cannot be told apart: 8-bit
    RGB planes are read as colour (a structured array with ``R``, ``G``, ``B`` fields,
    as rosettasciio gives contiguous RGB), 16-bit or float ones as frames (a focal
    series saved from NumPy is the likelier), each with a note that says so. Planes
    that are not marked RGB are frames.
    """
    import tifffile

    with warnings.catch_warnings(), _quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
        warnings.simplefilter("ignore")
        rgb = tif.pages.first.photometric == tifffile.PHOTOMETRIC.RGB
        data = np.asarray(tif.series[0].asarray())
    notes = []
    n = data.shape[0]
    if rgb and data.dtype == np.uint8:
        names = "RGBA"[:n]
        colour = np.empty(data.shape[1:], dtype=[(c, data.dtype) for c in names])
        for i, c in enumerate(names):
            colour[c] = data[i]
        data = colour
        notes.append(f"its {n} planes are marked as RGB colour: read as a colour image (if they are {n} frames, "
                     "save them with photometric='minisblack')")
    elif rgb:
        notes.append(f"its {n} {data.dtype} planes are marked as RGB colour, as tifffile marks any [{n}, H, W] "
                     f"array: read as {n} frames (if it is a colour image, convert it to grey first)")
    axes: list[dict[str, Any]] = [{} for _ in range(data.ndim)]
    axes = _tiff_fill_units(path, axes)
    if notes:
        axes[-1] = dict(axes[-1], read_notes=notes)
    return data, axes


def _tiff_fill_units(path: Path, axes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Complete rsciio's TIFF axes from ImageJ or OME metadata read by tifffile.

    rsciio keeps an ImageJ unit only when it is ``micron`` and ignores OME-XML;
    when its image axes carry no unit, take scale and unit from there (the x axis
    records which, as ``calibration_source``).
    """
    if len(axes) < 2:
        return axes
    if any(_normalise_unit(a.get("units")) not in _NO_UNITS for a in axes[-2:]):  # rsciio found one: where?
        axes = [dict(a) for a in axes]
        axes[-1].setdefault("calibration_source", _tiff_calibration_source(path))
        return axes
    found = _tiff_extra_calibration(path)
    if found is None:
        return axes
    (scale_y, unit_y), (scale_x, unit_x), where = found
    axes = [dict(a) for a in axes]
    axes[-2].update(scale=scale_y, units=unit_y)
    axes[-1].update(scale=scale_x, units=unit_x, calibration_source=where)
    return axes


#: DigitalMicrograph's private TIFF tags of units and scales (rsciio's ``_is_digital_micrograph``).
_DM_TIFF_TAGS = frozenset(range(65003, 65012))


def _tiff_calibration_source(path: Path) -> str:
    """Where rosettasciio found a TIFF's calibration, in its order: the FEI, Zeiss, TVIPS or
    Olympus metadata; else ImageJ's (which gives the scale when it has a unit), or
    DigitalMicrograph's tags; ``"TIFF metadata"`` when it cannot be told."""
    import tifffile

    try:
        with warnings.catch_warnings(), _quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
            warnings.simplefilter("ignore")
            page = tif.pages.first
            for flag, name in (("fei", "FEI metadata"), ("sem", "Zeiss SEM metadata"), ("tvips", "TVIPS metadata")):
                if flag in tif.flags:
                    return name
            if page.is_sis:
                return "Olympus SIS metadata"
            if tif.imagej_metadata and tif.imagej_metadata.get("unit"):
                return "ImageJ metadata"
            if any(tag.code in _DM_TIFF_TAGS for tag in page.tags):
                return "DigitalMicrograph TIFF tags"
    except Exception:  # noqa: BLE001 - the file was read: only the wording is at stake
        pass
    return "TIFF metadata"


def _tiff_extra_calibration(path: Path) -> tuple[tuple[float, str], tuple[float, str], str] | None:
    """((scale_y, unit_y), (scale_x, unit_x), where) from ImageJ or OME metadata, if any."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        ij = tif.imagej_metadata
        if ij and ij.get("unit") and "XResolution" in page.tags and "YResolution" in page.tags:
            xres = page.tags["XResolution"].value
            yres = page.tags["YResolution"].value
            unit = _unescape(str(ij["unit"]))
            if xres[0] > 0 and yres[0] > 0:
                return (yres[1] / yres[0], unit), (xres[1] / xres[0], unit), "ImageJ metadata"
        if tif.is_ome and tif.ome_metadata:
            found = _ome_calibration(tif.ome_metadata)
            return None if found is None else (*found, "OME-XML")
    return None


def _ome_calibration(ome_xml: str) -> tuple[tuple[float, str], tuple[float, str]] | None:
    """((scale_y, unit_y), (scale_x, unit_x)) of the first OME ``Pixels`` element."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(ome_xml)
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Pixels":
            attrs = element.attrib
            if "PhysicalSizeX" not in attrs or "PhysicalSizeY" not in attrs:
                return None
            return (
                (float(attrs["PhysicalSizeY"]), attrs.get("PhysicalSizeYUnit", "µm")),
                (float(attrs["PhysicalSizeX"]), attrs.get("PhysicalSizeXUnit", "µm")),
            )
    return None


def _read_plain_image(path: Path) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Read PNG/JPEG with imageio; no calibration."""
    import imageio.v3 as iio

    data = np.asarray(iio.imread(path))
    return data, [{} for _ in range(data.ndim)]


def _read_npy(path: Path) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Read a ``.npy`` array (no pickles); no calibration."""
    data = np.load(path, allow_pickle=False)
    return data, [{} for _ in range(data.ndim)]


#: Readers whose library can loop forever or crash on a damaged file: HDF5 (EMD) spun
#: in ``h5py``'s attribute lookup for 17 minutes on a fuzzed file (4 bytes replaced by 8);
#: rsciio's DigitalMicrograph parser read a tag array of structs whose mutated length it
#: trusted, for minutes and gigabytes, on a fuzzed DM4. They run in a child process
#: (:func:`_read_in_subprocess`), killed after :func:`read_timeout_s` seconds; that costs
#: about a second of start-up per file.
ISOLATED_READERS = frozenset({"emd", "digitalmicrograph"})
#: Seconds an isolated reader may take before the file is refused, plus
#: :data:`READ_SECONDS_PER_GB` for each GB of the file. Reading the 17 kB EMD sample in
#: a child process takes about 1 s (interpreter, h5py and rsciio included); a damaged
#: file that makes HDF5 loop is refused after 8 s, not after minutes (issue 17: no
#: input may hang for more than 10 s).
READ_TIMEOUT_S = 8.0
#: Extra seconds per GB of file for an isolated reader (16 MB/s and faster pass).
READ_SECONDS_PER_GB = 60.0


def read_timeout_s(size_bytes: int) -> float:
    """Seconds an isolated reader may take for a file of ``size_bytes``."""
    return READ_TIMEOUT_S + READ_SECONDS_PER_GB * max(0, int(size_bytes)) / 1e9


def _read_in_subprocess(path: Path, reader: str, timeout_s: float) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``_read_with_rsciio(path, reader)`` in a fresh interpreter, killed after ``timeout_s``.

    The array comes back as ``.npy`` (no pickle) and the axes as JSON through a
    temporary folder. A fresh interpreter (not ``fork``) works from any process: one
    with threads, a daemonic dask worker, a script without a ``__main__`` guard; it
    gets this process's ``sys.path`` and costs about half a second of start-up.

    Raises
    ------
    TimeoutError
        When the reader takes longer than ``timeout_s``.
    MemoryError
        When the reader ran out of memory.
    RuntimeError
        With the reader's one-line error, or its exit status when it crashed.
    """
    import json
    import subprocess
    import sys
    import tempfile

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if isinstance(p, str)))
    with tempfile.TemporaryDirectory(prefix="atomfinder-read-") as tmp:
        command = [sys.executable, "-m", "atomfinder.detection._isolated_read", str(path), reader, tmp,
                   repr(float(timeout_s))]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL, env=env)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the reader took more than {timeout_s:g} s (stuck on a damaged file?)") from None
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            last = lines[-1] if lines else f"the reader crashed (exit status {done.returncode})"
            if last.startswith("MemoryError"):
                raise MemoryError(last)
            raise RuntimeError(last)
        data = np.load(Path(tmp) / "data.npy", allow_pickle=False)
        axes = json.loads((Path(tmp) / "axes.json").read_text(encoding="utf-8"))
    return data, axes


def _read_raw(path: Path, reader: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Dispatch to the reader for ``reader`` (a value of SUPPORTED_EXTENSIONS)."""
    if reader == "npy":
        return _read_npy(path)
    if reader == "image":
        return _read_plain_image(path)
    if reader in ISOLATED_READERS:
        return _read_in_subprocess(path, reader, read_timeout_s(path.stat().st_size))
    if reader == "tiff" and _planar_samples_tiff(path):  # rosettasciio cannot read these
        return _read_planar_tiff(path)
    return _read_with_rsciio(path, reader)


# --------------------------------------------------------------------------- shaping


def _to_grey(
    data: np.ndarray, axes: list[dict[str, Any]], channels_last: bool, grey_alpha: bool = False
) -> tuple[np.ndarray, list[dict[str, Any]], str | None]:
    """Convert RGB(A) to grey with BT.709 luma; other data pass unchanged.

    Parameters
    ----------
    data : ndarray
        Either a structured array with ``R``, ``G``, ``B`` fields (rsciio) or,
        when ``channels_last``, ``[H, W, C]`` with C in 2..4 (imageio, NumPy).
    axes : list of dict
        Axis dictionaries, one per dimension of ``data``.
    channels_last : bool
        Whether a trailing axis of 2-4 channels may be colour.
    grey_alpha : bool
        Whether two channels are grey and alpha by the format (a PNG); otherwise the
        second of two channels is taken as alpha only when it is constant.

    Returns
    -------
    (data, axes, colour)
        ``colour`` is None for grey input, ``"rgb"`` for colour, ``"grey-rgb"`` for
        RGB(A) whose three colour channels are equal (grey stored as colour).

    Raises
    ------
    ValueError
        For two channels whose second varies, outside a format that says grey+alpha:
        two images side by side, not an image and its transparency.
    """
    if data.dtype.names and {"R", "G", "B"} <= set(data.dtype.names):
        rgb = np.stack([data[c].astype(np.float64) for c in "RGB"], axis=-1)
        axes_out = axes
    elif channels_last and data.ndim == 3 and data.shape[-1] in (2, 3, 4) and min(data.shape[:2]) > 4:
        if data.shape[-1] == 2:  # grey + alpha
            alpha = np.asarray(data[..., 1])
            if not grey_alpha and not (alpha == alpha.flat[0]).all():
                raise ValueError(
                    f"2 values per pixel (shape {tuple(data.shape)}) whose second varies: not grey and alpha; "
                    "give one image [H, W] or a stack of frames [N, H, W]")
            return data[..., 0], axes[:-1], None
        rgb = data[..., :3].astype(np.float64)
        axes_out = axes[:-1]
    else:
        return data, axes, None
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return rgb[..., 0], axes_out, "grey-rgb"
    return rgb @ _LUMA, axes_out, "rgb"


def _arrange(
    data: np.ndarray, axes: list[dict[str, Any]]
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Put the navigation (frame) axis first and drop length-1 frame axes.

    Returns data of 2 or more dimensions whose last two are the image; the
    caller refuses more than 3.
    """
    if axes and all("navigate" in a for a in axes) and sum(not a["navigate"] for a in axes) == 2:
        nav = [i for i, a in enumerate(axes) if a["navigate"]]
        sig = [i for i, a in enumerate(axes) if not a["navigate"]]
        order = nav + sig
        data = np.transpose(data, order)
        axes = [axes[i] for i in order]
    while data.ndim > 2 and 1 in data.shape[:-2]:
        i = data.shape[:-2].index(1)
        data = np.take(data, 0, axis=i)
        axes = axes[:i] + axes[i + 1 :]
    return data, axes


def _check_values(data: np.ndarray) -> str | None:
    """The problem with the pixel values (all non-finite, constant), or None."""
    finite = np.isfinite(data)
    if not finite.any():
        return "no finite pixel values (all NaN or infinite)"
    values = data[finite] if not finite.all() else data
    low, high = float(values.min()), float(values.max())
    if low == high:
        return f"constant image (every pixel is {low:g}): nothing to detect; is it a blank frame?"
    return None


def _jsonable(value: Any) -> Any:
    """Plain Python scalar/str for NumPy scalars, bytes and None."""
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


# --------------------------------------------------------------------------- API


def sampling_hint(name: str = "--sampling", what: str = "it") -> str:
    """How to give a pixel size, for the end of an error message.

    Parameters
    ----------
    name : str
        A command-line option (``"--sampling"``) or a Python keyword (``"sampling"``,
        ``"sampling_A"``): each caller names the one its user types.
    what : str
        The object of "give" (``"it"``, ``"a pixel size"``).

    Returns
    -------
    str
        ``"give it with --sampling (Å per pixel)"`` or ``"give it with
        sampling=... (Å per pixel)"``.
    """
    return f"give {what} with {name}{'' if name.startswith('-') else '=...'} (Å per pixel)"


def read_micrograph(
    path: str | os.PathLike[str],
    sampling_A: float | None = None,
    *,
    min_size: int = MIN_SIZE,
    sampling_name: str = "--sampling",
    lazy: bool = False,
) -> Micrograph:
    """Read a micrograph (or a stack of them) and its pixel size.

    Parameters
    ----------
    path : str or path-like
        A ``.dm3``, ``.dm4``, ``.emd``, ``.ser``/``.emi``, ``.mrc``/``.mrcs``,
        ``.tif``/``.tiff``, ``.png``, ``.jpg``/``.jpeg`` or ``.npy`` file.
    sampling_A : float, optional
        Pixel size in Å per pixel; overrides the file's calibration.
    min_size : int, default MIN_SIZE (16)
        Smallest accepted height and width in pixels. Tests of the readers
        lower it to read tiny vendor sample files.
    sampling_name : str, default ``"--sampling"``
        How the user gives a pixel size (a command-line option or a Python
        keyword), named in error messages (:func:`sampling_hint`).
    lazy : bool
        For a multi-frame ``.npy`` or TIFF file (:data:`LAZY_READERS`): ``data`` is a
        :class:`FrameStack` that reads one frame at a time (the pixel values are
        then checked frame by frame by whoever reads them, not here). Other files
        and single images are read whole, as without it.

    Returns
    -------
    Micrograph
        ``data`` float32 ``[H, W]`` or ``[N, H, W]`` (a :class:`FrameStack` with
        ``lazy``); ``sampling_A`` is None when neither the file nor the caller gives
        a pixel size.

    Raises
    ------
    MicrographError
        Missing, empty, unknown, unreadable or truncated file; not an image
        (1-D, 4-D, spectra, complex); smaller than ``min_size``; no finite or
        only one pixel value; reciprocal or non-square calibration (also
        with ``sampling_A``); a non-positive ``sampling_A``.

    Notes
    -----
    An uncalibrated image is returned, not refused; call
    :func:`require_sampling` where Å are needed. Only the first image of a
    file holding several (EMD, EMI, multi-series TIFF) is read, with a note
    (``metadata["notes"]``) that says so; a TIFF series that the file marks as a
    reduced-resolution copy (a thumbnail) is passed over. A PNG, JPEG or
    NPY array ``[H, W, C]`` with C in 2..4 and H, W > 4 is taken as colour
    (grey+alpha, RGB, RGBA), not as a stack; two channels are grey and alpha only
    in a PNG or when the second is constant, and refused otherwise.
    """
    source = os.fspath(path)
    p = Path(source)
    if sampling_A is not None and not (
        isinstance(sampling_A, (int, float, np.number)) and math.isfinite(sampling_A) and sampling_A > 0
    ):
        raise MicrographError(source, f"sampling must be a positive number of Å per pixel, got {sampling_A!r}")
    if not p.exists():
        raise MicrographError(source, "no such file")
    if not p.is_file():
        raise MicrographError(source, "not a file (a directory?)")
    if p.stat().st_size == 0:
        raise MicrographError(source, "empty file (0 bytes)")
    reader = SUPPORTED_EXTENSIONS.get(p.suffix.lower())
    if reader is None:
        known = " ".join(sorted(SUPPORTED_EXTENSIONS))
        raise MicrographError(source, f"unknown file type {p.suffix or '(no extension)'!r}; supported: {known}")
    content = _reader_by_content(p)
    renamed = None
    if content is not None and content != reader:  # a TIFF named .png: read what it is
        renamed = f"a {_FORMAT_NAMES[content]} file named {p.suffix}: read as {_FORMAT_NAMES[content]}"
        reader = content
    fmt = _FORMAT_NAMES[reader]
    a_fmt = f"{'an' if reader in _AN_FORMATS else 'a'} {fmt}"

    try:
        raw, axes = _read_lazy(p, reader) if lazy and reader in LAZY_READERS else _read_raw(p, reader)
    except MemoryError:  # a damaged header can declare exabytes; a huge file may not fit
        raise MicrographError(
            source, f"not enough memory to read it as {a_fmt} file ({_format_size(p.stat().st_size)} on disk); "
            "its header may declare a wrong size (damaged) or the image is too large for this machine"
        ) from None
    except _FileProblem as exc:
        raise MicrographError(source, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - every library has its own exceptions
        reason = _one_line_reason(exc)
        raise MicrographError(
            source, f"cannot read it as {a_fmt} file ({reason}); it may be truncated, damaged or of another format"
        ) from exc

    notes = [renamed] if renamed else []
    notes += [str(n) for a in axes for n in a.get("read_notes", ())]  # what a reader found doubtful
    index = next((int(a["image_index"]) for a in axes if "image_index" in a), 0)  # which of several images
    file_shape = [int(n) for n in raw.shape]
    file_dtype = str(raw.dtype)
    if np.iscomplexobj(raw):
        raise MicrographError(source, "complex data (an exit wave or FFT?); save the intensity image instead")
    try:
        data, axes, colour = _to_grey(raw, axes, channels_last=reader in ("image", "npy"), grey_alpha=reader == "image")
    except ValueError as exc:
        raise MicrographError(source, str(exc)) from None
    if data.dtype.names or not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise MicrographError(source, f"pixel type {file_dtype} is not a number")
    data, axes = _arrange(data, axes)
    if reader == "tiff":
        problem = _tiff_truncation_problem(p, int(np.prod(data.shape[:-2], dtype=np.int64)), index)
        if problem:
            raise MicrographError(source, problem)
    if data.ndim > 3:
        raise MicrographError(
            source, f"{data.ndim}-D data of shape {tuple(file_shape)}; expected one image [H, W] or a stack [N, H, W]"
        )
    if data.ndim < 2:
        raise MicrographError(source, f"{data.ndim}-D data of shape {tuple(file_shape)} is not an image")
    height, width = data.shape[-2:]
    if min(height, width) < min_size:
        raise MicrographError(
            source, f"image too small ({height}x{width} pixels; at least {min_size}x{min_size} needed to hold atoms)"
        )
    if lazy and reader in LAZY_READERS and data.ndim == 3:
        frames = (data if isinstance(data, np.ndarray) or reader == "npy"
                  else _lazy_tiff_frames(p, data.shape, index))
        data = FrameStack(frames, source=source)
    else:
        try:
            if hasattr(data, "compute"):  # a lazily opened single image: read it here, not on a dask cluster
                data = data.compute(scheduler="synchronous")
            data = np.ascontiguousarray(data, dtype=np.float32)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a lazily opened file fails only when its pixels are read
            reason = _one_line_reason(exc)
            raise MicrographError(
                source, f"cannot read its pixels as {a_fmt} file ({reason}); it may be truncated or damaged"
            ) from exc
        problem = _check_values(data)
        if problem:
            raise MicrographError(source, problem)

    try:
        file_sampling_A, note = _calibration(*(axes[-2:] if len(axes) >= 2 else (None, None)))
    except ValueError as exc:
        if "reciprocal" in str(exc):
            raise MicrographError(
                source, f"pixel size in a {exc}: a diffraction pattern or FFT, not a real-space image"
            ) from None
        # non-square pixels: a given pixel size is one size for both axes and cannot make them square
        given = "" if sampling_A is None else f" ({sampling_name} gives one size for both axes and cannot correct it)"
        raise MicrographError(source, f"{exc}; resample the image to square pixels first{given}") from None

    x_axis = axes[-1] if axes else {}
    metadata = {
        "format": reader,
        "format_name": fmt,
        "dtype": file_dtype,
        "shape": file_shape,
        "unit": _jsonable(x_axis.get("units")),
        "scale": _jsonable(x_axis.get("scale")),
        "file_sampling_A": file_sampling_A,
        "calibration_source": (x_axis.get("calibration_source", f"{fmt} metadata") if file_sampling_A else None),
        "sampling_from": "user" if sampling_A is not None else ("file" if file_sampling_A else None),
        "calibration_note": note,
        "colour": colour,
        "notes": notes,
    }
    if isinstance(data, np.ndarray):
        data.flags.writeable = False
    final = float(sampling_A) if sampling_A is not None else file_sampling_A
    return Micrograph(data=data, sampling_A=final, source=source, metadata=metadata)


def require_sampling(micrograph: Micrograph, sampling_name: str = "--sampling") -> float:
    """The micrograph's pixel size in Å, or an error telling the user to give one.

    Parameters
    ----------
    micrograph : Micrograph
        As returned by :func:`read_micrograph`.
    sampling_name : str, default ``"--sampling"``
        How the user gives a pixel size: the command-line option, or the keyword of
        the Python function they called (``"sampling"`` for ``atomfinder.detect``).

    Returns
    -------
    float
        Å per pixel.

    Raises
    ------
    MicrographError
        When neither the file nor the caller gave a pixel size.
    """
    if micrograph.sampling_A is not None:
        return micrograph.sampling_A
    note = micrograph.metadata.get("calibration_note")
    detail = f" ({note})" if note and note != "no calibration" else ""
    raise MicrographError(micrograph.source, f"no pixel size in the file{detail}; {sampling_hint(sampling_name)}")


def write_tiff_calibrated(
    path: str | os.PathLike[str], array: np.ndarray, sampling_A: float
) -> Path:
    """Write a float32 ImageJ TIFF whose pixel size :func:`read_micrograph` reads back.

    The resolution tags hold pixels per Å and the ImageJ description
    ``unit=\\u00C5`` (ImageJ/Fiji show Å); a stack is written as ImageJ slices.
    The file appears atomically (temporary file in the same folder, then
    ``os.replace``).

    Parameters
    ----------
    path : str or path-like
        Destination ``.tif``/``.tiff``.
    array : ndarray, shape (H, W) or (N, H, W)
        Real pixel values; written as float32.
    sampling_A : float
        Pixel size in Å per pixel, > 0.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        For a bad array shape, complex data or a non-positive sampling.
    """
    import tifffile

    target = Path(path)
    data = np.asarray(array)
    if np.iscomplexobj(data) or data.ndim not in (2, 3):
        raise ValueError(f"{target}: need a real [H, W] or [N, H, W] array, got {data.dtype} {data.shape}")
    if not (math.isfinite(sampling_A) and sampling_A > 0):
        raise ValueError(f"{target}: sampling_A must be positive, got {sampling_A!r}")
    data = np.ascontiguousarray(data, dtype=np.float32)
    pixels_per_A = 1.0 / float(sampling_A)
    return atomic_write(target, lambda tmp: tifffile.imwrite(
        tmp,
        data,
        imagej=True,
        resolution=(pixels_per_A, pixels_per_A),
        metadata={"unit": "\\u00C5", "axes": "ZYX" if data.ndim == 3 else "YX"},
    ))
