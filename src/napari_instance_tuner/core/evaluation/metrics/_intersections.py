"""Pairwise intersections of predicted and ground-truth objects, and best-partner matching.

Every object metric derives from one sparse ``N_pred x N_gt`` intersection matrix, kept as sorted
(pred index, gt index, pixel count) triplets (:func:`_intersections`; public form
:func:`intersection_matrix`). :class:`_Pair` bundles it with both parsed sides, so that
:func:`~napari_instance_tuner.core.evaluation.metrics.evaluate` parses and intersects only once, and
:func:`_best_partner` picks each object's partner with the largest score (ties: the smallest
label / index, as MATLAB's ``max`` in the official code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import sparse

from ._instances import _Instances, _parse_pair

# Largest dense pair table (rows * cols) counted with np.bincount; above it np.unique is used.
_DENSE_PAIR_LIMIT = 1 << 24


# --------------------------------------------------------------------------------------------
# Pairwise intersections
# --------------------------------------------------------------------------------------------


def _count_pairs(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> tuple[np.ndarray, ...]:
    """Count (row, col) pairs. Returns (rows, cols, counts) sorted by row then col, counts int64."""
    if rows.size == 0 or n_rows == 0 or n_cols == 0:
        e = np.zeros(0, np.intp)
        return e, e, np.zeros(0, np.int64)
    codes = rows.astype(np.int64) * n_cols + cols
    if n_rows * n_cols <= _DENSE_PAIR_LIMIT:
        table = np.bincount(codes, minlength=n_rows * n_cols)
        nz = np.flatnonzero(table)
        counts = table[nz].astype(np.int64)
    else:
        nz, counts = np.unique(codes, return_counts=True)
        counts = counts.astype(np.int64)
    return (nz // n_cols).astype(np.intp), (nz % n_cols).astype(np.intp), counts


def _intersections(p: _Instances, g: _Instances) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse intersection matrix as (pred index, gt index, pixel count) triplets, sorted."""
    if p.n == 0 or g.n == 0:
        e = np.zeros(0, np.intp)
        return e, e, np.zeros(0, np.int64)
    if p.labels is not None and g.labels is not None:
        npl, ngl = p.n + 1, g.n + 1
        if npl * ngl <= _DENSE_PAIR_LIMIT:
            codes = p.labels.ravel().astype(np.int64) * ngl + g.labels.ravel()
            table = np.bincount(codes, minlength=npl * ngl).reshape(npl, ngl)[1:, 1:]
            pi, gi = np.nonzero(table)
            return pi.astype(np.intp), gi.astype(np.intp), table[pi, gi].astype(np.int64)
        pf, gf = p.labels.ravel(), g.labels.ravel()
        m = (pf > 0) & (gf > 0)
        return _count_pairs(pf[m].astype(np.intp) - 1, gf[m].astype(np.intp) - 1, p.n, g.n)
    if g.labels is not None:  # stack pred x label gt
        obj, pix = p.coo()
        lab = g.labels.ravel()[pix]
        m = lab > 0
        return _count_pairs(obj[m], lab[m].astype(np.intp) - 1, p.n, g.n)
    if p.labels is not None:  # label pred x stack gt
        obj, pix = g.coo()
        lab = p.labels.ravel()[pix]
        m = lab > 0
        gi, pi, cnt = _count_pairs(obj[m], lab[m].astype(np.intp) - 1, g.n, p.n)
        order = np.lexsort((gi, pi))
        return pi[order], gi[order], cnt[order]
    # stack x stack: sparse product of the flattened masks
    size = p.shape[0] * p.shape[1]

    def csr(inst: _Instances) -> sparse.csr_matrix:
        _, pix = inst.coo()
        indptr = np.zeros(inst.n + 1, np.int64)
        np.cumsum(inst.areas, out=indptr[1:])
        return sparse.csr_matrix((np.ones(pix.size, np.int64), pix, indptr), shape=(inst.n, size))

    prod = (csr(p) @ csr(g).T).tocoo()
    order = np.lexsort((prod.col, prod.row))
    pi, gi, cnt = prod.row[order], prod.col[order], prod.data[order]
    keep = cnt > 0
    return pi[keep].astype(np.intp), gi[keep].astype(np.intp), cnt[keep].astype(np.int64)


def intersection_matrix(pred: ArrayLike, gt: ArrayLike) -> sparse.csr_matrix:
    """Pixel counts of the pairwise intersections of predicted and ground-truth objects.

    Parameters
    ----------
    pred, gt : array_like
        Label image int (H, W) or instance stack bool (N, H, W) each (see module docstring).

    Returns
    -------
    scipy.sparse.csr_matrix
        int64, shape (N_pred, N_gt); entry (i, j) = |pred_i AND gt_j|. Objects are in label order
        (label images) or stack order (stacks, all-False masks removed).
    """
    p, g = _parse_pair(pred, gt)
    pi, gi, cnt = _intersections(p, g)
    return sparse.csr_matrix((cnt, (pi, gi)), shape=(p.n, g.n), dtype=np.int64)


def _best_partner(rows: np.ndarray, cols: np.ndarray, score: np.ndarray, n_rows: int) -> np.ndarray:
    """For each row the column with the largest score (ties: smallest column), -1 if the row is empty.

    ``rows``/``cols``/``score`` are the non-zero entries of a sparse matrix.
    """
    best = np.full(n_rows, -1, np.intp)
    if rows.size == 0:
        return best
    order = np.lexsort((cols, -score, rows))
    r = rows[order]
    first = np.ones(r.size, bool)
    first[1:] = r[1:] != r[:-1]
    best[r[first]] = cols[order][first]
    return best


@dataclass
class _Pair:
    """Everything shared between the metrics of one (pred, gt) pair."""

    p: _Instances
    g: _Instances
    pi: np.ndarray
    gi: np.ndarray
    inter: np.ndarray

    @classmethod
    def build(cls, pred: Any, gt: Any) -> _Pair:
        p, g = _parse_pair(pred, gt)
        pi, gi, inter = _intersections(p, g)
        return cls(p, g, pi, gi, inter)

    def iou(self) -> np.ndarray:
        union = self.p.areas[self.pi] + self.g.areas[self.gi] - self.inter
        return self.inter / union

    def best_gt_for_pred(self) -> np.ndarray:
        """Index of the GT object with the largest intersection with each pred object (-1: none)."""
        return _best_partner(self.pi, self.gi, self.inter, self.p.n)

    def best_pred_for_gt(self) -> np.ndarray:
        """Index of the pred object with the largest intersection with each GT object (-1: none)."""
        return _best_partner(self.gi, self.pi, self.inter, self.g.n)

    def inter_lookup(self, pi: np.ndarray, gi: np.ndarray) -> np.ndarray:
        """|pred_pi AND gt_gi| for index arrays (pairs need not be non-zero)."""
        out = np.zeros(pi.shape, np.int64)
        ok = (pi >= 0) & (gi >= 0)
        if not ok.any() or self.pi.size == 0:
            return out
        key = self.pi.astype(np.int64) * max(self.g.n, 1) + self.gi  # sorted (pi, gi order)
        q = pi[ok].astype(np.int64) * max(self.g.n, 1) + gi[ok]
        pos = np.searchsorted(key, q)
        pos = np.minimum(pos, key.size - 1)
        hit = key[pos] == q
        vals = np.where(hit, self.inter[pos], 0)
        out[ok] = vals
        return out
