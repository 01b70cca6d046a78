"""The peers' side of ``benchmarks/compare.py``: AtomAI and Atomap in their own environment.

Runs inside ``.venv-peers`` (made by ``compare.py --setup-peers``), never inside
atomfinder's environment, and imports only numpy, the standard library, torch,
AtomAI and Atomap: atomfinder never imports a peer. torch is imported only by the
AtomAI commands (Atomap does not use it, and its import would count in Atomap's
memory). Every exchange is a file in a
work folder: ``.npy``/``.npz`` arrays in, ``.npz`` coordinates and one JSON
object (printed as the last line of stdout) out. Coordinates are ``(x, y)`` in
pixels (x = column, y = row, pixel centres at integers), atomfinder's convention.

Sub-commands::

    atomai-train   --work DIR --budget-cpu-s S      train_X.npy [n,1,h,w], train_y.npy [n,1,h,w] -> atomai.pt
    atomai-predict --work DIR                     images.npy [n,h,w] -> atomai_xy.npz
    atomap-refine  --work DIR --seeds NAME        images.npy, NAME.npz (xy per image, sign) -> NAME_refined.npz
    time           --work DIR --tool T --image F  warm-up + repeats on one image -> times, peak RSS,
                                                  RSS after the imports, device

AtomAI runs on ``--device`` (default ``cpu``; AtomAI itself would take CUDA
whenever it is present); the result names the device it ran on.

Images are scaled to [0, 1] per image here (AtomAI's own scaling works on the
whole stack at once); Atomap gets the image with the atoms made bright (the
seeds' ``sign``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np


def minmax(images: np.ndarray) -> np.ndarray:
    """Scale each image of ``[n, ...]`` to [0, 1] on its own (a flat image becomes 0)."""
    x = np.asarray(images, dtype=np.float32)
    axes = tuple(range(1, x.ndim))
    lo = x.min(axis=axes, keepdims=True)
    span = x.max(axis=axes, keepdims=True) - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)


def _torch_setup(threads: int):
    """torch with ``threads`` CPU threads: the AtomAI commands only."""
    import torch

    torch.set_num_threads(threads)
    return torch


def _segmentor(nb_classes: int = 1, device: str = "cpu"):
    """AtomAI's ``Segmentor("Unet")`` on ``device`` (AtomAI picks CUDA by itself whenever present)."""
    from atomai.models import Segmentor

    model = Segmentor("Unet", nb_classes=nb_classes)
    model.device = device
    model.net.to(device)
    return model


def atomai_train(work: Path, budget_cpu_s: float, batch_size: int, threads: int, seed: int,
                 device: str = "cpu") -> dict:
    """Train AtomAI's ``Segmentor("Unet")`` for about ``budget_cpu_s`` seconds of CPU time.

    The budget is this process's CPU time (all its threads), so that a machine
    shared with other work does not shorten the training: ``threads`` cores for
    ``budget_cpu_s / threads`` seconds of wall time on an idle machine. A short
    first fit (10 mini-batches) measures the CPU time per cycle; further fits on
    the same network, each at most a tenth of the budget and planned from the CPU
    time per cycle measured so far, spend the rest. All count towards it, and the
    calibration always runs: a budget shorter than 10 mini-batches is overrun (the
    result's ``cpu_seconds`` says by how much). Saves the weights to ``work/atomai.pt``
    (by rename).
    """
    torch = _torch_setup(threads)
    torch.manual_seed(seed)
    x = minmax(np.load(work / "train_X.npy"))
    y = (np.load(work / "train_y.npy") > 0.5).astype(np.float32)
    n_test = max(batch_size, len(x) // 20)  # AtomAI needs a whole test mini-batch
    xt, yt, xv, yv = x[n_test:], y[n_test:], x[:n_test], y[:n_test]
    model = _segmentor(device=device)
    start, start_cpu = time.perf_counter(), time.process_time()
    calibration = 10
    model.fit(xt, yt, xv, yv, training_cycles=calibration, batch_size=batch_size, rotation=True,
              print_loss=calibration, filename=str(work / "atomai_cal"))
    done = calibration
    per_cycle = (time.process_time() - start_cpu) / calibration
    # fits of at most a tenth of the budget, each planned from the CPU time per cycle measured
    # so far: a cycle's cost changes when the machine's load does, and one long fit planned
    # from the first 10 cycles spent 36 of 60 CPU-minutes on a shared machine (2026-12-07)
    while (cycles := int((budget_cpu_s - (time.process_time() - start_cpu)) / per_cycle)) > 0:
        cycles = min(cycles, max(1, int(0.1 * budget_cpu_s / per_cycle)))
        model.fit(xt, yt, xv, yv, training_cycles=cycles, batch_size=batch_size, rotation=True,
                  print_loss=max(1, cycles // 2), filename=str(work / "atomai"))
        done += cycles
        per_cycle = (time.process_time() - start_cpu) / done
        print(f"atomai-train: {done} mini-batches, {time.process_time() - start_cpu:.0f} of {budget_cpu_s:.0f} "
              f"CPU-s, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    torch.save(model.net.state_dict(), work / "atomai.pt.part")
    os.replace(work / "atomai.pt.part", work / "atomai.pt")
    return {"cycles": done, "batch_size": batch_size, "seconds": seconds,
            "cpu_seconds": cpu_seconds, "budget_cpu_s": budget_cpu_s, "train_images": int(len(xt)),
            "threads": threads, "device": str(model.device)}


def _trained_segmentor(work: Path, device: str = "cpu"):
    """The trained network in evaluation mode.

    A new ``Segmentor``'s network is in training mode, and AtomAI's ``predict`` ran the
    first image through it so: BatchNorm used that one image's statistics and overwrote
    its running statistics with them, so every later prediction was off too. On
    mos2-focal's own training images the network then marked 0.004-0.24 of the mask
    pixels on average instead of 0.61-0.86 (2026-12-07).
    """
    import torch

    model = _segmentor(device=device)
    weights = work / "atomai.pt"
    if weights.exists():
        model.net.load_state_dict(torch.load(weights, map_location=model.device))
    model.net.eval()
    return model


def atomai_locate(model, image: np.ndarray, threshold: float) -> np.ndarray:
    """AtomAI's own coordinate finder (Locator: threshold, centre of mass) on one image; ``(x, y)`` px."""
    _, coords = model.predict(minmax(image[None])[0], norm=False, compute_coords=True, thresh=threshold,
                              verbose=False)
    c = np.asarray(coords[0]).reshape(-1, 3)
    return c[:, [1, 0]].astype(np.float64)  # AtomAI gives (row, col, class)


def atomai_predict(work: Path, threads: int, threshold: float, device: str = "cpu") -> dict:
    """Locate atoms in every image of ``images.npy`` with the trained model -> ``atomai_xy.npz``."""
    _torch_setup(threads)
    model = _trained_segmentor(work, device)
    images = np.load(work / "images.npy")
    out, seconds = {}, []
    for i, image in enumerate(images):
        t = time.perf_counter()
        out[f"img{i}"] = atomai_locate(model, image, threshold)
        seconds.append(time.perf_counter() - t)
    np.savez(work / "atomai_xy.npz", **out)
    return {"n_images": len(images), "seconds": seconds, "device": str(model.device)}


def atomap_refine_one(image: np.ndarray, xy: np.ndarray, sign: float) -> np.ndarray:
    """Atomap's 2-D Gaussian refinement of seed positions ``xy`` (px) on one image (atoms bright).

    Atomap links each atom to its 9 nearest neighbours (which set the fit region) and
    fails with fewer seeds; an image with 2-9 seeds uses as many neighbours as it has.
    """
    from atomap.api import Sublattice

    if len(xy) < 2:
        return np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    img = sign * np.asarray(image, dtype=np.float64)
    img = img - img.min()
    sub = Sublattice(np.asarray(xy, dtype=np.float64), img, fix_negative_values=True)
    sub.find_nearest_neighbors(nearest_neighbors=min(9, len(xy)))
    sub.refine_atom_positions_using_2d_gaussian(show_progressbar=False)
    return np.column_stack([sub.x_position, sub.y_position]).astype(np.float64)


def atomap_refine(work: Path, seeds: str) -> dict:
    """Refine the seeds ``work/<seeds>.npz`` (``img<i>`` xy and ``sign<i>``) -> ``<seeds>_refined.npz``.

    An image on which Atomap raises keeps its seeds unrefined; ``failed`` lists
    those images with Atomap's error, so the report can say so.
    """
    images = np.load(work / "images.npy")
    data = np.load(work / f"{seeds}.npz")
    out, seconds, failed = {}, [], []
    for i, image in enumerate(images):
        t = time.perf_counter()
        xy = data[f"img{i}"]
        try:
            out[f"img{i}"] = atomap_refine_one(image, xy, float(data[f"sign{i}"]))
        except Exception as exc:  # noqa: BLE001 - any failure of the peer is reported, not fatal
            out[f"img{i}"] = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
            failed.append({"image": i, "seeds": int(len(xy)), "error": f"{type(exc).__name__}: {exc}"[:200]})
        seconds.append(time.perf_counter() - t)
    np.savez(work / f"{seeds}_refined.npz", **out)
    return {"n_images": len(images), "seconds": seconds, "failed": failed}


def timing(work: Path, tool: str, image_file: str, repeats: int, threads: int, threshold: float,
           device: str = "cpu") -> dict:
    """Median wall time of image -> atom table after one warm-up, and the process's peak RSS.

    ``atomai``: the trained network (or an untrained one: speed does not depend on
    the weights) with its coordinate finder, on ``device``. ``atomap``: Gaussian
    refinement of the seeds in ``<image>_seeds.npz`` (the conventional peak
    finder's, made by the caller), so the figure is Atomap's refinement alone; on
    the CPU (numpy and scipy), without torch.

    ``import_rss_mb`` is the process's resident memory after the tool's imports and
    before any work: the part of the peak that importing the tool costs.
    """
    if tool == "atomai":
        _torch_setup(threads)
        import atomai.models  # noqa: F401 - imported before the baseline is read
    elif tool == "atomap":
        import atomap.api  # noqa: F401
    else:
        raise ValueError(f"unknown tool {tool!r}")
    import_rss = rss_mb()
    image = np.load(work / image_file)
    if tool == "atomai":
        model = _trained_segmentor(work, device)
        used = str(model.device)
        run = lambda: atomai_locate(model, image, threshold)  # noqa: E731
    else:
        seeds = np.load(work / (Path(image_file).stem + "_seeds.npz"))
        used = "cpu"
        run = lambda: atomap_refine_one(image, seeds["xy"], float(seeds["sign"]))  # noqa: E731
    times, n_atoms = [], 0
    for _ in range(repeats + 1):
        t = time.perf_counter()
        n_atoms = len(run())
        times.append(time.perf_counter() - t)
    return {"tool": tool, "times_s": times, "atoms": n_atoms, "peak_rss_mb": peak_rss_mb(),
            "import_rss_mb": import_rss, "device": used, "threshold": threshold if tool == "atomai" else None,
            "torch_imported": "torch" in sys.modules}


def _status_mb(field: str) -> float | None:
    """A memory field of ``/proc/self/status`` in MB (None where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB): ``VmHWM`` on Linux, which, unlike
    ``ru_maxrss``, does not carry over the parent's peak across ``fork`` + ``exec``."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's resident memory now (MB): ``VmRSS`` on Linux, else the peak so far."""
    now = _status_mb("VmRSS")
    return now if now is not None else peak_rss_mb()


def versions() -> dict:
    """Versions of the peers and of torch in this environment."""
    from importlib.metadata import version

    import atomai  # noqa: F401 - fails here, not later, when an import dependency is missing
    import atomap.api  # noqa: F401
    import torch

    return {"atomai": version("atomai"), "atomap": version("atomap"), "torch": torch.__version__,
            "cuda_available": bool(torch.cuda.is_available()), "python": sys.version.split()[0]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("atomai-train", "atomai-predict", "atomap-refine", "time", "versions"))
    ap.add_argument("--work", type=Path, default=Path("."))
    ap.add_argument("--budget-cpu-s", type=float, default=3600.0, help="AtomAI training CPU time (s)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.5, help="AtomAI Locator threshold")
    ap.add_argument("--seeds", default="seeds_baseline")
    ap.add_argument("--tool", default="atomai")
    ap.add_argument("--image", default="timing.npy")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="AtomAI's device (cpu, cuda)")
    a = ap.parse_args(argv)
    if a.command == "atomai-train":
        result = atomai_train(a.work, a.budget_cpu_s, a.batch_size, a.threads, a.seed, a.device)
    elif a.command == "atomai-predict":
        result = atomai_predict(a.work, a.threads, a.threshold, a.device)
    elif a.command == "atomap-refine":
        result = atomap_refine(a.work, a.seeds)
    elif a.command == "time":
        result = timing(a.work, a.tool, a.image, a.repeats, a.threads, a.threshold, a.device)
    else:
        result = versions()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
