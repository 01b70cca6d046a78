"""Which particles does a gold model lose? Scores of an ``atomfinder evaluate`` report, by particle.

A gold store holds one particle per job (``draws_per_wave >= samples_per_job``),
so the per-image scores of a report can be grouped by particle. Each particle is
rebuilt from the store's own config and seed without imaging
(:func:`atomfinder.datasets.generate.job_structure`), which gives its shape, zone
axis, number of labelled and unresolved columns, thickness along the beam and
mistilt (and the resulting smear of a column, thickness x tan(mistilt), Å).
Prints a table and one JSON object as its last line.

    python benchmarks/check_gold_particles.py --report reports/gold/dose-1e4/report.json \
        --data data/gold-test-1e4.zarr
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from atomfinder.datasets.generate import SimulationConfig, job_structure
from atomfinder.datasets.store import DatasetStore


def particle_rows(report: dict, store: DatasetStore, radius_A: float = 0.5) -> list[dict]:
    """One row per particle (job): its structure and its pooled and median per-image scores."""
    config = SimulationConfig.from_dict(store.meta["config"])
    if config.system != "gold" or config.draws_per_wave < config.samples_per_job:
        raise SystemExit("check_gold_particles: needs a gold store with one particle per job")
    images = [r for r in report["detectors"]["network"]["images"] if abs(r["radius_A"] - radius_A) < 1e-9]
    per_job = config.samples_per_job
    rows = []
    for job in range(len(images) // per_job):
        info = job_structure(config, int(store.meta["seed"]), job).info
        mine = images[job * per_job:(job + 1) * per_job]
        tp, fp, fn = (sum(r[k] for r in mine) for k in ("tp", "fp", "fn"))
        thickness = float(info["extent_A"][2])
        rows.append({
            "job": job, "shape": info["shape"], "zone_axis": info["zone_axis"],
            "columns": info["n_columns"], "unresolved_columns": info.get("n_unresolved_columns", 0),
            "on_ceo2": info["support"] is not None, "thickness_A": thickness,
            "mistilt_deg": info["mistilt_deg"], "smear_A": thickness * math.tan(math.radians(info["mistilt_deg"])),
            "tp": tp, "fp": fp, "fn": fn, "f1": 2 * tp / max(2 * tp + fp + fn, 1),
            "median_image_f1": float(np.median([r["f1"] for r in mine])),
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--report", required=True, help="report.json of atomfinder evaluate")
    ap.add_argument("--data", required=True, help="the test store the report scored")
    ap.add_argument("--radius", type=float, default=0.5, help="matching radius (Å)")
    args = ap.parse_args()
    rows = particle_rows(json.load(open(args.report)), DatasetStore(args.data), args.radius)
    print(f"{'job':>3} {'shape':21} {'zone':5} {'cols':>4} {'unres':>5} {'CeO2':>4} {'thick Å':>7} {'tilt °':>6} "
          f"{'smear Å':>7} {'TP':>5} {'FP':>5} {'FN':>5} {'F1':>6} {'median':>6}")
    for r in rows:
        print(f"{r['job']:>3} {r['shape']:21} {r['zone_axis']:5} {r['columns']:>4} {r['unresolved_columns']:>5} "
              f"{'yes' if r['on_ceo2'] else 'no':>4} {r['thickness_A']:>7.1f} {r['mistilt_deg']:>6.2f} {r['smear_A']:>7.2f} "
              f"{r['tp']:>5} {r['fp']:>5} {r['fn']:>5} {r['f1']:>6.3f} {r['median_image_f1']:>6.3f}")
    print(json.dumps({"report": args.report, "radius_A": args.radius, "particles": rows}))


if __name__ == "__main__":
    main()
