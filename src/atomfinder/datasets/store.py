"""The dataset store: a zarr group of simulated images, targets and ground truth.

Layout (``n`` samples, ``c`` frames, ``k`` classes + background, ``m`` = max sites)::

    images       [n, c, h, w]   float32   detector counts
    targets      [n, k, h, w]   float32   per-class maps, channel 0 background
    heights      [n, 1, h, w]   uint8     column heights (systems with heights)
    sites_A      [n, m, 2]      float32   ground-truth (x, y) in Å from the top-left pixel centre (NaN padding)
    sites_label  [n, m]         int16     1-based classes (0 = padding)
    sites_height [n, m]         int16     atoms per column
    n_sites      [n]            int32
    sampling_A   [n]            float32   pixel size (Å)
    microscope   [n, c, f]      float64   microscope parameters per frame (names in attrs)
    drift_px     [n, c, 2]      float32   frame drift relative to frame 0
    complete     [n_jobs]       bool      job j's samples are written (one chunk per job)

Samples are generated in jobs of ``samples_per_job``; every array is chunked
by job, so a job's data lands in its own chunk files (zarr writes each file
atomically), and its ``complete`` flag is set only afterwards. A killed run
therefore leaves no half-written sample that counts as done, and resuming
regenerates exactly the missing jobs. The empty store is laid out in a hidden
folder beside ``DIR.zarr`` and renamed into place, so a run killed while creating
it leaves no store that cannot be resumed; resuming removes the temporary chunk
files (``*.partial``) and folders a killed run left.

A store records its layout's version (``store_version``); a store of another
version (made by a newer atomfinder) is refused on opening and on resuming, as
is an existing folder that is not a store (nothing is written into it).

This module knows arrays and zarr only (no physics, no abTEM): training reads
samples through it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

STORE_VERSION = 1


class StoreError(ValueError):
    """A dataset store that cannot be opened or does not match."""


def job_ranges(n: int, samples_per_job: int) -> list[tuple[int, int]]:
    """``[start, stop)`` sample ranges of the jobs of an ``n``-sample store."""
    return [(s, min(s + samples_per_job, n)) for s in range(0, n, samples_per_job)]


def _array_specs(meta: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    n, c, k = meta["n"], meta["frames"], len(meta["class_names"]) + 1
    h = w = meta["image_px"]
    m, f = meta["max_sites"], len(meta["microscope_fields"])
    specs = {
        "images": ((n, c, h, w), "float32"),
        "targets": ((n, k, h, w), "float32"),
        "sites_A": ((n, m, 2), "float32"),
        "sites_label": ((n, m), "int16"),
        "sites_height": ((n, m), "int16"),
        "n_sites": ((n,), "int32"),
        "sampling_A": ((n,), "float32"),
        "microscope": ((n, c, f), "float64"),
        "drift_px": ((n, c, 2), "float32"),
    }
    if meta["has_heights"]:
        specs["heights"] = ((n, 1, h, w), "uint8")
    return specs


def create_or_resume(path: Path, meta: dict[str, Any]) -> zarr.Group:
    """Open a store for writing: create it, or resume it if ``meta`` matches.

    Parameters
    ----------
    path : Path
        The ``.zarr`` directory.
    meta : dict
        JSON-serialisable description: ``n``, ``frames``, ``image_px``,
        ``class_names``, ``max_sites``, ``microscope_fields``, ``has_heights``,
        ``samples_per_job``, ``seed`` and the generating ``config``. An existing
        store must have been made with exactly the same description.
    """
    meta = json.loads(json.dumps(meta))  # normalise tuples, check serialisable
    path = Path(path)
    if not path.exists():
        _remove_partial_stores(path)
        _create_beside(path, meta)
    if path.exists():
        check_store(path)  # before anything is written into a folder that is not a store
        try:
            group = zarr.open_group(str(path), mode="a")
        except Exception as exc:  # noqa: BLE001 - any failure means "not our store"
            raise StoreError(f"{path}: exists and is not a dataset store ({exc})") from None
        old = dict(group.attrs).get("atomfinder")
        if old != meta:
            empty = old is not None and "complete" in group and not _complete_flags(group).any()
            raise StoreError(
                f"{path}: exists with a different configuration, seed or size"
                + ("; it holds no finished sample (an earlier run that failed or was stopped at once): "
                   "delete it and run again, or choose another --out" if empty else
                   "; choose another --out or delete it")
            )
        _remove_partial_chunks(path)
        return group
    raise StoreError(f"{path}: could not be created")


def check_store(path: Path) -> dict[str, Any]:
    """Check that the existing ``path`` is a dataset store this version can read, writing nothing.

    Parameters
    ----------
    path : Path
        An existing file or folder.

    Returns
    -------
    dict
        The store's attributes.

    Raises
    ------
    StoreError
        One line: ``path`` is a file, a folder that is not a zarr group, a zarr
        group that atomfinder did not make, or a store of another
        ``store_version`` (made by a newer atomfinder).
    """
    path = Path(path)
    if not path.is_dir():
        raise StoreError(f"{path}: exists and is not a dataset store (a file); choose another --out")
    if not (path / "zarr.json").is_file():
        if any(path.iterdir()):
            raise StoreError(f"{path}: exists and is not a dataset store (a folder without zarr.json); "
                             "choose another --out")
        raise StoreError(f"{path}: exists and is not a dataset store (an empty folder); choose another --out "
                         "or remove the folder")
    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception as exc:  # noqa: BLE001 - any failure means "not our store"
        raise StoreError(f"{path}: exists and is not a dataset store ({exc})") from None
    if "atomfinder" not in attrs:
        raise StoreError(f"{path}: a zarr group but not a dataset store (made by something other than "
                         "atomfinder simulate); choose another --out")
    version = attrs.get("store_version")
    integer = isinstance(version, int) and not isinstance(version, bool)
    if not (integer and version == STORE_VERSION):
        newer = integer and version > STORE_VERSION
        raise StoreError(
            f"{path}: store version {version!r} "
            + (f"is newer than this atomfinder reads ({STORE_VERSION}): update atomfinder" if newer else
               f"is unknown (this atomfinder reads and writes version {STORE_VERSION})")
        )
    return attrs


def _partial_name(path: Path) -> str:
    return f".{path.name}."


def _remove_partial_stores(path: Path) -> int:
    """Delete half-created stores (hidden ``.<name>.*.partial`` folders) that killed runs left beside ``path``."""
    if not path.parent.is_dir():
        return 0
    stale = [p for p in path.parent.iterdir()
             if p.name.startswith(_partial_name(path)) and p.name.endswith(".partial") and p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)


def _remove_partial_chunks(path: Path) -> int:
    """Delete zarr's temporary chunk files (``*.partial``) that a killed writer left in the store ``path``.

    Only the one process that writes a store may call it (a concurrent writer's
    temporary files would go too).
    """
    stale = [p for p in path.rglob("*.partial") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def _create_beside(path: Path, meta: dict[str, Any]) -> None:
    """Lay out an empty store in a hidden folder beside ``path`` and rename it into place
    (when another process made ``path`` meanwhile, that one is kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_partial_name(path), suffix=".partial"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        _layout(tmp, meta)
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _layout(path: Path, meta: dict[str, Any]) -> None:
    """Create the arrays and attributes of an empty store at ``path``."""
    group = zarr.open_group(str(path), mode="w")
    spj = meta["samples_per_job"]
    for name, (shape, dtype) in _array_specs(meta).items():
        fill = np.nan if name == "sites_A" else 0
        group.create_array(name, shape=shape, chunks=(spj,) + shape[1:], dtype=dtype, fill_value=fill)
    n_jobs = len(job_ranges(meta["n"], spj))
    group.create_array("complete", shape=(n_jobs,), chunks=(1,), dtype="bool", fill_value=False)
    group.attrs["atomfinder"] = meta
    group.attrs["store_version"] = STORE_VERSION


def pending_jobs(group: zarr.Group) -> list[int]:
    """Indices of jobs not yet complete."""
    done = _complete_flags(group)
    return [int(j) for j in np.flatnonzero(~done)]


def _complete_flags(group: zarr.Group) -> np.ndarray:
    return np.asarray(group["complete"][:], dtype=bool)


def write_job(group: zarr.Group, job: int, arrays: dict[str, np.ndarray]) -> None:
    """Write one job's samples, then mark the job complete."""
    meta = group.attrs["atomfinder"]
    start, stop = job_ranges(meta["n"], meta["samples_per_job"])[job]
    for name in _array_specs(meta):
        value = arrays[name]
        if len(value) != stop - start:
            raise StoreError(f"job {job}: {name} has {len(value)} samples, expected {stop - start}")
        group[name][start:stop] = value
    group["complete"][job] = True


@dataclass
class DatasetStore:
    """Read access to a finished (or partly finished) store.

    Only samples of complete jobs are visible; ``len`` counts them.
    """

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such dataset store")
        try:
            self.group = zarr.open_group(str(self.path), mode="r")
            self.meta = dict(self.group.attrs["atomfinder"])
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"{self.path}: not an atomfinder dataset store ({exc})") from None
        check_store(self.path)
        done = _complete_flags(self.group)
        ranges = job_ranges(self.meta["n"], self.meta["samples_per_job"])
        self.indices = np.concatenate(
            [np.arange(s, e) for (s, e), d in zip(ranges, done) if d] or [np.zeros(0, int)]
        ).astype(int)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.meta["class_names"])

    @property
    def has_heights(self) -> bool:
        return bool(self.meta["has_heights"])

    @property
    def microscope_fields(self) -> tuple[str, ...]:
        return tuple(self.meta["microscope_fields"])

    def array(self, name: str, indices: np.ndarray | None = None) -> np.ndarray:
        """An array for the visible samples (or the given store indices)."""
        idx = self.indices if indices is None else np.asarray(indices)
        if len(idx) == 0:
            return np.asarray(self.group[name][0:0])
        lo, hi = int(idx.min()), int(idx.max()) + 1
        block = np.asarray(self.group[name][lo:hi])
        return block[idx - lo]

    def ground_truth(self, i: int) -> dict[str, np.ndarray]:
        """Ground truth of visible sample ``i``: positions (Å and px), labels, heights."""
        j = int(self.indices[i])
        n = int(self.group["n_sites"][j])
        s = float(self.group["sampling_A"][j])
        xy_A = np.asarray(self.group["sites_A"][j, :n], dtype=np.float64)
        return {
            "positions_A": xy_A,
            "positions_px": xy_A / s,
            "labels": np.asarray(self.group["sites_label"][j, :n], dtype=np.int64),
            "heights": np.asarray(self.group["sites_height"][j, :n], dtype=np.int64),
            "sampling_A": s,
        }

    def microscope(self, i: int) -> list[dict[str, float]]:
        """Microscope parameters of visible sample ``i``, one dict per frame."""
        j = int(self.indices[i])
        rows = np.asarray(self.group["microscope"][j])
        return [dict(zip(self.microscope_fields, map(float, r))) for r in rows]
