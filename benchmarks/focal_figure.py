"""The focal-series figure of the README: three frames, the class map and the atoms by class.

One simulated focal series of a test store goes through :func:`atomfinder.detect`
with ``focal_series=True`` (as a user's three files would), and the figure shows:

* the three frames (defocus in Å, positive = underfocus; dose in e/Å² per frame),
* the class map: per pixel of the model's maps, background where it is the most
  probable class, else the atom class detection would give (after the class priors),
* the first frame with the detections coloured by class, and the true vacancy sites
  (``Mo_vacancy``, ``S_vacancy``, ``S1``) ringed, so that missed ones show;
* for a model with a height head (gold), the first frame with each detected column coloured
  by its height (atoms per column), the true heights of the matched columns in the title.

Usage::

    python benchmarks/focal_figure.py --model runs/mos2-focal/model --data data/mos2-test-1e4.zarr \
        --index 3 --out docs/focal-mos2.png

The last line printed is one JSON object: atoms per class found and true.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

import atomfinder  # noqa: E402
from atomfinder._figures import add_scale_bar, percentile_limits  # noqa: E402
from atomfinder.datasets.store import DatasetStore  # noqa: E402

#: Colours of the classes (background first), shared by the class map and the markers.
CLASS_COLOURS = ("#000000", "#1f77b4", "#ffbf00", "#2ca02c", "#d62728", "#e377c2", "#17becf", "#8c564b")
#: Classes whose true sites are ringed on the overlay (the rare ones a reader looks for).
RINGED = ("S1", "Mo_vacancy", "S_vacancy")


def frame_titles(store: DatasetStore, i: int) -> list[str]:
    """``"frame k: defocus D Å"`` for each frame of sample ``i`` (with the dose on the first)."""
    frames = store.microscope(i)
    titles = []
    for k, f in enumerate(frames):
        title = f"frame {k + 1}: defocus {f.get('defocus_A', float('nan')):.0f} Å"
        if k == 0 and "dose_e_per_A2" in f:
            title += (f"\n{f['dose_e_per_A2']:.0e} e/Å² per frame, {f['energy_eV'] / 1e3:.0f} kV, "
                      f"Cs {f['Cs_A'] / 1e4:+.0f} µm")
        titles.append(title)
    return titles


def show_image(ax, image: np.ndarray, title: str, sampling_A: float) -> None:
    """A frame in grey with robust limits and a 1 nm scale bar."""
    lo, hi = percentile_limits(image)
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
    add_scale_bar(ax, image.shape, sampling_A, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def class_map_panel(ax, probabilities: np.ndarray, class_names: tuple[str, ...],
                    class_log_bias: list[float] | None = None) -> None:
    """The class per pixel, with a legend of the class colours: background where it is the most
    probable class, else the atom class that detection would give (the card's class priors applied)."""
    from atomfinder.detection.peaks import biased_labels

    n = probabilities.shape[0]
    cmap = ListedColormap(CLASS_COLOURS[:n])
    atom = biased_labels(probabilities[1:].reshape(n - 1, -1), class_log_bias).reshape(probabilities.shape[1:])
    classes = np.where(np.argmax(probabilities, axis=0) == 0, 0, atom)
    ax.imshow(classes, cmap=cmap, vmin=-0.5, vmax=n - 0.5, interpolation="nearest")
    handles = [plt.Line2D([], [], ls="", marker="s", color=CLASS_COLOURS[k + 1], label=name)
               for k, name in enumerate(class_names)]
    ax.legend(handles=handles, fontsize=7, loc="lower right", framealpha=0.8)
    ax.set_title("class map (model grid)", fontsize=9)
    ax.set_axis_off()


def overlay_panel(ax, image: np.ndarray, table, truth: dict, class_names: tuple[str, ...],
                  sampling_A: float) -> None:
    """The first frame, detections coloured by class, true rare sites ringed."""
    ringed = any(name in RINGED for name in class_names)
    show_image(ax, image, "detections by class" + ("; true rare sites ringed" if ringed else ""), sampling_A)
    for k, name in enumerate(class_names):
        rows = table[table["label"] == name]
        ax.scatter(rows["x"], rows["y"], s=9, color=CLASS_COLOURS[k + 1], label=f"{name} ({len(rows)})",
                   linewidths=0)
    for k, name in enumerate(class_names):
        if name not in RINGED:
            continue
        sel = truth["labels"] == k + 1
        xy = truth["positions_px"][sel]
        ax.scatter(xy[:, 0], xy[:, 1], s=60, facecolors="none", edgecolors=CLASS_COLOURS[k + 1], linewidths=1.0)
    ax.legend(fontsize=7, loc="lower right", framealpha=0.8, markerscale=2)


def height_panel(ax, fig, image: np.ndarray, table, truth: dict, sampling_A: float) -> None:
    """The first frame with the detected columns coloured by height (atoms per column); the
    title gives the share of columns matched within 0.5 Å whose height is exact and within ±1."""
    from atomfinder.analysis.matching import match_positions

    show_image(ax, image, "", sampling_A)
    found = table["height"].to_numpy(dtype=float)
    vmax = max(1.0, float(np.nanmax(found)) if len(found) else 1.0,
               float(truth["heights"].max()) if len(truth.get("heights", [])) else 1.0)
    points = ax.scatter(table["x"], table["y"], c=found, s=14, cmap="viridis", vmin=1, vmax=vmax,
                        linewidths=0)
    fig.colorbar(points, ax=ax, shrink=0.8, label="atoms per column")
    title = "column heights"
    if len(found) and len(truth.get("heights", [])):
        xy = table[["x", "y"]].to_numpy(dtype=float)
        pred, true = match_positions(xy, truth["positions_px"], 0.5 / sampling_A)
        if len(pred):
            err = found[pred] - truth["heights"][true]
            title += f": {np.mean(err == 0):.0%} exact, {np.mean(np.abs(err) <= 1):.0%} within ±1"
    ax.set_title(title, fontsize=9)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model name or path of a focal-series model")
    parser.add_argument("--data", required=True, type=Path, help="test store of focal series")
    parser.add_argument("--index", type=int, default=0, help="series of the store to show")
    parser.add_argument("--out", required=True, type=Path, help="figure (PNG, SVG or PDF)")
    args = parser.parse_args(argv)

    store = DatasetStore(args.data)
    i = args.index
    frames = store.array("images", store.indices[[i]])[0]
    truth = store.ground_truth(i)
    sampling = truth["sampling_A"]
    table, info = atomfinder.detect(frames, model=args.model, sampling=sampling, focal_series=True)
    class_names = tuple(info["class_names"])
    heights = info.get("height")

    n_panels = len(frames) + 2 + (heights is not None)
    fig, axes = plt.subplots(1, n_panels, figsize=(3.2 * n_panels, 3.6), constrained_layout=True)
    for ax, frame, title in zip(axes, frames, frame_titles(store, i)):
        show_image(ax, frame, title, sampling)
    class_map_panel(axes[len(frames)], info["probabilities"], class_names,
                    info["provenance"].get("class_log_bias"))
    overlay_panel(axes[len(frames) + 1], frames[0], table, truth, class_names, sampling)
    if heights is not None:
        height_panel(axes[-1], fig, frames[0], table, truth, sampling)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=150)
    found = {name: int((table["label"] == name).sum()) for name in class_names}
    true = {name: int((truth["labels"] == k + 1).sum()) for k, name in enumerate(class_names)}
    result = {"figure": str(args.out), "index": i, "found": found, "true": true}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
