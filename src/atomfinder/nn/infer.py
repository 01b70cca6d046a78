"""Tiled, memory-bounded inference with seamless blending.

An image of any size is cut into overlapping tiles (at most ``tile`` pixels a side)
whose origins are multiples of the model's ``size_multiple`` (``2**depth``), so every
tile sees the same pooling grid as the whole image would. Each tile's softmax output
is weighted by a separable window that is

* 0 within ``margin`` pixels of an edge shared with a neighbouring tile (where the
  tile's zero padding corrupts the output),
* a raised-cosine ramp across the rest of the overlap, and
* 1 elsewhere and along the image's own border,

and the weighted outputs are summed and divided by the summed weights. The ramps of
two neighbours add to exactly 1, so the result is a convex blend with no seams; for a
model whose normalisation is per-pixel in eval mode (``"batch"`` or ``"none"``) and
whose receptive-field radius is within ``margin``, tiled and whole-image predictions
agree to float precision. (``"group"``/``"instance"`` norms use per-tile statistics,
so their tiles differ slightly, which the blending hides.)
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn


def _ramp(n_overlap: int, margin: int) -> np.ndarray:
    """Weights rising from 0 to 1 over ``n_overlap`` pixels, 0 for the first ``margin``.

    ``r[i] + r[n_overlap - 1 - i] == 1`` for every ``i``.
    """
    i = np.arange(n_overlap, dtype=np.float64)
    width = n_overlap - 2 * margin
    t = np.clip((i - margin + 0.5) / width, 0.0, 1.0)
    return np.sin(0.5 * np.pi * t) ** 2


def _starts(size: int, tile: int, step: int) -> list[int]:
    """Tile origins ``0, step, 2 step, ...`` until a tile reaches the end."""
    starts = [0]
    while starts[-1] + tile < size:
        starts.append(starts[-1] + step)
    return starts


def _window_1d(start: int, length: int, size: int, n_overlap: int, margin: int) -> np.ndarray:
    """Blending weights along one axis for a tile ``[start, start + length)``."""
    w = np.ones(length, dtype=np.float64)
    r = _ramp(n_overlap, margin)
    if start > 0:
        w[:n_overlap] *= r
    if start + length < size:
        w[-n_overlap:] *= r[::-1]
    return w


def _auto_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def predict(
    model: nn.Module,
    image: np.ndarray,
    device: str | torch.device | None = None,
    tile: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    *,
    margin: int | None = None,
    height_mode: str = "expected",
) -> dict[str, np.ndarray]:
    """Per-class probabilities (and column heights) for a normalised image.

    Parameters
    ----------
    model : nn.Module
        A :class:`~atomfinder.nn.unet.UNet` (or anything returning ``{"logits": ...}``).
        It is moved to ``device`` and run in eval mode; its train/eval flag is
        restored afterwards.
    image : ndarray, shape (C, H, W) or (H, W)
        Normalised float32 image (see :mod:`atomfinder.nn.normalization`), already at
        the model's sampling.
    device : str or torch.device, optional
        Defaults to CUDA when available, else CPU. Mixed precision (autocast) is used
        on CUDA only.
    tile : int
        Largest tile side in pixels.
    overlap : int
        Minimum overlap of neighbouring tiles in pixels (the actual overlap is
        ``tile - step``, with ``step`` rounded down to a multiple of the model's
        ``size_multiple``).
    batch_size : int
        Tiles per forward pass.
    margin : int, optional
        Pixels next to an inner tile edge that get zero weight (default
        ``overlap // 4``). Must be less than half the overlap.
    height_mode : {"expected", "argmax"}
        How to turn the height head's probabilities into a height map.

    Returns
    -------
    dict
        ``"probabilities"``: float32 ``[k, H, W]`` softmax probabilities (class 0 =
        background). With a height head also ``"height"``: float32 ``[H, W]``, the
        expected height ``sum_h h p(h)`` or the most probable height.
    """
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected a [C, H, W] image, got shape {x.shape}")
    if height_mode not in ("expected", "argmax"):
        raise ValueError(f"height_mode must be 'expected' or 'argmax', got {height_mode!r}")
    _, H, W = x.shape
    align = int(getattr(model, "size_multiple", 1))
    step = ((tile - overlap) // align) * align
    if step <= 0:
        raise ValueError(
            f"tile={tile} must exceed overlap={overlap} by at least the model's size multiple {align}"
        )
    n_overlap = tile - step
    margin = n_overlap // 4 if margin is None else int(margin)
    if not 0 <= 2 * margin < n_overlap:
        raise ValueError(f"margin={margin} must be >= 0 and less than half the overlap {n_overlap}")

    dev = _auto_device(device)
    was_training = model.training
    model.to(dev).eval()
    amp = torch.autocast("cuda", dtype=torch.float16) if dev.type == "cuda" else nullcontext()

    # Group tiles by shape so each batch stacks (edge tiles may be smaller).
    groups: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for r0 in _starts(H, tile, step):
        for c0 in _starts(W, tile, step):
            groups[(min(tile, H - r0), min(tile, W - c0))].append((r0, c0))

    probs = None
    hprobs = None
    wsum = np.zeros((H, W), dtype=np.float32)
    try:
        with torch.inference_mode():
            for (th, tw), origins in groups.items():
                for b in range(0, len(origins), batch_size):
                    batch = origins[b : b + batch_size]
                    xb = np.stack([x[:, r0 : r0 + th, c0 : c0 + tw] for r0, c0 in batch])
                    with amp:
                        out = model(torch.from_numpy(xb).to(dev))
                    p = torch.softmax(out["logits"].float(), dim=1).cpu().numpy()
                    hp = None
                    if "height_logits" in out:
                        hp = torch.softmax(out["height_logits"].float(), dim=1).cpu().numpy()
                    if probs is None:
                        probs = np.zeros((p.shape[1], H, W), dtype=np.float32)
                    if hp is not None and hprobs is None:
                        hprobs = np.zeros((hp.shape[1], H, W), dtype=np.float32)
                    for i, (r0, c0) in enumerate(batch):
                        wr = _window_1d(r0, th, H, n_overlap, margin)
                        wc = _window_1d(c0, tw, W, n_overlap, margin)
                        w = np.outer(wr, wc).astype(np.float32)
                        sl = (slice(r0, r0 + th), slice(c0, c0 + tw))
                        probs[(slice(None),) + sl] += w * p[i]
                        if hp is not None:
                            hprobs[(slice(None),) + sl] += w * hp[i]
                        wsum[sl] += w
    finally:
        model.train(was_training)

    probs /= wsum
    result = {"probabilities": probs}
    if hprobs is not None:
        hprobs /= wsum
        if height_mode == "expected":
            levels = np.arange(hprobs.shape[0], dtype=np.float32)[:, None, None]
            result["height"] = (hprobs * levels).sum(axis=0).astype(np.float32)
        else:
            result["height"] = hprobs.argmax(axis=0).astype(np.float32)
    return result
