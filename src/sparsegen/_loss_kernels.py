"""Compiled CPU kernel (numba) for the pairwise hinge losses' value and gradient together.

Imported lazily by :func:`sparsegen.losses.loss_and_gradient`, the NumPy entry
point that L-BFGS calls a hundred times per fit: there the torch version's
sorts, binary searches and autograd pass would be paid on every call. The torch
functions in :mod:`sparsegen.losses` stay the definition (and the path for
tensors); the tests hold this kernel to them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from sparsegen import _numba_cache  # noqa: F401  (keys the cache on every kernel source)


@njit(cache=True, nogil=True)
def pairwise_hinge(z, y, c, q, grad):
    r"""``Σ_rows c Σ_{i,j∈P} |z_i − z_j| + Σ_{i∈P, j∈N} [c z_j − c z_i + m_i]_+``; its
    gradient with respect to ``z`` is written to ``grad``. The scores are shifted by their
    row's maximum first (``Σz`` for ``m_i`` aside), as the torch losses shift them.

    ``P = {i : y_i > 0}``, ``N`` the rest, ``η = y / Σy`` (pairs ordered, as in
    the papers' sums). ``q ≤ 0``: ``m_i = η_i``, sparsegen-lin's hinge with
    ``c = 1/(1 − λ)``. ``q > 0``: ``m_i = η_i / α̂(z) = η_i (|Σz| + Kq)/(1 + Kq)``,
    sparsehourglass's with ``c = 1``, whose dependence on ``Σz`` adds
    ``sign(Σz)/(1 + Kq) Σ_i count_i η_i`` to every entry of the row's gradient.
    Per row O(K log P) for P labels: only the labels and their thresholds are
    sorted; each negative is placed among the thresholds by a binary search.
    Ties count as no violation (strict ``>``), as in torch.
    """
    rows, k = z.shape
    pos = np.empty(k)
    eta = np.empty(k)
    neg = np.empty(k)
    thresholds = np.empty(k)
    ascending = np.empty(k)
    bin_count = np.empty(k + 1)
    bin_sum = np.empty(k + 1)
    pos_at = np.empty(k, np.int64)
    neg_at = np.empty(k, np.int64)
    total = 0.0
    for r in range(rows):
        mass = 0.0
        row_sum = 0.0
        top = -np.inf
        for j in range(k):
            mass += y[r, j]
            row_sum += z[r, j]
            top = max(top, z[r, j])
            grad[r, j] = 0.0
        if mass == 0.0:  # no label: nothing to rank
            continue
        m_scale, chain = 1.0, 0.0
        if q > 0.0:
            m_scale = (abs(row_sum) + k * q) / (1.0 + k * q)
            chain = np.sign(row_sum) / (1.0 + k * q)
        n_pos = 0
        n_neg = 0
        for j in range(k):
            # shifted by the row's maximum, as the torch losses are: the pairs' terms are
            # differences, but c z_i − m_i on scores of 1e16 loses the margin m_i
            if y[r, j] > 0.0:
                pos[n_pos] = z[r, j] - top
                eta[n_pos] = y[r, j] / mass
                pos_at[n_pos] = j
                n_pos += 1
            else:
                neg[n_neg] = c * (z[r, j] - top)
                neg_at[n_neg] = j
                n_neg += 1
        loss = 0.0
        # Σ over ordered pairs of labels |z_i − z_j| = 2 Σ_rank (2 rank − n − 1) z_(rank)
        order = np.argsort(pos[:n_pos])
        for rank in range(n_pos):
            weight = 2.0 * c * (2 * rank + 1 - n_pos)
            loss += weight * pos[order[rank]]
            grad[r, pos_at[order[rank]]] += weight
        # Each label i against the negatives above its threshold t_i = c z_i − m_i: the
        # thresholds sorted, each negative u = c z_j binned by how many lie below it
        # (a binary search over the few labels; u > t_i strictly is a violation).
        for i in range(n_pos):
            thresholds[i] = c * pos[i] - eta[i] * m_scale
        threshold_order = np.argsort(thresholds[:n_pos])
        for b in range(n_pos):
            ascending[b] = thresholds[threshold_order[b]]
            bin_count[b + 1] = 0.0
            bin_sum[b + 1] = 0.0
        bin_count[0] = 0.0
        bin_sum[0] = 0.0
        for a in range(n_neg):
            u = neg[a]
            lo, hi = 0, n_pos  # number of thresholds < u
            while lo < hi:
                mid = (lo + hi) >> 1
                if ascending[mid] < u:
                    lo = mid + 1
                else:
                    hi = mid
            bin_count[lo] += 1.0
            bin_sum[lo] += u
            grad[r, neg_at[a]] += c * lo
        margin_grad = 0.0
        count, above = 0.0, 0.0  # negatives above the current threshold, and their sum
        for b in range(n_pos - 1, -1, -1):
            count += bin_count[b + 1]
            above += bin_sum[b + 1]
            i = threshold_order[b]
            loss += above - count * thresholds[i]
            grad[r, pos_at[i]] -= c * count
            margin_grad += count * eta[i]
        if chain != 0.0:
            for j in range(k):
                grad[r, j] += margin_grad * chain
        total += loss
    return total
