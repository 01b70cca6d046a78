"""Atom tables as napari Points layers (one per class) and back.

Points are ``(row, col) = (y, x)`` in pixels of the image, with the image's
scale (Å/px), so they lie on the image layer and napari shows Å. A table with a
``frame`` column (a stack of independent frames) gives points ``(frame, y, x)``.
Each point carries the table's ``confidence``, ``sigma_angstrom``,
``probability`` and ``height`` as layer features; the face colour is the class's,
the diameter the error bar (±2σ, at least :data:`MIN_DIAMETER_A`).

A point added by hand gets NaN features (empty cells in the CSV); a moved point
keeps the features of its detection and gets its new position.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from atomfinder.napari._reader import METADATA_KEY, LayerData

#: Columns of the atom table (the order of the CSV), see DESIGN.md.
TABLE_COLUMNS = ("x", "y", "x_angstrom", "y_angstrom", "label", "confidence", "sigma_angstrom",
                 "probability", "height")
#: Table columns carried by each point as a feature.
FEATURE_COLUMNS = ("confidence", "sigma_angstrom", "probability", "height")
#: Face colours of the classes, in the model card's class order.
CLASS_COLOURS = ("#ff7f0e", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
#: Error bar drawn as the marker radius, in standard deviations of the position.
ERROR_BAR_SIGMAS = 2.0
#: Smallest marker diameter in Å (most errors are far below an ångström).
MIN_DIAMETER_A = 0.5
#: Layer names: ``"atoms: C [image]"``.
NAME_PREFIX = "atoms: "


def layer_name(label: str, image_name: str = "", prefix: str = NAME_PREFIX) -> str:
    """Name of the Points layer of class ``label`` found in ``image_name``: ``"atoms: <label> [<image>]"``.

    Without an image name the name is ``"atoms: <label>"``.
    """
    return f"{prefix}{label} [{image_name}]" if image_name else f"{prefix}{label}"


def name_label(name: str, prefix: str = NAME_PREFIX) -> str:
    """The class in a layer name made by :func:`layer_name` (the name itself when it is not one)."""
    if not name.startswith(prefix):
        return name
    label = name[len(prefix):]
    return label.split(" [", 1)[0] if label.endswith("]") else label


def class_colour(index: int) -> str:
    """Face colour (hex) of the class at ``index`` in the model card's class list."""
    return CLASS_COLOURS[index % len(CLASS_COLOURS)]


def marker_diameter_px(sigma_A: Any, sampling_A: float) -> np.ndarray:
    """Marker diameters in pixels: ``2 * ERROR_BAR_SIGMAS * sigma_A``, at least ``MIN_DIAMETER_A``.

    Parameters
    ----------
    sigma_A : array-like of float
        1-σ position errors in Å (NaN where unknown: the floor).
    sampling_A : float
        Pixel size in Å/px.

    Returns
    -------
    ndarray of float
        Diameters in pixels of the image.
    """
    sigma = np.asarray(sigma_A, dtype=np.float64)
    diameter_A = np.where(np.isfinite(sigma), 2.0 * ERROR_BAR_SIGMAS * sigma, 0.0)
    return np.maximum(diameter_A, MIN_DIAMETER_A) / float(sampling_A)


def _features(rows: pd.DataFrame) -> pd.DataFrame:
    """The feature table of some atom-table rows (float columns, NaN where empty)."""
    out = pd.DataFrame(index=pd.RangeIndex(len(rows)))
    for column in FEATURE_COLUMNS:
        values = rows[column] if column in rows else pd.Series(np.nan, index=rows.index)
        out[column] = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
    return out


def _upper_triangular(shear: Any) -> np.ndarray:
    """A napari shear as its full upper-triangular matrix (napari gives a vector of the entries above the diagonal)."""
    values = np.asarray(shear, dtype=np.float64)
    if values.ndim == 2:
        return values
    n = int(round((1 + np.sqrt(1 + 8 * values.size)) / 2))
    matrix = np.eye(n)
    matrix[np.triu_indices(n, 1)] = values
    return matrix


def image_placement(image: Any) -> dict[str, np.ndarray]:
    """Where an image layer lies in napari's world besides its scale.

    Parameters
    ----------
    image : napari.layers.Image
        The image layer.

    Returns
    -------
    dict
        ``translate`` (world units), ``rotate`` and ``shear`` (matrices) and
        ``affine`` (homogeneous matrix), over all the image's axes.
    """
    return {"translate": np.asarray(image.translate, dtype=np.float64),
            "rotate": np.asarray(image.rotate, dtype=np.float64),
            "shear": _upper_triangular(image.shear),
            "affine": np.asarray(image.affine.affine_matrix, dtype=np.float64)}


def placement_kwargs(placement: dict[str, np.ndarray] | None, ndim: int) -> dict[str, Any]:
    """Layer keyword arguments that place a layer of ``ndim`` axes where the image's last ``ndim`` axes are.

    Parameters
    ----------
    placement : dict or None
        :func:`image_placement` of the image (None: no keywords, napari's defaults).
    ndim : int
        Axes of the new layer (2 for ``(y, x)`` points on a stack's first frame).

    Returns
    -------
    dict
        ``translate``, ``rotate``, ``shear`` and ``affine``.
    """
    if not placement:
        return {}
    return {"translate": tuple(float(v) for v in placement["translate"][-ndim:]),
            "rotate": placement["rotate"][-ndim:, -ndim:],
            "shear": placement["shear"][-ndim:, -ndim:],
            "affine": placement["affine"][-(ndim + 1):, -(ndim + 1):]}


def points_layer(rows: pd.DataFrame, label: str, colour: str, sampling_A: float, image_name: str,
                 frames: bool, placement: dict[str, np.ndarray] | None = None) -> LayerData:
    """One class's atoms as a Points layer-data tuple.

    Parameters
    ----------
    rows : DataFrame
        Atom-table rows of this class (``x``, ``y`` in pixels; ``frame`` when ``frames``).
    label : str
        The class name.
    colour : str
        Face colour.
    sampling_A : float
        Pixel size in Å/px: the layer's scale.
    image_name : str
        Name of the image layer the atoms were found in (kept in the metadata).
    frames : bool
        Points are ``(frame, y, x)`` instead of ``(y, x)``.
    placement : dict, optional
        :func:`image_placement` of the image layer: the points get its translate,
        rotation, shear and affine, so that they lie on it.

    Returns
    -------
    (data, kwargs, "points")
    """
    columns = ["frame", "y", "x"] if frames else ["y", "x"]
    data = rows[columns].to_numpy(dtype=np.float64).reshape(-1, len(columns))
    lead = (1.0,) * (len(columns) - 2)
    meta = {"kind": "atoms", "label": label, "sampling_A": float(sampling_A), "image": image_name}
    kwargs = {
        "name": layer_name(label, image_name),
        "ndim": len(columns),
        "scale": lead + (float(sampling_A), float(sampling_A)),
        "units": ("pixel",) * len(lead) + ("angstrom", "angstrom"),
        "features": _features(rows),
        "feature_defaults": {column: np.nan for column in FEATURE_COLUMNS},
        "face_color": colour,
        "border_color": "white",
        "border_width": 0.05,
        "size": marker_diameter_px(rows["sigma_angstrom"] if "sigma_angstrom" in rows else np.full(len(rows), np.nan),
                                   sampling_A),
        "metadata": {METADATA_KEY: meta},
        **placement_kwargs(placement, len(columns)),
    }
    return data, kwargs, "points"


def clear_added_features(event: Any) -> None:
    """Give points just added by hand NaN features (a napari ``layer.events.data`` callback).

    napari copies the features of the last selected point to a new one; a hand-added
    atom has no detection behind it, so its confidence, error, probability and height
    are unknown (empty cells in the CSV).
    """
    if str(getattr(event, "action", "")) != "added":  # napari's ActionType.ADDED, a string enum
        return
    layer = event.source
    rows = np.asarray(event.data_indices, dtype=np.int64) % max(len(layer.data), 1)
    columns = [c for c in FEATURE_COLUMNS if c in layer.features.columns]
    layer.features.loc[layer.features.index[rows], columns] = np.nan


def atom_layers(table: pd.DataFrame, class_names: tuple[str, ...] | list[str], sampling_A: float,
                image_name: str, placement: dict[str, np.ndarray] | None = None) -> list[LayerData]:
    """An atom table as one Points layer per class of the model (empty classes too, to add atoms by hand).

    Parameters
    ----------
    table : DataFrame
        The atom table of :func:`atomfinder.detect` (a ``frame`` column for a stack).
    class_names : sequence of str
        The model's classes, in card order (they fix the colours).
    sampling_A : float
        Pixel size of the image in Å/px.
    image_name : str
        Name of the image layer.
    placement : dict, optional
        :func:`image_placement` of the image layer (its translate, rotation, ...).

    Returns
    -------
    list of (data, kwargs, "points")
    """
    frames = "frame" in table.columns
    labels = list(class_names) + [c for c in pd.unique(table["label"]) if c not in class_names]
    return [points_layer(table[table["label"] == label], str(label), class_colour(i), sampling_A, image_name, frames,
                         placement) for i, label in enumerate(labels)]


def _layer_sampling_A(kwargs: dict[str, Any]) -> float:
    """Pixel size (Å/px) of a Points layer: from atomfinder's metadata, else from an Å scale."""
    meta = (kwargs.get("metadata") or {}).get(METADATA_KEY, {})
    if meta.get("sampling_A"):
        return float(meta["sampling_A"])
    units = [str(u) for u in (kwargs.get("units") or ())]
    if units and units[-1] in ("angstrom", "Å"):
        return float(kwargs["scale"][-1])
    raise ValueError(f"points layer {kwargs.get('name', '')!r}: no pixel size (not made by atomfinder and "
                     "its scale is not in Å)")


def _layer_label(kwargs: dict[str, Any]) -> str:
    """Class of a Points layer: atomfinder's metadata, else the name without ``"atoms: "`` and ``" [image]"``."""
    meta = (kwargs.get("metadata") or {}).get(METADATA_KEY, {})
    return str(meta.get("label") or name_label(str(kwargs.get("name", ""))))


def table_from_points(data: Any, kwargs: dict[str, Any]) -> pd.DataFrame:
    """The atom-table rows of one Points layer, positions in pixels and Å.

    Parameters
    ----------
    data : array-like, shape (n, 2) or (n, 3)
        Points ``(y, x)`` or ``(frame, y, x)`` in pixels of the image.
    kwargs : dict
        The layer's state: ``name``, ``metadata``, ``features``, ``scale``, ``units``.

    Returns
    -------
    DataFrame
        Columns :data:`TABLE_COLUMNS` (after ``frame`` for 3-D points); features
        missing or NaN give empty values, ``height`` is a nullable integer.
    """
    points = np.asarray(data, dtype=np.float64).reshape(-1, np.shape(data)[-1] if np.ndim(data) == 2 else 2)
    sampling_A = _layer_sampling_A(kwargs)
    features = pd.DataFrame(kwargs.get("features", None))
    out = pd.DataFrame()
    if points.shape[1] == 3:
        out["frame"] = np.rint(points[:, 0]).astype(np.int64)
    out["x"] = points[:, -1]
    out["y"] = points[:, -2]
    out["x_angstrom"] = out["x"] * sampling_A
    out["y_angstrom"] = out["y"] * sampling_A
    out["label"] = _layer_label(kwargs)
    for column in FEATURE_COLUMNS:
        values = features[column].to_numpy(dtype=np.float64) if column in features and len(features) == len(points) \
            else np.full(len(points), np.nan)
        out[column] = values
    out["height"] = pd.array(np.where(np.isfinite(out["height"]), np.rint(out["height"]), np.nan), dtype="Float64") \
        .astype("Int64")
    return out


def atom_table(layers: list[LayerData] | list[tuple[Any, dict[str, Any]]]) -> pd.DataFrame:
    """The atom table of several Points layers (one per class), in layer order.

    Parameters
    ----------
    layers : list of (data, kwargs[, layer_type])
        Points layers' data and state (as npe2 writers receive them).

    Returns
    -------
    DataFrame
        Columns ``[frame,] x, y, x_angstrom, y_angstrom, label, confidence,
        sigma_angstrom, probability, height``.
    """
    tables = [table_from_points(layer[0], layer[1]) for layer in layers]
    if not tables:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in TABLE_COLUMNS})
    table = pd.concat(tables, ignore_index=True)
    if "frame" in table.columns:
        table["frame"] = table["frame"].fillna(0).astype(np.int64)
        table = table.sort_values("frame", kind="stable", ignore_index=True)
    return table
