"""Signed position error of a focal-series model along the drift of its frames.

A focal-series model is trained to give the atoms of the first frame although the
later frames drift. This measures, on the test stores, how far its positions lean
towards the later frames: the mean error of the matched atoms (detected - true, in
the first frame's grid) projected on the mean drift of frames 1 and 2, per series,
then averaged over the series (those drifting less than 0.05 Å are left out).

Usage::

    python benchmarks/check_focal_drift_bias.py mos2-focal 1e4 1e5
    python benchmarks/check_focal_drift_bias.py gold-focal 1e4

reads ``data/mos2-test-<dose>.zarr`` or ``data/gold-focal-test-<dose>.zarr`` (32
series spread over each store) and prints one line per dose.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from atomfinder.analysis.evaluate import samples_from_store
from atomfinder.analysis.matching import match_positions
from atomfinder.datasets.store import DatasetStore
from atomfinder.detection.pipeline import detect_array
from atomfinder.nn.card import load_model, resolve_model

#: Test stores' name stem per model.
STORES = {"mos2-focal": "mos2", "gold-focal": "gold-focal"}
#: Matching radius (Å), as in the evaluation.
RADIUS_A = 0.5


def drift_bias(model: str, dose: str, n_series: int = 32) -> dict[str, float]:
    """Mean error along and across the frames' drift (Å) of ``model`` on one test store."""
    net, card = load_model(resolve_model(model))
    store = DatasetStore(f"data/{STORES[model]}-test-{dose}.zarr")
    along, across, drift, share = [], [], [], []
    for s in samples_from_store(store, np.linspace(0, len(store) - 1, n_series).astype(int)):
        res = detect_array(net, card, s.image, s.sampling_A)
        xy = res.atoms.xy * s.sampling_A
        pi, ti = match_positions(xy, s.positions_A, RADIUS_A)
        err = xy[pi] - s.positions_A[ti]
        d = np.asarray(s.drift_px, float)[1:].mean(axis=0) * s.sampling_A  # (x, y) Å
        size = float(np.linalg.norm(d))
        if size < 0.05 or not len(err):
            continue
        u = d / size
        along.append(float((err @ u).mean()))
        across.append(float((err @ np.array([-u[1], u[0]])).mean()))
        drift.append(size)
        share.append(along[-1] / size)
    return {"series": len(along), "drift_A": float(np.mean(drift)), "along_A": float(np.mean(along)),
            "across_A": float(np.mean(across)), "median_share": float(np.median(share))}


def main(argv: list[str]) -> None:
    torch.set_num_threads(2)
    model, doses = argv[0], argv[1:]
    for dose in doses:
        r = drift_bias(model, dose)
        print(f"{model} {dose}: {r['series']} series; mean drift of frames 1-2 {r['drift_A']:.3f} Å; "
              f"mean error along it {100 * r['along_A']:.1f} pm (median share of the drift {r['median_share']:.2f}); "
              f"across {100 * r['across_A']:.1f} pm", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
