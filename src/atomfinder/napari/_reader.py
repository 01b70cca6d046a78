"""napari reader: a micrograph file as an image layer whose scale is its pixel size in Å.

The file is read by :func:`atomfinder.detection.io.read_micrograph`, the reader of
``atomfinder detect`` and ``atomfinder info``. A calibrated image gets
``scale = (sampling_A, sampling_A)`` (a stack ``(1, sampling_A, sampling_A)``) and
``units`` ångström, so distances measured in napari are in Å. A file without a
pixel size opens with scale 1 (pixels); the layer's metadata say so and the dock
widget then asks for the pixel size.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from atomfinder.detection.io import SUPPORTED_EXTENSIONS

#: Key of the layer metadata that holds what atomfinder read (a dict).
METADATA_KEY = "atomfinder"

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader for ``path`` when atomfinder reads its format, else None (npe2 reader hook).

    Parameters
    ----------
    path : str or list of str
        One path (a list is accepted when every path has a supported extension).

    Returns
    -------
    callable or None
        :func:`read_layers`, or None for a directory or an unsupported extension.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or any(Path(p).suffix.lower() not in SUPPORTED_EXTENSIONS for p in paths):
        return None
    return read_layers


def data_checksum(data: Any) -> str | None:
    """A cheap checksum of an array's values: dtype, shape and the CRC-32 of its bytes (None for a non-NumPy array).

    The reader stores it (``metadata["atomfinder"]["checksum"]``) so that the widget
    can tell whether a layer still shows what was read from its file.
    """
    if not isinstance(data, np.ndarray):
        return None
    values = np.ascontiguousarray(data)
    return f"{values.dtype.str}{values.shape}:{zlib.crc32(values.reshape(-1).view(np.uint8)):08x}"


def image_layer_kwargs(sampling_A: float | None, ndim: int, name: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of an image layer with a pixel size of ``sampling_A`` Å/px (None: pixels).

    Parameters
    ----------
    sampling_A : float or None
        Pixel size in Å/px; None keeps scale 1 (pixels) and no unit.
    ndim : int
        2 for an image, 3 for a stack ``[N, H, W]`` (the frame axis keeps scale 1).
    name : str
        Layer name.
    metadata : dict
        What atomfinder knows of the image; stored under ``metadata["atomfinder"]``.

    Returns
    -------
    dict
        ``name``, ``scale``, ``units`` (with a pixel size), ``axis_labels`` and ``metadata``.
    """
    lead = (1.0,) * (ndim - 2)
    kwargs: dict[str, Any] = {"name": name, "metadata": {METADATA_KEY: dict(metadata)},
                              "axis_labels": ("frame", "y", "x")[3 - ndim:]}
    if sampling_A is not None:
        kwargs["scale"] = lead + (float(sampling_A), float(sampling_A))
        kwargs["units"] = ("pixel",) * (ndim - 2) + ("angstrom", "angstrom")
    return kwargs


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Read micrograph files as image layers with their calibration.

    Parameters
    ----------
    path : str or list of str
        Files atomfinder reads (dm3/dm4/emd/ser/emi/mrc/tif/png/jpg/npy).

    Returns
    -------
    list of (data, kwargs, "image")
        One layer per file: float32 ``[H, W]`` or ``[N, H, W]``; ``metadata["atomfinder"]``
        holds ``path``, ``sampling_A`` (None without a pixel size), ``calibration_source``
        and ``calibration_note`` as :func:`read_micrograph` reports them, and the
        ``checksum`` of the data (:func:`data_checksum`).

    Raises
    ------
    MicrographError
        A file that cannot be read (one line naming it; napari shows it as a notification).
    """
    from atomfinder.detection.io import read_micrograph

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        m = read_micrograph(p, min_size=1)
        meta = {"path": os.fspath(p), "sampling_A": m.sampling_A,
                "calibration_source": m.metadata.get("calibration_source"),
                "calibration_note": m.metadata.get("calibration_note"),
                "format": m.metadata.get("format_name", m.metadata.get("format")),
                "checksum": data_checksum(m.data)}
        layers.append((m.data, image_layer_kwargs(m.sampling_A, m.data.ndim, Path(p).stem, meta), "image"))
    return layers
