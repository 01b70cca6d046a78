"""Training losses: class-weighted cross-entropy, soft Dice, column-height cross-entropy.

Targets are per-class maps ``[B, k, H, W]`` that sum to 1 over the class axis (one-hot
disks or soft Gaussians; channel 0 is the background), so the cross-entropy is the
soft-target form ``-sum_c w_c t_c log p_c``. Heights are integer maps ``[B, H, W]``
with the number of atoms of the column a pixel belongs to and a negative value
(``-1``) at pixels that carry no column label; only labelled pixels enter the height
loss.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def class_weights_from_targets(targets: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Inverse-frequency class weights from the targets of one batch.

    Parameters
    ----------
    targets : Tensor, shape (B, k, H, W)
        Per-class target maps.
    eps : float
        Frequencies below this count as absent.

    Returns
    -------
    Tensor, shape (k,)
        ``w_c = 1 / (n_present * f_c)`` for classes present in the batch (so every
        present class contributes the same total weight and ``sum_c w_c f_c = 1``),
        0 for absent classes (their target is zero anyway).
    """
    with torch.no_grad():
        freq = targets.detach().float().sum(dim=(0, 2, 3))
        freq = freq / freq.sum().clamp_min(eps)
        present = freq > eps
        n_present = int(present.sum().item())
        w = torch.zeros_like(freq)
        w[present] = 1.0 / (n_present * freq[present])
    return w


def weighted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Soft-target cross-entropy with class weights, averaged over the total weight.

    Parameters
    ----------
    logits : Tensor, shape (B, k, H, W)
    targets : Tensor, shape (B, k, H, W)
        Per-class targets summing to 1 over ``k``.
    weights : Tensor, shape (k,), optional
        Class weights (uniform when omitted).

    Returns
    -------
    Tensor (scalar)
        ``sum(w_c t_c (-log p_c)) / sum(w_c t_c)``, the same normalisation as
        :func:`torch.nn.functional.cross_entropy` with ``weight=`` for one-hot targets.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    t = targets.float()
    if weights is not None:
        t = t * weights.to(t).view(1, -1, 1, 1)
    return -(t * logp).sum() / t.sum().clamp_min(1e-12)


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - mean soft Dice`` over the non-background classes.

    Sums run over the batch and the pixels; ``smooth`` keeps classes that are absent
    from both prediction and target near a Dice of 1.
    """
    p = F.softmax(logits.float(), dim=1)[:, 1:]
    t = targets.float()[:, 1:]
    inter = (p * t).sum(dim=(0, 2, 3))
    denom = p.sum(dim=(0, 2, 3)) + t.sum(dim=(0, 2, 3))
    dice = (2.0 * inter + smooth) / (denom + smooth)
    return 1.0 - dice.mean()


def height_cross_entropy(height_logits: torch.Tensor, heights: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the height head on labelled pixels (``heights >= 0``) only.

    Parameters
    ----------
    height_logits : Tensor, shape (B, max_height + 1, H, W)
    heights : Tensor of int, shape (B, H, W)
        Column height (atoms) per pixel; negative = unlabelled (ignored).

    Returns
    -------
    Tensor (scalar)
        Mean over labelled pixels; 0 (still attached to the graph) when none is.

    Raises
    ------
    ValueError
        If a labelled height exceeds ``max_height``.
    """
    h = heights.long()
    n_bins = height_logits.shape[1]
    labelled = h >= 0
    if not bool(labelled.any()):
        return height_logits.sum() * 0.0
    if int(h.max()) >= n_bins:
        raise ValueError(f"height {int(h.max())} exceeds the head's max_height {n_bins - 1}")
    return F.cross_entropy(height_logits.float(), torch.where(labelled, h, -100), ignore_index=-100)


def segmentation_loss(
    outputs: dict[str, torch.Tensor],
    targets: torch.Tensor,
    heights: torch.Tensor | None = None,
    *,
    class_weights: str | Sequence[float] | torch.Tensor | None = "batch",
    dice_weight: float = 0.0,
    height_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total training loss and its parts.

    Parameters
    ----------
    outputs : dict
        The model's output: ``"logits"`` ``[B, k, H, W]`` and, with a height head,
        ``"height_logits"``.
    targets : Tensor, shape (B, k, H, W)
        Per-class target maps (channel 0 = background).
    heights : Tensor of int, shape (B, H, W), optional
        Column heights (negative = unlabelled); used only when the model has a
        height head.
    class_weights : "batch", sequence of k floats, Tensor or None
        ``"batch"``: inverse class frequencies of this batch
        (:func:`class_weights_from_targets`); explicit weights; or ``None`` for
        uniform weights.
    dice_weight : float
        Weight of the soft Dice term (0 switches it off).
    height_weight : float
        Weight of the height cross-entropy.

    Returns
    -------
    loss : Tensor (scalar)
        ``ce + dice_weight * dice + height_weight * height``.
    parts : dict of str to float
        ``"ce"``, ``"dice"``, ``"height"`` (those that were computed) and ``"total"``.
    """
    logits = outputs["logits"]
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    if isinstance(class_weights, str):
        if class_weights != "batch":
            raise ValueError(f"class_weights must be 'batch', weights or None, got {class_weights!r}")
        weights = class_weights_from_targets(targets)
    elif class_weights is None:
        weights = None
    else:
        weights = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
        if weights.shape != (logits.shape[1],):
            raise ValueError(f"need {logits.shape[1]} class weights, got {tuple(weights.shape)}")
    ce = weighted_cross_entropy(logits, targets, weights)
    total = ce
    parts = {"ce": float(ce.detach())}
    if dice_weight:
        dice = soft_dice_loss(logits, targets)
        total = total + dice_weight * dice
        parts["dice"] = float(dice.detach())
    if "height_logits" in outputs and heights is not None and height_weight:
        hl = height_cross_entropy(outputs["height_logits"], heights)
        total = total + height_weight * hl
        parts["height"] = float(hl.detach())
    parts["total"] = float(total.detach())
    return total, parts
