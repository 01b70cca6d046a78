"""Saving (edited) Points layers as an atomfinder atom table (CSV).

The CSV has the columns of ``atomfinder detect``'s ``<stem>.csv`` (a leading
``frame`` for a stack) and is written the same way: floats with 4 decimals, all
at once (temporary file, then a rename).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from atomfinder._files import atomic_write
from atomfinder.napari._points import atom_table
from atomfinder.napari._reader import METADATA_KEY


def save_atom_table(path: str | os.PathLike[str], table: pd.DataFrame) -> Path:
    """Write an atom table as CSV atomically.

    Parameters
    ----------
    path : path
        The CSV file (a missing ``.csv`` suffix is added).
    table : DataFrame
        The atom table (:func:`atomfinder.napari._points.atom_table`).

    Returns
    -------
    Path
        The file written.
    """
    target = Path(path)
    if target.suffix.lower() != ".csv":
        target = target.with_name(target.name + ".csv")
    return atomic_write(target, lambda tmp: table.to_csv(tmp, index=False, float_format="%.4f"))


def refuse_site_layers(layer_data: list[tuple[Any, dict[str, Any], str]]) -> None:
    """Refuse the ``sites:`` layers of a time series: they are not atom tables (the tracker's CSV files are).

    Raises
    ------
    ValueError
        Naming the first site layer (one line).
    """
    for _, kwargs, *_ in layer_data:
        if (kwargs.get("metadata") or {}).get(METADATA_KEY, {}).get("kind") == "sites":
            raise ValueError(f"{kwargs.get('name', 'a sites layer')!r} holds the sites of a tracked time series, not "
                             "an atom table; they are not saved: sites.csv and presence.csv in its track output "
                             "folder are the result")


def write_atom_table(path: str, layer_data: list[tuple[Any, dict[str, Any], str]]) -> list[str]:
    """npe2 writer: Points layers (one per class) to one atom-table CSV.

    Parameters
    ----------
    path : str
        The CSV file napari asks for.
    layer_data : list of (data, attributes, layer_type)
        The selected Points layers.

    Returns
    -------
    list of str
        The path written.

    Raises
    ------
    ValueError
        A ``sites:`` layer of a time series among them (:func:`refuse_site_layers`).
    """
    refuse_site_layers(layer_data)
    return [os.fspath(save_atom_table(path, atom_table(layer_data)))]
