"""Decide, site by site, whether a column is present in each frame of a series: a two-state hidden Markov model.

Each frame's atom-map value at a site becomes evidence, a log-likelihood ratio
``logit(p) - logit(threshold)`` in nats, capped at 4.6 nats either way
(:func:`presence_evidence`); a change of
state costs ``switch_cost`` nats, set by default from the frame-to-frame noise of the
map values of mostly present sites (:func:`switch_cost_from_noise`), so a noisier
(lower-dose) series needs more evidence for a change. :func:`viterbi_states` decodes
the most probable present/absent sequence of every site, :func:`change_posteriors`
the posterior probability of each change (forward-backward, an event's confidence),
and :func:`smooth_states` optionally ignores changes shorter than a number of frames.

Pure NumPy on arrays of shape ``(n_frames, n_sites)``;
:func:`atomfinder.analysis.timeseries.occupancy.presence` turns the decision into the
``presence.csv`` table.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "LOGIT_GUARD",
    "MIN_SWITCH_COST",
    "PROBABILITY_FLOOR",
    "SWITCH_NOISE_SIGMAS",
    "change_posteriors",
    "check_switch_cost",
    "check_threshold",
    "evidence_cap",
    "presence_evidence",
    "smooth_states",
    "switch_cost_from_noise",
    "viterbi_states",
]

#: No frame's evidence counts for more than odds of (1 - PROBABILITY_FLOOR) : PROBABILITY_FLOOR,
#: for present or against: 4.6 nats either way (:func:`presence_evidence`, :func:`evidence_cap`).
PROBABILITY_FLOOR = 0.01
#: Map values are kept this far from 0 and 1 before their logit is taken (:func:`presence_evidence`).
LOGIT_GUARD = 1e-12
#: Smallest default switching cost, nats per change of state (:func:`switch_cost_from_noise`).
MIN_SWITCH_COST = 2.0
#: A one-frame excursion this many noise-sigmas deep does not flip a site (:func:`switch_cost_from_noise`).
SWITCH_NOISE_SIGMAS = 4.0


def evidence_cap(floor: float = PROBABILITY_FLOOR) -> float:
    """Most evidence (nats) one frame can give either way: ``logit(1 - floor)`` (4.6 for 0.01)."""
    if not 0.0 < floor < 0.5:
        raise ValueError(f"floor must be in (0, 0.5), got {floor}")
    return float(np.log((1.0 - floor) / floor))


def presence_evidence(
    probability: np.ndarray, threshold: float = 0.5, floor: float = PROBABILITY_FLOOR
) -> np.ndarray:
    """Log-likelihood ratio (nats) of *present* over *absent* given each map value.

    ``logit(p) - logit(threshold)``, clipped to ``[-L, +L]`` with
    ``L = logit(1 - floor)`` (:func:`evidence_cap`). This reads the map value ``p`` as
    the network's posterior probability of a column and divides out prior odds
    ``threshold / (1 - threshold)`` (a "scaled likelihood"): a frame whose map value
    equals the threshold says nothing, and every factor *e* in the odds away from the
    threshold's is one nat for or against. The cap keeps a single frame from counting
    for more than odds of ``(1 - floor) : floor`` either way (4.6 nats for 0.01),
    the same for and against whatever the threshold: so a one-frame appearance and a
    one-frame disappearance are equally possible (each needs ``2 * switch_cost`` nats,
    :func:`viterbi_states`; at the smallest cost of 2 a map value above
    ``1 / (1 + e^-4 (1 - T) / T)``, 0.9968 at T = 0.85, or below 0.094). (Clipping
    ``p`` to ``[floor, 1 - floor]`` instead, as before, capped the evidence for
    present at ``logit(1 - floor) - logit(T)``, 2.9 nats at T = 0.85, so that a
    column present in a single frame could never be marked present.) ``p`` itself is
    only kept off 0 and 1 (1e-12), where the logit is infinite. NaN (no value) is no
    evidence (0).

    Parameters
    ----------
    probability : ndarray
        Map values in [0, 1], any shape.
    threshold : float
        Map value that separates present from absent, in [0, 1] (taken as
        ``floor`` or ``1 - floor`` beyond those).
    floor : float
        Sets the cap ``logit(1 - floor)`` and the clip of the threshold, in (0, 0.5).

    Returns
    -------
    ndarray of float64, same shape, values in ``[-L, L]``
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    cap = evidence_cap(floor)
    t = min(max(float(threshold), floor), 1.0 - floor)
    p = np.clip(np.asarray(probability, dtype=np.float64), LOGIT_GUARD, 1.0 - LOGIT_GUARD)
    ev = np.clip(np.log(p / (1.0 - p)) - np.log(t / (1.0 - t)), -cap, cap)
    return np.where(np.isnan(ev), 0.0, ev)


def check_threshold(threshold: float, name: str = "threshold", floor: float = PROBABILITY_FLOOR) -> float:
    """``threshold`` as a float; a one-line ValueError unless ``floor < threshold < 1 - floor``.

    No frame counts for more than ``(1 - floor) : floor`` odds (:func:`presence_evidence`),
    so a threshold at or beyond those odds would ask for more certainty than any frame
    can give (the old clipped evidence then marked every site absent at 0.99 and
    present at 0.01). ``name`` is how the user gives it (``--threshold`` on the
    command line).
    """
    t = float(threshold)
    if not floor < t < 1.0 - floor:
        raise ValueError(f"{name} must be above {floor:g} and below {1 - floor:g}, got {threshold:g}: no frame's map "
                         f"value counts for more than {1 - floor:g} : {floor:g} odds either way, so a threshold at or "
                         "beyond them asks for more certainty than any frame can give")
    return t


def switch_cost_from_noise(
    probability: np.ndarray,
    threshold: float = 0.5,
    *,
    sigmas: float = SWITCH_NOISE_SIGMAS,
    minimum: float = MIN_SWITCH_COST,
    floor: float = PROBABILITY_FLOOR,
) -> float:
    """Default switching cost (nats per change of state), from the noise of the map values.

    The frame-to-frame noise ``sigma`` of the evidence (:func:`presence_evidence`) is
    measured on the sites that are mostly present (median map value at least the
    threshold) as ``median |e_t - e_(t-1)| / (0.6745 sqrt 2)``, the noise of a
    piecewise-constant signal (a real change or a slow trend moves one difference,
    not the median). A one-frame excursion costs two changes, so with
    ``cost = sigmas * sigma / 2`` it takes a frame ``sigmas`` noise-sigmas beyond
    the site's evidence level to flip, even for a site sitting at the threshold.
    Low dose (noisy maps) raises the cost; clean maps saturate the capped evidence
    (sigma near 0), where ``minimum`` holds: a present site then needs one frame with
    a map value below about 0.07 at a threshold of 0.8 (evidence below -4 nats) to
    be marked absent in that frame, or two below about 0.35; an absent site one frame
    above about 0.995 to be marked present in it, or two above about 0.97.

    Parameters
    ----------
    probability : ndarray, shape (N, S)
        Map value of each site in each frame (:func:`atomfinder.analysis.timeseries.occupancy.site_probabilities`).
    threshold : float
        As in :func:`presence_evidence`.
    sigmas : float
        Size in noise-sigmas of a one-frame excursion that still does not flip.
    minimum : float
        Smallest cost returned (nats).
    floor : float
        As in :func:`presence_evidence`.

    Returns
    -------
    float
        ``max(minimum, sigmas * sigma / 2)``; ``minimum`` when fewer than 2 frames or
        no mostly present site.
    """
    p = np.asarray(probability, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 2 or p.shape[1] == 0:
        return float(minimum)
    with np.errstate(all="ignore"):
        mostly = np.nanmedian(p, axis=0) >= threshold
    steps = np.abs(np.diff(presence_evidence(p[:, mostly], threshold, floor), axis=0))
    if steps.size == 0:
        return float(minimum)
    sigma = float(np.median(steps)) / (0.6745 * np.sqrt(2.0))
    return float(max(minimum, 0.5 * sigmas * sigma))


def check_switch_cost(switch_cost: float, name: str = "switch_cost") -> float:
    """``switch_cost`` as a float; a ValueError unless it is a finite number of nats >= 0.

    ``name`` is how the user gives it, in the message (``--switch-cost`` on the command line).
    """
    if not (np.isfinite(switch_cost) and switch_cost >= 0):
        raise ValueError(f"{name} must be a finite number of nats >= 0, got {switch_cost}")
    return float(switch_cost)


def _as_columns(evidence: np.ndarray) -> np.ndarray:
    ev = np.asarray(evidence, dtype=np.float64)
    if ev.ndim not in (1, 2):
        raise ValueError(f"expected evidence of shape (N,) or (N, S), got {ev.shape}")
    return ev.reshape(len(ev), -1)


def viterbi_states(evidence: np.ndarray, switch_cost: float) -> np.ndarray:
    """Most probable present/absent sequence of each site (two-state HMM, Viterbi).

    Maximises ``sum_t s_t e_t - switch_cost * (number of changes)`` over state
    sequences ``s`` with ``s_t = +1/2`` (present) or ``-1/2`` (absent): the log
    posterior of the sequence for emissions whose log-likelihood ratio is ``e_t``, a
    uniform first state and a probability of change between consecutive frames of
    ``1 / (1 + exp(switch_cost))``. So a state change needs at least ``switch_cost``
    nats of evidence behind it, a run between two changes ``2 * switch_cost``. Ties
    keep the state (and end absent).

    Parameters
    ----------
    evidence : ndarray, shape (N,) or (N, S)
        Log-likelihood ratio per frame (and site), :func:`presence_evidence`.
    switch_cost : float
        Nats per change of state (>= 0; 0 gives the per-frame sign of the evidence).

    Returns
    -------
    ndarray of int64, shape (N, S)
        1 = present, 0 = absent.
    """
    cost = check_switch_cost(switch_cost)
    ev = _as_columns(evidence)
    n, s = ev.shape
    if n == 0:
        return np.zeros((0, s), dtype=np.int64)
    emit = 0.5 * np.stack([-ev, ev], axis=-1)  # (N, S, 2): absent, present
    score = emit[0].copy()
    came_from_other = np.zeros((n, s, 2), dtype=bool)
    for t in range(1, n):
        switch = score[:, ::-1] - cost
        came_from_other[t] = switch > score
        score = np.maximum(score, switch) + emit[t]
    states = np.zeros((n, s), dtype=np.int64)
    states[-1] = score[:, 1] > score[:, 0]
    cols = np.arange(s)
    for t in range(n - 1, 0, -1):
        states[t - 1] = np.where(came_from_other[t, cols, states[t]], 1 - states[t], states[t])
    return states


def change_posteriors(evidence: np.ndarray, switch_cost: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior probability of an appearance and of a disappearance at each frame.

    Forward-backward on the model of :func:`viterbi_states` (in log space):
    ``appear[t - 1, k] = P(absent in t - 1, present in t | all frames)`` for site
    ``k``, ``disappear`` likewise. A sharp change scores near 1; a change whose frame
    is uncertain (a frame at the threshold in between) shares its probability
    between the candidate frames, and a change backed by little evidence scores low.

    Parameters
    ----------
    evidence : ndarray, shape (N,) or (N, S)
    switch_cost : float

    Returns
    -------
    (appear, disappear) : ndarrays of float64, shape (N - 1, S), values in [0, 1]
    """
    cost = check_switch_cost(switch_cost)
    ev = _as_columns(evidence)
    n, s = ev.shape
    if n < 2:
        return np.zeros((0, s)), np.zeros((0, s))
    emit = 0.5 * np.stack([-ev, ev], axis=-1)
    trans = np.array([[0.0, -cost], [-cost, 0.0]])  # [from, to]; the common normalisation cancels

    def step(v: np.ndarray, axis: int) -> np.ndarray:  # logsumexp over one axis of (S, 2, 2)
        return np.logaddexp(np.take(v, 0, axis=axis), np.take(v, 1, axis=axis))

    alpha = np.empty((n, s, 2))
    alpha[0] = emit[0]
    for t in range(1, n):
        alpha[t] = emit[t] + step(alpha[t - 1][:, :, None] + trans, axis=1)
    beta = np.zeros((n, s, 2))
    for t in range(n - 2, -1, -1):
        beta[t] = step(trans + (emit[t + 1] + beta[t + 1])[:, None, :], axis=2)
    log_z = np.logaddexp(alpha[-1, :, 0], alpha[-1, :, 1])
    # xi[t-1, k, a, b] = log P(state a in t-1, state b in t)
    xi = alpha[:-1, :, :, None] + trans + (emit[1:] + beta[1:])[:, :, None, :] - log_z[None, :, None, None]
    post = np.clip(np.exp(xi), 0.0, 1.0)
    return post[:, :, 0, 1], post[:, :, 1, 0]


def smooth_states(states: np.ndarray, min_run: int = 1) -> np.ndarray:
    """Suppress flicker: a change of state counts only once it lasts ``min_run`` frames.

    Hysteresis along axis 0 (frames): the smoothed state starts as the raw state of
    frame 0 and switches at frame ``t`` only when the raw state differs from it in
    every frame ``t .. t + min_run - 1``. So runs shorter than ``min_run`` frames
    between two runs of the other state are ignored, and a change in the last
    ``min_run - 1`` frames (not yet confirmed) is ignored too. ``min_run = 1``
    returns the states unchanged.

    Parameters
    ----------
    states : ndarray of 0/1, shape (n_frames, ...)
    min_run : int
        Frames a new state must last (>= 1).

    Returns
    -------
    ndarray of int, same shape
    """
    s = np.asarray(states, dtype=np.int64)
    k = max(1, int(min_run))
    if k == 1 or len(s) == 0:
        return s.copy()
    out = np.empty_like(s)
    cur = s[0].copy()
    n = len(s)
    for t in range(n):
        if t + k <= n:
            window = s[t : t + k]
            switch = np.all(window != cur[None], axis=0)
            cur = np.where(switch, s[t], cur)
        out[t] = cur
    return out
