"""Which columns does Atomap's Gaussian refinement bring within the matching radius?

``benchmarks/compare.py`` scores Atomap refining atomfinder's own detections; on gold
that row is ahead of atomfinder by a few columns per dose. This check reads the
comparison's work folder of one system (``runs/compare/<system>``: ``images.npy``,
``seeds_atomfinder.npz`` and ``seeds_atomfinder_refined.npz``, which hold the last
store that ``compare.py`` scored for that system, normally its highest dose) and
the store itself, and for every true site away from the edge band compares the
distance to the nearest detection before and after the refinement (nearest
neighbour, not the evaluator's one-to-one matching, so the counts are close to but
not exactly the page's). It prints, per image, the microscope, the median distance
of atomfinder's detections to their sites and the columns gained (nearest
detection beyond the radius before, within it after) and lost; then the gained
columns' heights and their numbers of neighbouring sites within 3.2 Å (a column
inside an fcc particle seen along a low-index axis has 6-12; fewer: an edge or a
thin corner). Ends with one JSON line.

    python benchmarks/check_peer_gain.py --work runs/compare/gold --data data/gold-test-1e5.zarr
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import spread_indices  # noqa: E402  (benchmarks/ is not a package)

from atomfinder.analysis.evaluate import interior_mask, samples_from_store  # noqa: E402
from atomfinder.datasets.store import DatasetStore  # noqa: E402

#: Sites within this distance (Å) of a site count as its neighbours.
NEIGHBOUR_A = 3.2


def nearest_distance_A(points_A: np.ndarray, sites_A: np.ndarray) -> np.ndarray:
    """Distance (Å) from each site to the nearest point; inf without points."""
    if len(points_A) == 0:
        return np.full(len(sites_A), np.inf)
    return cKDTree(points_A).query(sites_A)[0]


def gained_and_lost(before_A: np.ndarray, after_A: np.ndarray, radius_A: float) -> tuple[np.ndarray, np.ndarray]:
    """Sites whose nearest detection moves inside ``radius_A`` (gained) or out of it (lost)."""
    return (before_A > radius_A) & (after_A <= radius_A), (before_A <= radius_A) & (after_A > radius_A)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="compare.py's work folder of one system")
    ap.add_argument("--data", type=Path, required=True, help="the store that folder last scored")
    ap.add_argument("--n-images", type=int, default=16)
    ap.add_argument("--radius", type=float, default=0.5, help="matching radius (Å)")
    ap.add_argument("--border", type=float, default=1.0, help="edge band left out (Å), as compare.py")
    ap.add_argument("--out", type=Path, help="also write the tables to this Markdown file")
    args = ap.parse_args(argv)

    store = DatasetStore(args.data)
    images = np.load(args.work / "images.npy", mmap_mode="r")
    seeds = np.load(args.work / "seeds_atomfinder.npz")
    refined = np.load(args.work / "seeds_atomfinder_refined.npz")
    indices = spread_indices(len(store), args.n_images)
    if len(indices) != len(images):
        sys.exit(f"error: {args.work} holds {len(images)} images, {args.data} gives {len(indices)}")
    per_image, gained_cols = [], []
    n_sites = 0
    for k, sample in enumerate(samples_from_store(store, indices)):
        if not np.array_equal(np.asarray(images[k]), sample.image[0]):
            sys.exit(f"error: image {k} of {args.work} is not {args.data}'s image {indices[k]}: "
                     "compare.py scored another store last")
        sites = sample.positions_A
        inside = interior_mask(sites, sample.image.shape[-2:], sample.sampling_A, args.border)
        before = nearest_distance_A(seeds[f"img{k}"] * sample.sampling_A, sites[inside])
        after = nearest_distance_A(refined[f"img{k}"] * sample.sampling_A, sites[inside])
        gain, lose = gained_and_lost(before, after, args.radius)
        neighbours = cKDTree(sites).query_ball_point(sites[inside], NEIGHBOUR_A, return_length=True) - 1
        heights = sample.heights[inside] if sample.heights is not None else np.full(inside.sum(), -1)
        n_sites += int(inside.sum())
        found = before <= 1.0
        per_image.append({
            "image": k, "store_index": indices[k], "energy_kV": sample.extra.get("energy_eV", np.nan) / 1e3,
            "Cs_um": (sample.Cs_A or np.nan) / 1e4, "defocus_A": sample.defocus_A, "sites": int(inside.sum()),
            "median_error_A": float(np.median(before[found])) if found.any() else None,
            "gained": int(gain.sum()), "lost": int(lose.sum()),
        })
        gained_cols += [{"image": k, "before_A": float(b), "after_A": float(a), "height": int(h), "neighbours": int(n)}
                        for b, a, h, n in zip(before[gain], after[gain], heights[gain], neighbours[gain])]
    lines = [f"{args.data.name}: {n_sites} sites away from a {args.border} Å edge band, {args.radius} Å radius", "",
             "| image | kV | Cs (µm) | defocus (Å) | sites | atomfinder median error (Å) | gained | lost |",
             "|---|---|---|---|---|---|---|---|"]
    for r in per_image:
        med = "–" if r["median_error_A"] is None else f"{r['median_error_A']:.2f}"
        lines.append(f"| {r['image']} | {r['energy_kV']:.0f} | {r['Cs_um']:.1f} | {r['defocus_A']:.0f} | {r['sites']} | "
                     f"{med} | {r['gained']} | {r['lost']} |")
    if gained_cols:
        g = np.array([[c["before_A"], c["after_A"], c["height"], c["neighbours"]] for c in gained_cols])
        lines += ["", f"Gained columns: {len(g)}; nearest detection {g[:, 0].min():.2f}-{g[:, 0].max():.2f} Å from "
                  f"the site before, {g[:, 1].min():.2f}-{g[:, 1].max():.2f} Å after; heights median "
                  f"{np.median(g[:, 2]):.0f} atoms, neighbouring sites within {NEIGHBOUR_A} Å median "
                  f"{np.median(g[:, 3]):.0f}.", "",
                  "| image | before (Å) | after (Å) | height | neighbours |", "|---|---|---|---|---|"]
        lines += [f"| {c['image']} | {c['before_A']:.2f} | {c['after_A']:.2f} | {c['height']} | {c['neighbours']} |"
                  for c in gained_cols]
    print("\n".join(lines))
    if args.out:
        header = [f"# Columns that Atomap's refinement of atomfinder's detections brings within {args.radius} Å", "",
                  "`python benchmarks/check_peer_gain.py --work " + str(args.work) + " --data " + str(args.data) + "`", ""]
        args.out.write_text("\n".join(header + lines) + "\n")
    result = {"store": args.data.name, "sites": n_sites, "gained": len(gained_cols),
              "lost": int(sum(r["lost"] for r in per_image)), "per_image": per_image, "gained_columns": gained_cols}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
