"""Previews of the gold column labels: particles of each shape with their labels, coloured by height.

Each particle is drawn as the gold recipe draws it (:func:`atomfinder.structures.gold.build_gold`
with the recipe's structure config, one shape at a time, in a box the recipe
draws; free, since a CeO2 support is background and never labelled) and labelled
by the recipe's column rule. The image under the labels is a cheap proxy, not
multislice: the abTEM projected potential (Lobato) of the Au atoms through an ideal
linear phase-contrast transfer, ``T(k) = (1 - exp(-k^2 / 2 k_lo^2)) exp(-2 pi^2 blur^2 k^2)``
(phase contrast passes no low frequencies; the envelope is the labels' resolution
scale ``column_blur_A``). Label markers are coloured by height (atoms per column).

    python benchmarks/preview_gold_labels.py                  # 64 particles per shape -> docs/
    python benchmarks/preview_gold_labels.py --n 16 --out /tmp

Writes ``<out>/gold-labels-<shape>.png`` and prints one JSON object as its last
line: per shape, the particles, labels, atoms, atoms in no column, zone axes and
seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from atomfinder._figures import plt, save_figure
from atomfinder.datasets.generate import default_config
from atomfinder.structures import Structure
from atomfinder.structures.gold import SHAPES, GoldConfig, build_gold

SAMPLING_A = 0.1  # Å per pixel of the preview images
LOW_CUT_PER_A = 0.25  # k_lo (1/Å): phase contrast transfers nothing much coarser than 1 / k_lo = 4 Å
MARGIN_A = 3.0  # vacuum shown around each particle (Å)


def recipe_config(shape: str) -> GoldConfig:
    """The default gold recipe's structure config, for one shape and without a support."""
    base = GoldConfig.from_dict(default_config("gold").structure)
    return replace(base, shapes=(shape,), shape_weights=(1.0,), p_support=0.0)


def draw_particle(rng: np.random.Generator, config: GoldConfig) -> Structure:
    """One particle in a square box the recipe draws (its ``box_px`` at its sampling, Å)."""
    recipe = default_config("gold")
    side = float(rng.choice(np.asarray(recipe.box_px))) * recipe.microscope.sampling_A
    return build_gold(rng, (side, side), config)


def phase_contrast_image(structure: Structure, sampling_A: float, blur_A: float, low_cut_per_A: float) -> np.ndarray:
    """The Au atoms' projected potential through an ideal phase-contrast transfer (module docstring).

    Returns
    -------
    ndarray, shape (rows, cols)
        ``[row, col]`` image of the whole box, atoms bright.
    """
    import abtem

    symbols = np.array(structure.atoms.get_chemical_symbols())
    atoms = structure.atoms[symbols == "Au"]
    potential = abtem.Potential(atoms, sampling=sampling_A, slice_thickness=float(atoms.cell[2, 2]),
                                parametrization="lobato", projection="infinite")
    projected = np.asarray(potential.build(lazy=False).project().array).T  # abTEM [x, y] -> [row, col]
    ky = np.fft.fftfreq(projected.shape[0], sampling_A)[:, None]
    kx = np.fft.fftfreq(projected.shape[1], sampling_A)[None, :]
    k2 = kx**2 + ky**2
    transfer = (1 - np.exp(-k2 / (2 * low_cut_per_A**2))) * np.exp(-2 * np.pi**2 * blur_A**2 * k2)
    return np.fft.ifft2(np.fft.fft2(projected) * transfer).real


def particle_window(structure: Structure, margin_A: float) -> tuple[float, float, float, float]:
    """``(x0, x1, y0, y1)`` in Å around the Au atoms, square, ``margin_A`` beyond them."""
    symbols = np.array(structure.atoms.get_chemical_symbols())
    xy = structure.atoms.positions[symbols == "Au", :2]
    centre = (xy.min(axis=0) + xy.max(axis=0)) / 2
    half = np.ptp(xy, axis=0).max() / 2 + margin_A
    return centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half


def draw_panel(ax, image: np.ndarray, structure: Structure, window, max_height: int, sampling_A: float):
    """One particle: the proxy image in its window and the labels as rings coloured by height.

    Returns
    -------
    matplotlib.cm.ScalarMappable
        The height colour scale, for a colour bar.
    """
    x0, x1, y0, y1 = window
    rows = slice(max(int(y0 / sampling_A), 0), int(np.ceil(y1 / sampling_A)) + 1)
    cols = slice(max(int(x0 / sampling_A), 0), int(np.ceil(x1 / sampling_A)) + 1)
    crop = image[rows, cols]
    extent = (cols.start * sampling_A, (cols.start + crop.shape[1]) * sampling_A,
              (rows.start + crop.shape[0]) * sampling_A, rows.start * sampling_A)
    lo, hi = np.percentile(crop, [0.5, 99.9])
    ax.imshow(crop, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, extent=extent, interpolation="nearest")
    sites = structure.sites
    norm = plt.Normalize(1, max_height)
    ax.scatter(sites.positions_A[:, 0], sites.positions_A[:, 1], s=8, facecolors="none",
               edgecolors=plt.cm.viridis(norm(sites.heights)), linewidths=0.6)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_xticks([])
    ax.set_yticks([])
    info = structure.info
    ax.set_title(f"{info['zone_axis']}, tilt {info['mistilt_deg']:.1f}°\n{len(sites)} columns, {info['n_au']} Au",
                 fontsize=7, linespacing=1.1)
    return plt.cm.ScalarMappable(norm, "viridis")


def preview_shape(shape: str, n: int, seed: int, out: Path, dpi: int = 120) -> dict:
    """Draw ``n`` particles of ``shape`` with their labels into ``out/gold-labels-<shape>.png``."""
    start = time.perf_counter()
    config = recipe_config(shape)
    shape_index = SHAPES.index(shape)
    particles = [draw_particle(np.random.default_rng([seed, shape_index, i]), config) for i in range(n)]
    max_height = max(int(p.sites.heights.max(initial=1)) for p in particles)
    columns = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.0 * columns + 1.0, 2.3 * rows + 0.6), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    markers = None
    for ax, particle in zip(axes.flat, particles):
        ax.axis("on")
        image = phase_contrast_image(particle, SAMPLING_A, config.column_blur_A, LOW_CUT_PER_A)
        markers = draw_panel(ax, image, particle, particle_window(particle, MARGIN_A), max_height, SAMPLING_A)
    fig.suptitle(
        f"{shape}: {n} particles as the gold recipe draws them; labels by column_rule '{config.column_rule}' "
        f"(blur {config.column_blur_A} Å), coloured by height\n"
        f"image: cheap proxy, not multislice: abTEM projected potential of the Au atoms through an ideal "
        f"phase-contrast transfer (low cut {LOW_CUT_PER_A} 1/Å, Gaussian envelope {config.column_blur_A} Å)",
        fontsize=10,
    )
    if markers is not None:
        fig.colorbar(markers, ax=axes, shrink=0.3, label="height (atoms per column)")
    path = save_figure(fig, out / f"gold-labels-{shape}.png", dpi=dpi)
    n_au = sum(p.info["n_au"] for p in particles)
    return {
        "shape": shape, "png": str(path), "particles": n,
        "labels": int(sum(len(p.sites) for p in particles)), "atoms": int(n_au),
        "atoms_in_no_column": int(sum(p.info["n_au_unlabelled"] for p in particles)),
        "zone_axes": dict(Counter(p.info["zone_axis"] for p in particles)),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64, help="particles per shape")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    ap.add_argument("--dpi", type=int, default=120, help="resolution of the PNGs (120: 3.5-4.3 MB each)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for shape in args.shapes:
        row = preview_shape(shape, args.n, args.seed, args.out, args.dpi)
        print(f"{shape:21} {row['particles']:>3} particles {row['labels']:>6} labels {row['atoms']:>7} atoms "
              f"{row['atoms_in_no_column']:>4} in no column  {row['seconds']:>6.1f} s  -> {row['png']}", flush=True)
        rows.append(row)
    print(json.dumps({"n_per_shape": args.n, "seed": args.seed, "shapes": rows}))


if __name__ == "__main__":
    main()
