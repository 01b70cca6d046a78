"""Detection speed and memory: a calibrated TIFF on disk to a written atom table.

Writes a noisy graphene-like lattice as a calibrated float32 TIFF, then times
`atomfinder.detection.run.detect_files` (read, clean, resample, normalise,
tiled network, peaks, CSV + overlay PNG) for a 1024 x 1024 image (median after
a warm-up) and once for a 4096 x 4096 image, each in a fresh process so that
the peak resident memory is that image's. Uses the shipped `graphene` model, or
an untrained network of its architecture when none is installed (speed does not
depend on the weights). Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, {bench_dir!r})
from bench_infer import lattice_image
from atomfinder.detection.io import write_tiff_calibrated
from atomfinder.detection.run import detect_files
from atomfinder.nn.card import ModelCard, list_models, save_model
from atomfinder.nn.unet import UNetConfig, build_model
torch.set_num_threads(2)
size, repeats, work = {size}, {repeats}, Path({work!r})
if "graphene" in list_models():
    model, which = "graphene", "graphene"
else:
    arch = UNetConfig(in_channels=1, n_classes=2, depth=4, width=16)
    card = ModelCard(name="untrained", version="0", architecture=arch.to_dict(), in_channels=1, class_names=("C",),
                     sampling_A=0.1, normalization={{"kind": "local", "window_A": 12.0}})
    save_model(build_model(arch), card, work / "untrained")
    model, which = str(work / "untrained"), "untrained graphene architecture (no shipped model found)"
path = write_tiff_calibrated(work / f"lattice{{size}}.tif", lattice_image(size, 0.1, np.random.default_rng(0)), 0.1)
times = []
for i in range(repeats):
    t = time.perf_counter()
    detect_files([path], model, work / f"out{{i}}")
    times.append(time.perf_counter() - t)
atoms = sum(1 for _ in open(work / "out0" / f"lattice{{size}}.csv")) - 1
print(json.dumps({{"model": which, "times_s": times, "atoms": atoms,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run(size: int, repeats: int, work: Path) -> dict:
    code = CHILD.format(size=size, repeats=repeats, work=str(work), bench_dir=str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4, help="1024-px runs (the first is the warm-up)")
    parser.add_argument("--skip-large", action="store_true", help="skip the 4096 x 4096 run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small = run(1024, args.repeats, Path(tmp))
        large = None if args.skip_large else run(4096, 1, Path(tmp))
    result = {
        "model": small["model"],
        "median_s_1024": round(sorted(small["times_s"][1:])[len(small["times_s"][1:]) // 2], 3),
        "atoms_1024": small["atoms"],
        "peak_rss_mb_1024": round(small["peak_rss_mb"], 1),
        "cpu": platform.processor() or platform.machine(),
    }
    if large:
        result |= {"s_4096": round(large["times_s"][0], 2), "atoms_4096": large["atoms"],
                   "peak_rss_mb_4096": round(large["peak_rss_mb"], 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
