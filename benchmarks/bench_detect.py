"""Detection speed and memory: a calibrated TIFF on disk to a written atom table.

Writes a noisy graphene-like lattice as a calibrated float32 TIFF, then times
`atomfinder.detection.batch.detect_files` (read, clean, resample, normalise,
tiled network, peaks, CSV + overlay PNG) for a 1024 x 1024 image (median after
a warm-up) and once for a 4096 x 4096 image, each in a fresh process so that
the peak resident memory is that image's. Uses the shipped `graphene` model, or
an untrained network of its architecture when none is installed (speed does not
depend on the weights). Prints one JSON object as its last line.

Memory bounds (issue 17.4): ``--huge 8192`` detects one 8192 x 8192 calibrated TIFF
and ``--stack 1000`` a 1000-frame stack (``--stack-px`` a side, a ``.npy`` file read
frame by frame through a memory map), each in a fresh process whose peak resident
memory (``ru_maxrss``) is reported; ``--only-memory`` skips the speed runs. The
inputs are written piece by piece by this process, so they never sit whole in the
measured one.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, {bench_dir!r})
from bench_infer import lattice_image
from atomfinder.detection.io import write_tiff_calibrated
from atomfinder.detection.batch import detect_files
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


MEMORY_CHILD = r"""
import json, resource, time
from pathlib import Path
import torch
from atomfinder.detection.batch import detect_files
from atomfinder.nn.card import ModelCard, list_models, save_model
from atomfinder.nn.unet import UNetConfig, build_model
torch.set_num_threads(2)
work, path, sampling = Path({work!r}), {path!r}, {sampling!r}
if "graphene" in list_models():
    model = "graphene"
else:
    arch = UNetConfig(in_channels=1, n_classes=2, depth=4, width=16)
    card = ModelCard(name="untrained", version="0", architecture=arch.to_dict(), in_channels=1, class_names=("C",),
                     sampling_A=0.1, normalization={{"kind": "local", "window_A": 12.0}})
    save_model(build_model(arch), card, work / "untrained")
    model = str(work / "untrained")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
detect_files([path], model, work / "out", sampling_A=sampling)
elapsed = time.perf_counter() - t
rows = sum(1 for _ in open(work / "out" / (Path(path).stem + ".csv"))) - 1
print(json.dumps({{"s": elapsed, "rows": rows, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_before_detect_mb": base}}))
"""


def lattice_rows(width: int, rows: range, sampling_A: float, rng: np.random.Generator) -> np.ndarray:
    """Rows ``rows`` of a noisy graphene-like honeycomb (1.42 Å bonds) ``width`` pixels wide."""
    a = 2.46
    y, x = np.mgrid[rows.start:rows.stop, 0:width] * sampling_A
    img = np.zeros(x.shape)
    for bx, by in ((0.0, 0.0), (a / 2, a / (2 * math.sqrt(3)))):
        u = (x - bx) / a
        v = (y - by) / (a * math.sqrt(3) / 2)
        du = (u - np.round(u - 0.5 * np.round(v)) - 0.5 * np.round(v)) * a
        dv = (v - np.round(v)) * a * math.sqrt(3) / 2
        img += np.exp(-(du**2 + dv**2) / (2 * 0.3**2))
    return rng.poisson(100 * (1 + 0.3 * img)).astype(np.float32)


def write_huge_tiff(path: Path, size: int, sampling_A: float) -> Path:
    """A ``size`` x ``size`` calibrated float32 TIFF, made in strips of 512 rows."""
    from atomfinder.detection.io import write_tiff_calibrated

    rng = np.random.default_rng(0)
    image = np.empty((size, size), dtype=np.float32)
    for r in range(0, size, 512):
        image[r:r + 512] = lattice_rows(size, range(r, min(r + 512, size)), sampling_A, rng)
    return write_tiff_calibrated(path, image, sampling_A)


def write_stack_npy(path: Path, frames: int, side: int, sampling_A: float) -> Path:
    """A ``frames`` x ``side`` x ``side`` float32 ``.npy`` stack, written frame by frame (a drifting lattice)."""
    rng = np.random.default_rng(0)
    big = lattice_rows(side + 64, range(0, side + 64), sampling_A, rng)
    stack = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(frames, side, side))
    for i in range(frames):
        dy, dx = (i // 8) % 64, i % 64
        stack[i] = rng.poisson(big[dy:dy + side, dx:dx + side]).astype(np.float32)
    stack.flush()
    del stack
    return path


def run_memory(path: Path, work: Path, sampling_A: float | None) -> dict:
    """Detect one input in a fresh process: seconds, table rows and peak resident memory."""
    code = MEMORY_CHILD.format(work=str(work), path=str(path), sampling=sampling_A)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "detection failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_bounds(huge: int, stack: int, stack_px: int, work: Path) -> dict:
    """Peak RSS of detecting a ``huge``-pixel square image and a ``stack``-frame stack (0: skipped)."""
    result: dict = {}
    if huge:
        (work / "huge").mkdir()
        tif = write_huge_tiff(work / "huge" / f"huge{huge}.tif", huge, 0.1)
        r = run_memory(tif, work / "huge", None)
        result |= {f"s_{huge}": round(r["s"], 1), f"atoms_{huge}": r["rows"],
                   f"peak_rss_mb_{huge}": round(r["peak_rss_mb"], 1)}
    if stack:
        (work / "stack").mkdir()
        npy = write_stack_npy(work / "stack" / f"stack{stack}.npy", stack, stack_px, 0.1)
        r = run_memory(npy, work / "stack", 0.1)
        result |= {f"s_stack_{stack}x{stack_px}": round(r["s"], 1), f"rows_stack_{stack}x{stack_px}": r["rows"],
                   f"peak_rss_mb_stack_{stack}x{stack_px}": round(r["peak_rss_mb"], 1),
                   "stack_file_mb": round((work / "stack" / f"stack{stack}.npy").stat().st_size / 2**20, 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4, help="1024-px runs (the first is the warm-up)")
    parser.add_argument("--skip-large", action="store_true", help="skip the 4096 x 4096 run")
    parser.add_argument("--huge", type=int, default=0, help="also detect one HUGE x HUGE image (e.g. 8192): peak RSS")
    parser.add_argument("--stack", type=int, default=0, help="also detect a stack of this many frames (e.g. 1000): peak RSS")
    parser.add_argument("--stack-px", type=int, default=256, help="side of the stack's frames (pixels)")
    parser.add_argument("--only-memory", action="store_true", help="only the --huge and --stack runs")
    args = parser.parse_args()
    if args.only_memory:
        with tempfile.TemporaryDirectory() as tmp:
            result = memory_bounds(args.huge, args.stack, args.stack_px, Path(tmp))
        print(json.dumps(result | {"cpu": platform.processor() or platform.machine()}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        small = run(1024, args.repeats, Path(tmp))
        large = None if args.skip_large else run(4096, 1, Path(tmp))
        memory = memory_bounds(args.huge, args.stack, args.stack_px, Path(tmp))
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
    print(json.dumps(result | memory))


if __name__ == "__main__":
    main()
