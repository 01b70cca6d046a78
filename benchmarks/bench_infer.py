"""Inference speed: a 1024 x 1024 image to probability maps and an atom table.

Uses a shipped model by name (default `graphene`) or, if none is installed, an
untrained network of the graphene recipe's architecture (speed does not depend
on the weights; the JSON says which was used). Times `detect_array`
(resampling, normalisation, tiled network, peak finding) on a simulated-looking
lattice image, reports the median after warm-up and the peak resident memory.
Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import numpy as np
import torch

from atomfinder.detection.pipeline import detect_array
from atomfinder.nn.card import ModelCard, list_models, load_model, resolve_model
from atomfinder.nn.unet import UNetConfig, build_model


def lattice_image(size: int, sampling_A: float, rng: np.random.Generator) -> np.ndarray:
    """A noisy honeycomb of Gaussian atoms (1.42 Å bonds)."""
    a = 2.46
    y, x = np.mgrid[0:size, 0:size] * sampling_A
    img = np.zeros((size, size))
    for bx, by in ((0.0, 0.0), (a / 2, a / (2 * np.sqrt(3)))):
        u = (x - bx) / a
        v = (y - by) / (a * np.sqrt(3) / 2)
        du = (u - np.round(u - 0.5 * np.round(v)) - 0.5 * np.round(v)) * a
        dv = (v - np.round(v)) * a * np.sqrt(3) / 2
        img += np.exp(-(du**2 + dv**2) / (2 * 0.3**2))
    return rng.poisson(100 * (1 + 0.3 * img)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="graphene")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.model in list_models() or not args.model.isidentifier():
        model, card = load_model(resolve_model(args.model))
        which = args.model
    else:
        arch = UNetConfig(in_channels=1, n_classes=2, depth=4, width=16)
        model = build_model(arch)
        card = ModelCard(name="untrained", version="0", architecture=arch.to_dict(), in_channels=1,
                         class_names=("C",), sampling_A=0.1, normalization={"kind": "local", "window_A": 12.0})
        which = "untrained graphene architecture (no shipped model found)"
    image = lattice_image(args.size, card.sampling_A, np.random.default_rng(0))
    detect_array(model, card, image, card.sampling_A)  # warm-up
    times = []
    n_atoms = 0
    for _ in range(args.repeats):
        t = time.perf_counter()
        result = detect_array(model, card, image, card.sampling_A)
        n_atoms = len(result.to_frame())
        times.append(time.perf_counter() - t)
    print(json.dumps({
        "model": which,
        "image_px": args.size,
        "median_ms": round(1000 * float(np.median(times)), 1),
        "atoms": n_atoms,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }))


if __name__ == "__main__":
    main()
