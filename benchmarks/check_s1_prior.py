"""What the `S1` recall of a MoS2 focal-series model costs: its class prior shifted.

The shipped ``mos2-focal`` card labels each detection by the argmax of
``log p(class) + class_log_bias`` within its sublattice; the priors were fitted by
maximum likelihood on the calibration series (``atomfinder calibrate``), not for
any one class's recall. Raising the prior of ``S1`` (one sulfur of the column
missing) trades ``S`` and ``S_vacancy`` columns called ``S1`` for ``S1`` sites
found. This check measures that trade on whole stores: for each shift of the
``S1`` log-prior it runs the model with that card (everything else as shipped)
and prints, per store, the ``S1`` recall and precision, the label accuracy of the
matched detections and the recall of ``S`` and ``S_vacancy`` (0.5 Å matching,
0.5 Å edge band, as the model's reports). The shifts are judged on the
calibration store; the test stores show whether that holds on independent series.

    python benchmarks/check_s1_prior.py --model mos2-focal \\
        --data data/mos2-calib.zarr data/mos2-test-1e3.zarr data/mos2-test-1e4.zarr data/mos2-test-1e5.zarr \\
        --shifts 0 0.25 0.5 0.75 1 1.5 --out reports/mos2-focal/s1-prior.md

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from atomfinder.analysis.evaluate import compare, network_detector, samples_from_store
from atomfinder.datasets.store import DatasetStore
from atomfinder.nn.card import load_model, resolve_model

RADIUS_KEY = "0.5"
BORDER_A = 0.5


def shifted_card(card: Any, class_name: str, shift: float) -> Any:
    """The card with ``shift`` added to the log-prior of ``class_name``."""
    bias = list(card.detection.get("class_log_bias") or [0.0] * len(card.class_names))
    bias[list(card.class_names).index(class_name)] += float(shift)
    return dataclasses.replace(card, detection={**card.detection, "class_log_bias": bias})


def class_figures(overall: dict[str, Any], names: list[str]) -> dict[str, float]:
    """S1 recall and precision, label accuracy, S and S_vacancy recall from a report's overall block."""
    per = {n: c for n, c in zip(names, overall["per_class"])}
    return {
        "s1_recall": per["S1"]["recall"], "s1_precision": per["S1"]["precision"],
        "label_accuracy": overall["label_accuracy"], "s_recall": per["S"]["recall"],
        "s_vacancy_recall": per["S_vacancy"]["recall"], "n_s1": per["S1"]["n_true"], "f1": overall["f1"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mos2-focal")
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--shifts", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.5])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    path = resolve_model(args.model)
    net, card = load_model(path)
    names = list(card.class_names)
    detectors = {f"{s:+g}": network_detector(net, shifted_card(card, "S1", s)) for s in args.shifts}
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    for data in args.data:
        store = DatasetStore(data)
        out = compare(samples_from_store(store), detectors, radii_A=(0.5,), border_A=BORDER_A,
                      n_classes=len(names), class_names=names)
        for key, rep in out["detectors"].items():
            rows.append({"store": Path(data).name, "shift": float(key), **class_figures(rep["overall"][RADIUS_KEY], names)})
            r = rows[-1]
            print(f"{r['store']} S1 prior {key}: S1 recall {r['s1_recall']:.3f} precision {r['s1_precision']:.3f} "
                  f"label accuracy {r['label_accuracy']:.4f} S recall {r['s_recall']:.4f} "
                  f"S_vacancy recall {r['s_vacancy_recall']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    if args.out:
        lines = [
            f"# `S1` prior shifted: {card.name} {card.version}", "",
            "`python benchmarks/check_s1_prior.py --model " + args.model + " --data " + " ".join(args.data)
            + " --shifts " + " ".join(f"{s:g}" for s in args.shifts) + "`", "",
            "The card's `class_log_bias` of `S1` raised by the shift (everything else as shipped); "
            f"{RADIUS_KEY} Å matching, a {BORDER_A} Å edge band. Label accuracy: share of matched detections "
            "with the true class.", "",
            "| store | S1 prior shift | S1 recall | S1 precision | label accuracy | S recall | S_vacancy recall | F1 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [f"| {r['store']} | {r['shift']:+g} | {r['s1_recall']:.3f} | {r['s1_precision']:.3f} | "
                  f"{r['label_accuracy']:.4f} | {r['s_recall']:.4f} | {r['s_vacancy_recall']:.3f} | {r['f1']:.4f} |"
                  for r in rows]
        args.out.write_text("\n".join(lines) + "\n")
    result = {"model": f"{card.name} {card.version}", "rows": rows, "seconds": round(time.time() - t0, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
