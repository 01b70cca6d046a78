"""Threshold of the gold-ceria candidate on the 96 validation images of data/gold-train-4.zarr (0.4's split),
which neither 0.4 nor the ceria fine-tune trained on; the CLI only scans a model's own training store."""
import dataclasses
from atomfinder.analysis.thresholds import validation_threshold_scan, card_with_threshold
from atomfinder.datasets.store import DatasetStore
from atomfinder.nn.card import load_model, load_card, save_model, resolve_model
net, card = load_model("runs/gold-ceria/model")
general = load_card(resolve_model("gold"))
scan_card = dataclasses.replace(card, training=general.training)
store = DatasetStore("data/gold-train-4.zarr")
rows, n, r = validation_threshold_scan(net, scan_card, store, [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95])
for row in rows:
    print(f"{row['threshold']:.2f} P {row['precision']:.4f} R {row['recall']:.4f} F1 {row['f1']:.4f}")
new = card_with_threshold(card, rows, n, r, "data/gold-train-4.zarr")
print("images", n, "chosen", new.detection["threshold"])
save_model(net, new, "runs/gold-ceria/model")
