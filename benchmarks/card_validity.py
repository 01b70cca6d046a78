"""The validity range of a model card, for cards made before training recorded it.

Training (``atomfinder train``) stores ``card.validity`` itself: the imaging range
read from the recipe's simulation config (:func:`atomfinder.nn.validity.validity_range`)
and the contrast-to-noise range of its training images that hold atoms
(:func:`atomfinder.nn.validity.contrast_reference`), which the per-image validity
checks of ``atomfinder detect`` compare against. For an older card this script
measures that range on a store simulated with the card's own recipe (its
``training.data.simulation``, a seed of its own), normalised as the card says, and
with ``--write-card`` adds the ``validity`` key to the card: every other byte of
the card file stays as it was. Prints one JSON object (the validity) as its last line.

    python -c "import json; c = json.load(open('src/atomfinder/models/graphene.json')); \
        json.dump({'simulation': c['training']['data']['simulation']}, open('/tmp/graphene-sim.json', 'w'))"
    atomfinder simulate --system graphene --config /tmp/graphene-sim.json --n 256 --seed 12 --out /tmp/gr256.zarr
    python benchmarks/card_validity.py --model src/atomfinder/models/graphene --data /tmp/gr256.zarr --write-card
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from atomfinder._files import atomic_write
from atomfinder.datasets.store import DatasetStore
from atomfinder.nn.card import load_card, resolve_model
from atomfinder.nn.normalization import apply_normalization
from atomfinder.nn.validity import CONTRAST_MAX_IMAGES, card_validity


def measured_validity(card, store: DatasetStore, store_path: str) -> dict:
    """The card's validity range with the contrast-to-noise range measured on ``store``
    (at most :data:`~atomfinder.nn.validity.CONTRAST_MAX_IMAGES` evenly spaced images)."""
    sim = card.training["data"]["simulation"]
    pick = np.unique(np.linspace(0, len(store) - 1, min(len(store), CONTRAST_MAX_IMAGES)).round().astype(int))
    idx = store.indices[pick]
    images = store.array("images", idx).astype(np.float32)
    sampling = store.array("sampling_A", idx).astype(np.float64)
    for i in range(len(images)):
        images[i] = apply_normalization(images[i], card.normalization, float(sampling[i]))
    has_atoms = store.array("n_sites", idx) > 0
    source = (f"the {int(has_atoms.sum())} of {len(images)} images that hold atoms, simulated with this card's "
              f"training.data.simulation (seed {store.meta['seed']}; {Path(store_path).name})")
    return card_validity(sim, images, sampling, has_atoms, source=source)


def with_validity(card_text: str, validity: dict) -> str:
    """The card's JSON text with ``validity`` added before ``created``, all else unchanged.

    Raises
    ------
    ValueError
        When the card is not in the canonical layout (indent 2), so that rewriting it
        would change other bytes.
    """
    data = json.loads(card_text)
    if json.dumps(data, indent=2) + "\n" != card_text:
        raise ValueError("the card is not in the canonical JSON layout; refusing to rewrite it")
    out = {}
    for key, value in data.items():
        if key == "created":
            out["validity"] = validity
        if key != "validity":
            out[key] = value
    if "validity" not in out:
        out["validity"] = validity
    return json.dumps(out, indent=2) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model name or stem")
    parser.add_argument("--data", required=True, help="store simulated with the card's recipe (own seed)")
    parser.add_argument("--write-card", action="store_true", help="add the validity key to the card")
    args = parser.parse_args()
    stem = resolve_model(args.model)
    card = load_card(stem)
    store = DatasetStore(args.data)
    if tuple(store.class_names) != tuple(card.class_names):
        raise SystemExit(f"{args.data}: classes {store.class_names} differ from the card's {card.class_names}")
    validity = measured_validity(card, store, args.data)
    if args.write_card:
        path = Path(stem).with_name(Path(stem).name + ".json")
        text = with_validity(path.read_text(encoding="utf-8"), validity)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    print(json.dumps(validity, ensure_ascii=False))


if __name__ == "__main__":
    main()
