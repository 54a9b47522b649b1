"""The item-item weight solvers, pure numpy on a dense Gram matrix (no Spark here).

Each returns the ``n x n`` weight matrix ``W`` with a zero diagonal; a user's
scores are ``x_u W`` (:mod:`recsys_spark.itemitem.models` computes them in
Spark).

* :func:`ease` -- Steck (2019): ``P = (G + lambda I)^-1``, ``W = I - P
  diag(P)^-1``: the least-squares item-item regression with a zero diagonal,
  in closed form.  The inverse goes through a Cholesky factorisation (LAPACK
  ``potrf`` / ``potri``, in place: one ``n x n`` array).
* :func:`rp3beta` -- Paudel et al. (2017): the three-step random walk
  user -> item -> user -> item with the transition probabilities raised to
  ``alpha`` and the arrival item's popularity divided out as ``deg ** beta``;
  from the user-weighted Gram ``G_w = X' D_u^-alpha X`` it is ``W = D_i^-alpha
  G_w D_j^-beta``, each row then pruned to its ``neighbors`` largest weights.
* :func:`slim_columns` -- Ning & Karypis (2011): per item ``j`` the
  non-negative elastic net ``min_w 1/2 |x_j - X w|^2 + l1 |w|_1 + l2/2 |w|^2``,
  ``w_j = 0``, over ``j``'s ``neighbors`` most co-rated items only; solved by
  cyclic coordinate descent on the Gram matrix, vectorised over a block of
  columns (one coordinate of every column at a time).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack


def spd_inverse(a: np.ndarray) -> np.ndarray:
    """The inverse of the symmetric positive definite ``a``, overwriting ``a`` (float32 or float64)."""
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (a,))
    c, info = potrf(a, lower=False, overwrite_a=True, clean=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"Gram + lambda*I is not positive definite (potrf info {info}): raise l2_reg")
    inv, info = potri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"potri failed (info {info})")
    symmetrize_upper(inv)  # potri fills the upper triangle
    return inv


def symmetrize_upper(a: np.ndarray, chunk: int = 1024) -> None:
    """Copy the upper triangle onto the lower, a block of rows at a time (no index arrays of n^2 entries)."""
    n = a.shape[0]
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        a[r0:r1, :r0] = a[:r0, r0:r1].T
        blk = a[r0:r1, r0:r1]
        low = np.tril_indices(r1 - r0, k=-1)
        blk[low] = blk.T[low]


def ease(gram: np.ndarray, l2_reg: float) -> np.ndarray:
    """EASE weights from the Gram matrix (overwritten): ``W = -P / diag(P)`` off the diagonal, 0 on it."""
    if l2_reg <= 0:
        raise ValueError(f"EASE needs l2_reg > 0, got {l2_reg}")
    idx = np.diag_indices_from(gram)
    gram[idx] += l2_reg
    p = spd_inverse(gram)
    d = p[idx].copy()
    p /= -d[None, :]
    p[idx] = 0.0
    return p


def rp3beta(gram_w: np.ndarray, item_deg: np.ndarray, alpha: float, beta: float, neighbors: int | None) -> np.ndarray:
    """RP3beta weights from ``G_w = X' D_u^-alpha X`` (overwritten) and each item's degree."""
    if alpha < 0 or beta < 0:
        raise ValueError(f"RP3beta needs alpha, beta >= 0; got {alpha}, {beta}")
    deg = np.maximum(item_deg.astype(np.float64), 1.0)
    w = gram_w
    w *= (deg ** -alpha)[:, None].astype(w.dtype)
    w *= (deg ** -beta)[None, :].astype(w.dtype)
    np.fill_diagonal(w, 0.0)
    return prune_rows(w, neighbors)


def prune_rows(w: np.ndarray, neighbors: int | None, chunk: int = 512) -> np.ndarray:
    """Keep each row's ``neighbors`` largest entries, zero the rest, in place (chunks of rows: no second n x n array)."""
    n = w.shape[1]
    if neighbors is None or neighbors >= n:
        return w
    if neighbors < 1:
        raise ValueError(f"neighbors must be >= 1, got {neighbors}")
    for r0 in range(0, w.shape[0], chunk):
        block = w[r0 : r0 + chunk]
        keep = np.argpartition(-block, neighbors - 1, axis=1)[:, :neighbors]
        mask = np.ones(block.shape, dtype=bool)
        np.put_along_axis(mask, keep, False, axis=1)
        block[mask] = 0.0
    return w


def neighbourhoods(gram: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """For each column ``j`` in ``cols``, its ``size`` most co-rated other items (sorted indices; ``gram`` symmetric)."""
    n = gram.shape[0]
    size = min(size, n - 1)
    g = gram[cols].astype(np.float64)  # rows = columns: the Gram matrix is symmetric
    g[np.arange(len(cols)), cols] = -np.inf
    top = np.argpartition(-g, size - 1, axis=1)[:, :size]
    return np.sort(top, axis=1)


def slim_columns(
    gram: np.ndarray, cols: np.ndarray, nbrs: np.ndarray, l1: float, l2: float, max_iter: int = 50, tol: float = 1e-5,
) -> tuple[np.ndarray, int]:  # fmt: skip
    """SLIM weights of the columns ``cols`` on their neighbourhoods ``nbrs`` (``len(cols) x m``).

    Returns ``(weights, sweeps)``: ``weights[r, t]`` is ``W[nbrs[r, t], cols[r]]``.
    Coordinate ``t`` of every column is updated at once::

        w_t = max(0, (G[n_t, j] - sum_{s != t} G[n_t, n_s] w_s - l1) / (G[n_t, n_t] + l2))

    until the largest change of a sweep is below ``tol`` times the largest weight.
    """
    if l1 < 0 or l2 < 0 or (l1 == 0 and l2 == 0):
        raise ValueError(f"SLIM needs l1, l2 >= 0 and not both 0; got {l1}, {l2}")
    nb, m = nbrs.shape
    sub = gram[nbrs[:, :, None], nbrs[:, None, :]].astype(np.float64)  # (nb, m, m)
    target = gram[nbrs, cols[:, None]].astype(np.float64)  # (nb, m): G[n_t, j]
    diag = np.einsum("btt->bt", sub) + l2
    w = np.zeros((nb, m))
    gw = np.zeros((nb, m))  # sub @ w, kept up to date
    sweeps = 0
    while sweeps < max_iter:
        sweeps += 1
        biggest = 0.0
        for t in range(m):
            old = w[:, t]
            rest = gw[:, t] - sub[:, t, t] * old
            new = np.maximum(0.0, (target[:, t] - rest - l1) / np.where(diag[:, t] > 0, diag[:, t], 1.0))
            delta = new - old
            if np.any(delta):
                gw += sub[:, :, t] * delta[:, None]
                w[:, t] = new
                biggest = max(biggest, float(np.abs(delta).max()))
        if biggest <= tol * max(1e-12, float(np.abs(w).max())):
            break
    return w, sweeps
