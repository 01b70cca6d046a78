"""Which test images can be scored at all? Per-image F1 by the transfer of a lattice fringe.

A single HRTEM image holds a lattice's position only in the fringes the lens
transfers. For graphene, when the 2.13 Å {100} fringes sit near a zero of the
phase-contrast transfer function ``sin(chi)``, only the 1.23 Å {110} fringes are
left: a triangular lattice 1.42 Å apart in which the atoms and the hexagon centres
look alike, so a detector can only guess where the atoms are. This reads the
per-image scores of an ``atomfinder evaluate`` report and the microscope of every
image from the test store, computes ``sin(chi)`` at the given spacing (defocus,
Cs and C5; astigmatism and coma left out) and prints the per-image F1 by bins of
``|sin(chi)|``. With ``--spots`` it also measures, in the images that fail, how
far the FFT spots at that spacing stand above the background: a missing
transfer need not mean missing spots (interference of other beams can put
spots there). Prints one JSON object as its last line.

    python benchmarks/check_fringe_transfer.py --report reports/graphene/dose-1e5/report.json \
        --data data/graphene-test-1e5.zarr --spacing 2.13
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from atomfinder.datasets.store import DatasetStore
from atomfinder.imaging.microscope import Microscope
from atomfinder.imaging.transfer import aberration_phase


def sin_chi(spacing_A: float, energy_eV: float, defocus_A: float, Cs_A: float, C5_A: float) -> float:
    """Phase-contrast transfer ``sin(chi)`` at a lattice spacing (Å; defocus positive = underfocus).

    The lens's own :func:`~atomfinder.imaging.transfer.aberration_phase`, without
    astigmatism and coma.
    """
    lens = Microscope(energy_eV=energy_eV, Cs_A=Cs_A, C5_A=C5_A)
    return math.sin(float(aberration_phase(np.float64(1.0 / spacing_A), np.float64(0.0), lens, defocus_A)))


def spot_contrast(image: np.ndarray, sampling_A: float, spacing_A: float) -> float:
    """How far the brightest FFT spots at a spacing stand above the background.

    The 99.5th percentile of the power in a ring at ``1 / spacing_A`` (±0.03 1/Å),
    over the median power of two rings 0.08 1/Å inside and outside it (Hann window).
    """
    img = np.asarray(image, dtype=np.float64)
    img = img - img.mean()
    window = np.hanning(img.shape[0])[:, None] * np.hanning(img.shape[1])[None, :]
    power = np.abs(np.fft.fft2(img * window)) ** 2
    k = np.hypot(np.fft.fftfreq(img.shape[0], sampling_A)[:, None], np.fft.fftfreq(img.shape[1], sampling_A)[None, :])
    k0 = 1.0 / spacing_A
    on = power[np.abs(k - k0) < 0.03]
    off = power[(np.abs(k - (k0 - 0.08)) < 0.02) | (np.abs(k - (k0 + 0.08)) < 0.02)]
    return float(np.percentile(on, 99.5) / np.median(off))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", required=True, help="report.json of atomfinder evaluate")
    parser.add_argument("--data", required=True, help="the test store it scored")
    parser.add_argument("--spacing", type=float, default=2.13, help="lattice spacing (Å); graphene {100}: 2.13")
    parser.add_argument("--detector", default="network")
    parser.add_argument("--radius", type=float, default=0.5)
    parser.add_argument("--edges", default="0.2,0.5", help="bin edges of |sin chi|")
    parser.add_argument("--spots", action="store_true",
                        help="also measure the FFT spot contrast at the spacing in the images that fail (F1 < 0.5)")
    args = parser.parse_args()
    report = json.load(open(args.report))
    store = DatasetStore(args.data)
    images = [im for im in report["detectors"][args.detector]["images"]
              if math.isclose(im["radius_A"], args.radius) and im["n_true"] > 0]
    f1 = np.array([im["f1"] for im in images], dtype=float)
    transfer = np.array([abs(sin_chi(args.spacing, **{k: m[k] for k in ("energy_eV", "defocus_A", "Cs_A", "C5_A")}))
                         for m in (store.microscope(im["image"])[0] for im in images)])
    edges = [0.0] + [float(e) for e in args.edges.split(",")] + [1.0 + 1e-9]
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (transfer >= lo) & (transfer < hi)
        if sel.any():
            bins.append({"abs_sin_chi": [round(lo, 2), round(min(hi, 1.0), 2)], "images": int(sel.sum()),
                         "mean_f1": round(float(f1[sel].mean()), 3), "median_f1": round(float(np.median(f1[sel])), 3),
                         "share_f1_below_0.5": round(float(np.mean(f1[sel] < 0.5)), 3)})
    for b in bins:
        print(f"|sin chi({args.spacing} Å)| in [{b['abs_sin_chi'][0]}, {b['abs_sin_chi'][1]}): {b['images']} images, "
              f"mean F1 {b['mean_f1']}, median {b['median_f1']}, {100 * b['share_f1_below_0.5']:.0f} % below 0.5")
    result = {"report": args.report, "spacing_A": args.spacing, "radius_A": args.radius, "bins": bins}
    if args.spots:
        failed = [im["image"] for im, f in zip(images, f1) if f < 0.5]
        ids = np.asarray(store.indices)[failed]
        contrast = [round(spot_contrast(img[0], float(s), args.spacing), 1)
                    for img, s in zip(store.array("images", ids), store.array("sampling_A", ids))]
        print(f"FFT spot contrast at {args.spacing} Å in the {len(failed)} images with F1 < 0.5: {contrast}")
        result["failed_spot_contrast"] = contrast
    print(json.dumps(result))


if __name__ == "__main__":
    main()
