"""Does `atomfinder detect` on calibrated files score what `atomfinder evaluate` reports?

Writes the first N images of a simulated test store as calibrated float32 TIFFs,
runs the file pipeline (`detect_files`: read, calibrate, clean, resample,
normalise, network, peaks, CSV), reads the CSVs back and scores them against the
store's exact ground truth with the same matching as the evaluator (0.5 Å,
1 Å border band ignored). It also scores the in-memory path
(`network_detector`) on the same images, so the two can be compared. Prints
one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from atomfinder.analysis.evaluate import compare, network_detector, samples_from_store
from atomfinder.datasets.store import DatasetStore
from atomfinder.detection.io import write_tiff_calibrated
from atomfinder.detection.peaks import AtomTable
from atomfinder.detection.batch import detect_files
from atomfinder.nn.card import load_model, resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="graphene")
    parser.add_argument("--data", required=True)
    parser.add_argument("--n", type=int, default=32)
    args = parser.parse_args()
    stem = resolve_model(args.model)
    net, card = load_model(stem)
    store = DatasetStore(args.data)
    samples = list(samples_from_store(store, range(min(args.n, len(store)))))
    names = list(card.class_names)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [write_tiff_calibrated(Path(tmp) / f"s{i:04d}.tif", s.image[0], s.sampling_A) for i, s in enumerate(samples)]
        detect_files(paths, str(stem), Path(tmp) / "out")
        tables = {p.stem: pd.read_csv(Path(tmp) / "out" / f"{p.stem}.csv") for p in paths}

    index = {id(s): i for i, s in enumerate(samples)}

    def from_files(sample):
        t = tables[f"s{index[id(sample)]:04d}"]
        labels = np.array([names.index(n) + 1 for n in t["label"]], dtype=int)
        return AtomTable(t["x"].to_numpy(), t["y"].to_numpy(), labels, t["probability"].to_numpy(),
                         np.full(len(t), -1))

    report = compare(samples, {"files": from_files, "memory": network_detector(net, card)}, radii_A=(0.5,),
                     class_names=card.class_names)
    out = {"model": card.name, "images": len(samples)}
    for name, r in report["detectors"].items():
        m = r["overall"]["0.5"]
        out[name] = {k: round(float(m[k]), 4) for k in ("f1", "precision", "recall", "rmse_pm")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
