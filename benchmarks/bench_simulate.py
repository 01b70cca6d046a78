"""Simulation throughput: labelled images (or focal-series samples) per second.

Runs the real generator (`atomfinder.datasets.generate.generate_job`) on a
process pool of all CPUs, after a warm-up job per worker (abTEM import, numba
compilation and FFT planning happen once per worker process), and prints one
JSON object as its last line, e.g.

    {"system": "graphene", "images_per_s": 12.3, "samples_per_s": 12.3, "image_px": 256, ...}

For a focal-series system (mos2: 3 frames) `samples_per_s` counts series and
`images_per_s` counts frames.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor

from atomfinder.datasets.generate import default_config, generate_job


def _job(args):
    cfg, seed, job, n = args
    t = time.perf_counter()
    generate_job(cfg, seed, job, n)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", required=True, choices=["graphene", "gold", "mos2"])
    parser.add_argument("--jobs", type=int, default=None, help="timed jobs (default: 3 per worker)")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    cfg = default_config(args.system)
    spj = cfg.samples_per_job
    workers = args.workers
    jobs = args.jobs or 3 * workers
    with ProcessPoolExecutor(workers) as pool:
        # warm-up: one small job per worker
        list(pool.map(_job, [(cfg.to_dict(), 999, w, 1) for w in range(workers)]))
        t = time.perf_counter()
        per_job = list(pool.map(_job, [(cfg.to_dict(), 1, j, spj) for j in range(jobs)]))
        wall = time.perf_counter() - t
    samples = jobs * spj
    result = {
        "system": args.system,
        "samples_per_s": round(samples / wall, 3),
        "images_per_s": round(samples * cfg.frames / wall, 3),
        "image_px": cfg.image_px,
        "frames": cfg.frames,
        "samples": samples,
        "workers": workers,
        "wall_s": round(wall, 2),
        "median_job_s": round(sorted(per_job)[len(per_job) // 2], 3),
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
