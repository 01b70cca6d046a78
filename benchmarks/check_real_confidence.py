"""Confidence on the bundled real micrograph: contaminated corner against clean lattice.

The example (``examples/graphene_defect_hrtem.tif``, 0.108 Å/px) has a top-left
corner where amorphous carbon hides the lattice and clean lattice elsewhere. The
script runs the model, compares the confidence and error-bar distributions of the
detections in the corner (x < 100, y < 130 px) and in a clean region
(250 <= x < 410, 300 <= y < 460 px, the region the real-data tests use), writes a
Markdown table and a figure (overlay coloured by confidence, histograms), and ends
with one JSON line.

    python benchmarks/check_real_confidence.py --model graphene \
        --out reports/graphene/real-example.md --figure docs/real-confidence.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile

import atomfinder

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "graphene_defect_hrtem.tif"
SAMPLING_A = 0.108
REGIONS = {"contaminated corner": (0, 100, 0, 130), "clean lattice": (250, 410, 300, 460)}  # x0, x1, y0, y1 (px)


def summary(values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return {"n": 0}
    q = np.percentile(v, [10, 25, 50, 75, 90])
    return {"n": int(len(v)), "mean": float(v.mean()), "p10": q[0], "p25": q[1], "median": q[2], "p75": q[3], "p90": q[4]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="graphene")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--figure", type=Path)
    args = ap.parse_args()
    image = tifffile.imread(EXAMPLE).astype(np.float32)
    table, _ = atomfinder.detect(image, model=args.model, sampling=SAMPLING_A)
    x, y = table["x"].to_numpy(), table["y"].to_numpy()
    conf, sigma = table["confidence"].to_numpy(), 100.0 * table["sigma_angstrom"].to_numpy()
    rows = {}
    for name, (x0, x1, y0, y1) in REGIONS.items():
        m = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
        rows[name] = {"confidence": summary(conf[m]), "sigma_pm": summary(sigma[m]),
                      "share_below_0.5": float(np.mean(conf[m] < 0.5)) if m.any() else None}
    rows["whole image"] = {"confidence": summary(conf), "sigma_pm": summary(sigma),
                           "share_below_0.5": float(np.mean(conf < 0.5)) if len(conf) else None}
    model = table.attrs.get("provenance", {}).get("model", {})
    name = f"{model.get('name', args.model)} {model.get('version', '')}".strip()
    if args.out:
        f = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
        lines = [f"# Confidence on the real example ({name})", "",
                 f"`{EXAMPLE.name}` at {SAMPLING_A} Å/px: {len(table)} detections. Regions in input pixels: "
                 "contaminated corner x < 100, y < 130 (amorphous carbon over the lattice); clean lattice "
                 "250 ≤ x < 410, 300 ≤ y < 460. `benchmarks/check_real_confidence.py`.", "",
                 "| region | atoms | confidence: median | 10th pct | 25th pct | share < 0.5 | σ median (pm) | σ 90th pct (pm) |",
                 "|---|---|---|---|---|---|---|---|"]
        for region, r in rows.items():
            c, s = r["confidence"], r["sigma_pm"]
            lines.append(f"| {region} | {c['n']} | {f(c.get('median'))} | {f(c.get('p10'))} | {f(c.get('p25'))} | "
                         f"{f(r['share_below_0.5'])} | {f(s.get('median'), 1)} | {f(s.get('p90'), 1)} |")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        from atomfinder._figures import save_figure

        fig, (ax, ah) = plt.subplots(1, 2, figsize=(10, 4.6), gridspec_kw={"width_ratios": [1.1, 1]})
        lo, hi = np.percentile(image, [1, 99])
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
        sc = ax.scatter(x, y, c=conf, s=10, cmap="viridis", vmin=0, vmax=1, edgecolors="none")
        for region, (x0, x1, y0, y1) in REGIONS.items():
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="w", lw=1.2, ls="--"))
            ax.text(x0 + 3, y1 - 6, region, color="w", fontsize=8)
        ax.set_axis_off()
        fig.colorbar(sc, ax=ax, fraction=0.046, label="confidence")
        bins = np.linspace(0, 1, 21)
        for region, (x0, x1, y0, y1) in REGIONS.items():
            m = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
            ah.hist(conf[m], bins=bins, alpha=0.6, label=f"{region} ({m.sum()})", density=True)
        ah.set_xlabel("confidence")
        ah.set_ylabel("density")
        ah.legend(fontsize=8)
        ah.set_title(f"{name} on the real example", fontsize=9)
        save_figure(fig, args.figure)
    print(json.dumps({"model": name, "n_atoms": int(len(table)), "regions": rows}))


if __name__ == "__main__":
    main()
