"""What :func:`~atomfinder.analysis.timeseries.tracking.track` writes, and how its output folder is handled.

The tables (``drift.csv`` by :func:`drift_table`; :func:`write_csv`,
:func:`write_json`), the plots (:func:`plot_presence`, :func:`plot_occupancy`), the
overlay animation (:func:`overlay_frames`, :func:`write_gif`), and the folder: the
files of an earlier run (:data:`TRACK_OUTPUTS`, :func:`refuse_earlier_outputs`) and
the staging folder whose files are renamed into place together at the end
(:func:`publish_staged`, :func:`remove_stale_staging`). Part of
:mod:`atomfinder.analysis.timeseries`, which re-exports every public name.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from atomfinder._files import atomic_write
from atomfinder.analysis.plots import CLASS_COLOURS, plt, save_figure
from atomfinder.analysis.timeseries.occupancy import presence_matrix
from atomfinder.analysis.timeseries.sites import Sites
from atomfinder.detection.registration import Registration, register_images

#: Column order of ``drift.csv`` (DESIGN.md).
DRIFT_COLUMNS = ("frame", "dx", "dy", "correlation", "correlation_sigmas", "disagreement_px", "reliable")
#: Largest number of frames and largest side (display pixels) of ``overlay.gif``.
GIF_MAX_FRAMES = 50
GIF_MAX_SIDE = 400
#: The files :func:`track` writes into its folder (``atomfinder track`` refuses to replace them without --overwrite).
TRACK_OUTPUTS = ("sites.csv", "presence.csv", "events.csv", "drift.csv", "occupancy.csv", "presence.png",
                 "occupancy.png", "overlay.gif", "provenance.json")


def drift_table(drift_px: np.ndarray, registration: Registration | None = None) -> pd.DataFrame:
    """``drift.csv`` table: the drift of every frame and the checks of its registration.

    Parameters
    ----------
    drift_px : ndarray, shape (N, 2)
        ``(dx, dy)`` in pixels, sign as in :func:`register_frames` (the drift used,
        e.g. refined by :func:`refine_drift`).
    registration : Registration, optional
        The image registration's checks (:func:`register_series`); without it the
        check columns are empty and every frame counts as reliable.

    Returns
    -------
    DataFrame
        ``frame, dx, dy, correlation, correlation_sigmas, disagreement_px, reliable``
        (:class:`atomfinder.detection.registration.Registration`; ``reliable`` 1 or 0).
    """
    d = np.asarray(drift_px, dtype=np.float64).reshape(-1, 2)
    n = len(d)
    nan = np.full(n, np.nan)
    reg = registration
    return pd.DataFrame(
        {
            "frame": np.arange(n, dtype=np.int64),
            "dx": d[:, 0],
            "dy": d[:, 1],
            "correlation": nan if reg is None else reg.correlation,
            "correlation_sigmas": nan if reg is None else reg.sigmas,
            "disagreement_px": nan if reg is None else reg.disagreement_px,
            "reliable": np.ones(n, dtype=np.int64) if reg is None else reg.reliable.astype(np.int64),
        },
        columns=list(DRIFT_COLUMNS),
    )


#: Units of the time-series tables, as written into ``provenance.json``.
TRACK_UNITS = {
    "x, y": "pixels of the first frame (x = column, y = row; pixel centres at integers)",
    "x_angstrom, y_angstrom": "Å in the first frame's grid",
    "drift dx, dy": "pixels: a feature at (x, y) in frame 0 is at (x + dx, y + dy) in the frame",
    "drift correlation_sigmas": "the registration's correlation in noise sigmas (unrelated frames: 4-5)",
    "drift disagreement_px": "pixels between two measurements of the frame's drift",
    "probability": "the atom map's value (1 - p(background)) at the site in that frame",
    "switch_cost_nats": "nats of evidence a change of presence must overcome",
}


def write_json(record: Mapping[str, Any], path: Path | str) -> Path:
    """Write ``record`` as indented UTF-8 JSON, atomically."""
    import json

    text = json.dumps(record, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_csv(df: pd.DataFrame, path: Path | str) -> Path:
    """Write a table atomically (temporary file in the same folder + ``os.replace``)."""
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def plot_presence(
    presence_df: pd.DataFrame,
    sites: Sites,
    path: Path | str,
    frame_interval_s: float | None = None,
    n_frames: int | None = None,
) -> Path:
    """Raster of sites (rows, most occupied first) x frames (columns); present = dark."""
    m = presence_matrix(presence_df, len(sites), n_frames)
    n_frames, n_sites = m.shape
    order = np.argsort(-m.sum(axis=0), kind="stable") if n_sites else np.zeros(0, int)
    fig, ax = plt.subplots(figsize=(min(12, 3 + 0.15 * n_frames), min(12, 2 + 0.12 * max(n_sites, 1))))
    if n_sites and n_frames:
        ax.imshow(m[:, order].T, cmap="gray_r", vmin=0, vmax=1, aspect="auto", interpolation="nearest",
                  extent=(-0.5, n_frames - 0.5, n_sites - 0.5, -0.5))
        if n_sites <= 40:
            ax.set_yticks(range(n_sites), [str(s) for s in order], fontsize=6)
    else:
        ax.text(0.5, 0.5, "no sites", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("frame" if frame_interval_s is None else f"frame ({frame_interval_s:g} s per frame)")
    ax.set_ylabel("site (by occupancy)")
    ax.set_title(f"site presence (dark = present): {n_sites} sites, {n_frames} frames")
    return save_figure(fig, path)


def plot_occupancy(summary_df: pd.DataFrame, path: Path | str, frame_interval_s: float | None = None) -> Path:
    """Occupancy (fraction of sites present) and event rate against frame or time."""
    t = summary_df["frame"].to_numpy(dtype=np.float64)
    xlabel, rate_unit = "frame", "events / site / frame"
    if frame_interval_s is not None:
        t = t * frame_interval_s
        xlabel, rate_unit = "time (s)", "events / site / s"
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6, 4.5), sharex=True)
    a1.plot(t, summary_df["occupancy"], "o-", ms=3, color="#007aff")
    a1.set_ylabel("occupancy")
    a1.set_ylim(-0.02, 1.02)
    a1.grid(alpha=0.3)
    width = (t[1] - t[0]) * 0.8 if len(t) > 1 else 0.8
    a2.bar(t, summary_df["event_rate"], width=width, color="#ff3b30")
    a2.set_ylabel(rate_unit)
    a2.set_xlabel(xlabel)
    return save_figure(fig, path)


def _colour_rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def gif_frame_indices(n_frames: int, max_frames: int = GIF_MAX_FRAMES) -> np.ndarray:
    """At most ``max_frames`` evenly spaced frame indices (all of them when there are few)."""
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n_frames - 1, min(n_frames, max_frames)).round().astype(np.int64))


def overlay_frames(
    frames: np.ndarray,
    drift_px: np.ndarray,
    presence_df: pd.DataFrame,
    sites: Sites,
    ring_px: float,
    max_side: int = GIF_MAX_SIDE,
    max_frames: int = GIF_MAX_FRAMES,
    sampling_A: float | None = None,
) -> tuple[list[Any], np.ndarray]:
    """Render registered frames with present sites as rings and absent ones as faint crosses.

    Each frame gets its own 1-99 % grey stretch (a drifting dose or focus does not
    wash out later frames), a legend (rings: present, per class; crosses: absent) and,
    with ``sampling_A``, a scale bar.

    Parameters
    ----------
    frames : ndarray, shape (N, H, W)
        Raw frames; the shown ones are registered (:func:`register_images`).
    drift_px : ndarray, shape (N, 2)
        Drift per frame, pixels.
    presence_df : DataFrame
        From :func:`presence`.
    sites : Sites
    ring_px : float
        Ring radius in frame pixels.
    max_side : int
        Largest side of an output image in display pixels (larger frames are scaled
        down, small ones up by a whole factor of at most 4).
    max_frames : int
        Largest number of frames (evenly spaced, :func:`gif_frame_indices`).
    sampling_A : float, optional
        Pixel size of the frames in Å/px, for the scale bar (none without it).

    Returns
    -------
    (images, frame_indices)
        Pillow RGB images (each labelled with its frame number) and the frames shown.
    """
    from PIL import Image, ImageDraw, ImageFont

    from atomfinder._figures import percentile_limits, pil_legend, pil_scale_bar

    raw = np.asarray(frames)
    n, h, w = raw.shape
    idx = gif_frame_indices(n, max_frames)
    stack = register_images(raw[idx], np.asarray(drift_px, dtype=np.float64)[idx])
    side = max(h, w)
    scale = max_side / side if side > max_side else float(max(1, min(4, max_side // side)))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # whole-factor enlargement repeats pixels (exact, and compresses well); reduction averages
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX
    m = presence_matrix(presence_df, len(sites), n)
    uniq = sorted({str(v) for v in sites.label})
    colour = {lab: _colour_rgb(CLASS_COLOURS[1 + i % (len(CLASS_COLOURS) - 1)]) for i, lab in enumerate(uniq)}
    r = max(2.0, ring_px * scale)
    font = ImageFont.load_default()
    legend = [(f"{lab} present", colour[lab], "ring") for lab in uniq]
    if legend:
        legend.append(("absent", (220, 220, 220), "cross"))
    images = []
    for j, f in enumerate(idx):
        lo, hi = percentile_limits(stack[j])  # per frame
        grey = np.clip((stack[j] - lo) / (hi - lo), 0, 1) * 255
        img = Image.fromarray(grey.astype(np.uint8), "L").resize(size, resample).convert("RGBA")
        layer = Image.new("RGBA", size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        for s in range(len(sites)):
            cx, cy = (sites.x[s] + 0.5) * scale - 0.5, (sites.y[s] + 0.5) * scale - 0.5
            c = colour[str(sites.label[s])]
            if m[f, s]:
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=c + (255,), width=max(1, round(r / 5)))
            else:
                k, lw = 0.8 * r, max(1, round(r / 6))
                draw.line((cx - k, cy - k, cx + k, cy + k), fill=c + (160,), width=lw)
                draw.line((cx - k, cy + k, cx + k, cy - k), fill=c + (160,), width=lw)
        text = f"frame {f}"
        box = draw.textbbox((3, 2), text, font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0, 255))
        draw.text((3, 2), text, fill=(255, 255, 255, 255), font=font)
        rgb = Image.alpha_composite(img, layer).convert("RGB")
        marks = ImageDraw.Draw(rgb)
        if legend:
            pil_legend(marks, legend, size)
        if sampling_A is not None:
            pil_scale_bar(marks, size, sampling_A / scale)
        images.append(rgb)
    return images, idx


def write_gif(images: Sequence[Any], path: Path | str, duration_ms: int = 300) -> Path:
    """Write Pillow images as a looping GIF atomically, ``duration_ms`` per frame.

    (Pillow merges identical consecutive frames; :func:`overlay_frames` labels each
    image with its frame number, so none are.)
    """
    from PIL import Image

    pal = [im.convert("P", palette=Image.Palette.ADAPTIVE, colors=128) for im in images]
    return atomic_write(path, lambda tmp: pal[0].save(
        tmp, format="GIF", save_all=True, append_images=pal[1:], duration=duration_ms, loop=0, optimize=False, disposal=1
    ))


def earlier_outputs(out_dir: Path | str) -> list[Path]:
    """The files of an earlier :func:`track` run in ``out_dir`` (:data:`TRACK_OUTPUTS` that exist)."""
    out = Path(out_dir)
    return [out / name for name in TRACK_OUTPUTS if (out / name).exists()]


def refuse_earlier_outputs(out_dir: Path | str, flag: str = "overwrite=True", shown: int = 4) -> None:
    """Refuse, in one line naming them, to replace the files of an earlier :func:`track` run.

    Parameters
    ----------
    out_dir : path
    flag : str
        How the user asks to replace them (``--overwrite`` on the command line).
    shown : int
        Files named at most.

    Raises
    ------
    ValueError
        When ``out_dir`` holds any of :data:`TRACK_OUTPUTS`.
    """
    from atomfinder._files import refuse_earlier_files

    refuse_earlier_files(out_dir, earlier_outputs(out_dir), f"give {flag} to replace them, or another output folder",
                         shown)


#: Name of the hidden folder :func:`track` stages its outputs in (``<prefix><random><suffix>``).
STAGING_PREFIX, STAGING_SUFFIX = ".track-", ".partial"


def remove_stale_staging(out_dir: Path | str) -> int:
    """Remove staging folders that killed :func:`track` runs left in ``out_dir``; returns how many.

    Only one run should write into a folder at a time: a concurrent run's staging folder
    would go too.
    """
    out = Path(out_dir)
    stale = [p for p in out.iterdir()
             if p.is_dir() and p.name.startswith(STAGING_PREFIX) and p.name.endswith(STAGING_SUFFIX)]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)


def publish_staged(staged: dict[str, Path], out_dir: Path | str) -> dict[str, Path]:
    """Rename staged files into ``out_dir`` (same file system: each rename is atomic).

    Parameters
    ----------
    staged : dict of str to Path
        File name -> the finished file in the staging folder.
    out_dir : path
        Where they go.

    Returns
    -------
    dict of str to Path
        File name -> its published path.
    """
    out = Path(out_dir)
    published = {}
    for name, path in staged.items():
        os.replace(path, out / name)
        published[name] = out / name
    return published
