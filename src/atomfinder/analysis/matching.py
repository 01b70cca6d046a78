"""One-to-one matching of predicted and true positions within a radius.

Candidate pairs (distance <= radius) come from a k-d tree; the bipartite graph of
candidates is split into connected components and each component is solved exactly
with :func:`scipy.optimize.linear_sum_assignment`. The assignment first maximises the
number of matched pairs, then minimises their summed distance. Components are small
on real images (a few atoms each), so thousands of atoms match in milliseconds.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


def _as_xy(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, 2))
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"positions must have shape (n, 2), got {a.shape}")
    return a


def candidate_pairs(
    pred_xy: np.ndarray, true_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs closer than or at ``radius``: ``(pred_idx, true_idx, distance)``."""
    p, t = _as_xy(pred_xy), _as_xy(true_xy)
    if len(p) == 0 or len(t) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    lists = cKDTree(t).query_ball_point(p, r=radius)
    counts = np.fromiter((len(v) for v in lists), dtype=np.int64, count=len(p))
    pi = np.repeat(np.arange(len(p)), counts)
    ti = np.fromiter((j for v in lists for j in v), dtype=np.int64, count=int(counts.sum()))
    d = np.hypot(*(p[pi] - t[ti]).T) if len(pi) else np.zeros(0)
    return pi, ti, d


def match_positions(
    pred_xy: np.ndarray, true_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Match predictions to true positions one-to-one within ``radius``.

    Parameters
    ----------
    pred_xy, true_xy : ndarray, shape (n, 2) and (m, 2)
        Positions in any common unit (pixels or Å); empty arrays are allowed.
    radius : float
        Largest distance of a matched pair (inclusive), in the same unit.

    Returns
    -------
    (pred_idx, true_idx) : ndarrays of int, shape (n_matched,)
        Matched pairs ``pred_xy[pred_idx[i]] <-> true_xy[true_idx[i]]``, sorted by
        ``pred_idx``. The matching has the largest possible number of pairs and,
        among those, the smallest summed distance.
    """
    pi, ti, d = candidate_pairs(pred_xy, true_xy, radius)
    if len(pi) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Connected components of the bipartite candidate graph (nodes: preds, then trues).
    up, pinv = np.unique(pi, return_inverse=True)
    ut, tinv = np.unique(ti, return_inverse=True)
    n_p, n_t = len(up), len(ut)
    graph = coo_matrix((np.ones(len(pi)), (pinv, n_p + tinv)), shape=(n_p + n_t, n_p + n_t))
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[pinv]
    order = np.argsort(edge_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
    out_p, out_t = [], []
    for edges in np.split(order, bounds):
        lp, lp_inv = np.unique(pinv[edges], return_inverse=True)
        lt, lt_inv = np.unique(tinv[edges], return_inverse=True)
        if len(edges) == 1:
            out_p.append(up[lp]), out_t.append(ut[lt])
            continue
        # A non-candidate costs more than all candidates together, so the solver
        # maximises the number of real pairs first.
        big = float(d[edges].sum()) + 1.0 + radius
        cost = np.full((len(lp), len(lt)), big)
        cost[lp_inv, lt_inv] = d[edges]
        r, c = linear_sum_assignment(cost)
        real = cost[r, c] < big
        out_p.append(up[lp[r[real]]]), out_t.append(ut[lt[c[real]]])
    p_idx = np.concatenate(out_p).astype(np.int64)
    t_idx = np.concatenate(out_t).astype(np.int64)
    order = np.argsort(p_idx, kind="stable")
    return p_idx[order], t_idx[order]
