"""What test-time augmentation gives a shipped model: the same card with and without it.

``detect_array(..., augment=True)`` averages the network's maps over the eight
symmetries of the square (quarter turns, with and without a mirror), for eight
times the network time. This check scores a model both ways on the same images
with the project's evaluator (0.5 Å matching, 0.5 Å edge band): F1, precision,
recall, label accuracy and per-class recall (precision), false detections per
10 nm², the expected calibration error of the card's confidence (calibrated
without augmentation) and, with a height head, heights exact and within ±1, and
the time per image.

    python benchmarks/check_tta.py --model mos2-focal \\
        --data data/mos2-test-1e3.zarr data/mos2-test-1e4.zarr data/mos2-test-1e5.zarr \\
        --out reports/mos2-focal/tta.md

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from atomfinder.analysis.evaluate import compare, network_detector, samples_from_store
from atomfinder.datasets.store import DatasetStore
from atomfinder.nn.card import load_model, resolve_model

RADIUS_KEY = "0.5"
BORDER_A = 0.5
MODES = ("plain", "augmented")


def figures(report: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The figures of one detector's report that the table shows."""
    o = report["overall"][RADIUS_KEY]
    out = {k: o.get(k) for k in ("f1", "precision", "recall", "label_accuracy", "fp_per_10nm2", "rmse_pm",
                                  "height_exact", "height_within1")}
    out["per_class"] = {n: (c["recall"], c["precision"]) for n, c in zip(names, o["per_class"])}
    out["ece"] = (report.get("trust") or {}).get("ece")
    out["seconds_per_image"] = report.get("seconds_per_image")
    return out


def _f(v: Any, digits: int = 3) -> str:
    return "–" if v is None or v != v else f"{v:.{digits}f}"  # v != v: NaN


def markdown(rows: list[dict[str, Any]], model_label: str, model: str, data: list[str], names: list[str]) -> str:
    """The rows as a Markdown page (overall table, then per class for a multi-class model)."""
    heights = any(_f(r["height_exact"]) != "–" for r in rows)
    head = ["store", "maps", "F1", "precision", "recall", "label accuracy", "false per 10 nm²", "RMSE (pm)",
            "ECE", "s / image"] + (["heights exact", "within ±1"] if heights else [])
    lines = [f"# Test-time augmentation: {model_label}", "",
             f"`python benchmarks/check_tta.py --model {model} --data {' '.join(map(str, data))}`", "",
             "The same card with the network's maps as they are (plain) and averaged over the eight "
             "symmetries of the square (augmented); the card's threshold, priors, confidence calibration "
             f"and floor were fitted on plain maps. {RADIUS_KEY} Å matching, a {BORDER_A} Å edge band.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["store"], r["mode"], _f(r["f1"], 4), _f(r["precision"], 4), _f(r["recall"], 4),
                 _f(r["label_accuracy"], 4), _f(r["fp_per_10nm2"], 2), _f(r["rmse_pm"], 1), _f(r["ece"], 4),
                 _f(r["seconds_per_image"], 2)]
        if heights:
            cells += [_f(r["height_exact"]), _f(r["height_within1"])]
        lines.append("| " + " | ".join(cells) + " |")
    if len(names) > 1:
        lines += ["", "Per class, recall (precision):", "",
                  "| store | maps | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        lines += [f"| {r['store']} | {r['mode']} | " + " | ".join(
            f"{_f(r['per_class'][n][0])} ({_f(r['per_class'][n][1])})" for n in names) + " |" for r in rows]
    return "\n".join(lines) + "\n"

def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    net, card = load_model(resolve_model(args.model))
    names = list(card.class_names)
    detectors = {m: network_detector(net, card, augment=(m == "augmented")) for m in MODES}
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    for data in args.data:
        out = compare(samples_from_store(DatasetStore(data)), detectors, radii_A=(0.5,), border_A=BORDER_A,
                      n_classes=len(names), class_names=names)
        for mode in MODES:
            rows.append({"store": Path(data).name, "mode": mode, **figures(out["detectors"][mode], names)})
            r = rows[-1]
            print(f"{r['store']} {mode}: F1 {_f(r['f1'], 4)} label accuracy {_f(r['label_accuracy'], 4)} "
                  f"false per 10 nm² {_f(r['fp_per_10nm2'], 2)} ECE {_f(r['ece'], 4)} "
                  f"{_f(r['seconds_per_image'], 2)} s/image ({time.time() - t0:.0f} s)", flush=True)
    if args.out:
        args.out.write_text(markdown(rows, f"{card.name} {card.version}", args.model, args.data, names))
    result = {"model": f"{card.name} {card.version}", "rows": rows, "seconds": round(time.time() - t0, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
