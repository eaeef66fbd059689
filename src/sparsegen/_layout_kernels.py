"""A compiled CPU kernel (numba) that moves a dimension of a dense array last, or back.

The projection kernels read and write rows along the last dimension. A mapping
along another one (``sparsemax(x, dim=0)``) is a view whose projected dimension
has a long stride, so each row is first copied into a contiguous buffer and the
output copied back into the caller's layout. Both copies are one batched 2-D
transpose: a dense array seen as ``(A, K, C)`` (``K`` the projected dimension,
``A`` the dimensions before it, ``C`` those after it) to ``(A, C, K)``, or back.
torch copies a transpose through its strides one element at a time; here it is
done in square tiles small enough for the L1 cache, so each tile's source and
destination cache lines are each loaded once.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from sparsegen import _numba_cache  # noqa: F401  (keys the cache on every kernel source)
from sparsegen._kernels import _blocks, _launch

# The tile's side: 32 × 32 float64 entries (8 KiB) and their destination fit the L1 cache.
TILE = 32


@njit(cache=True, nogil=True, inline="always")
def _transpose_tile(src, dst, tile, n_k, n_c):
    """Copy one tile: ``dst[a, c, k] = src[a, k, c]`` over the tile's ``k`` and ``c``."""
    per_matrix = n_k * n_c
    a = tile // per_matrix
    k0 = (tile % per_matrix) // n_c * TILE
    c0 = tile % n_c * TILE
    k1 = min(k0 + TILE, src.shape[1])
    for c in range(c0, min(c0 + TILE, src.shape[2])):
        for k in range(k0, k1):  # the inner loop writes contiguously
            dst[a, c, k] = src[a, k, c]


@njit(cache=True, nogil=True)
def _transpose_serial(src, dst):
    n_k = (src.shape[1] + TILE - 1) // TILE
    n_c = (src.shape[2] + TILE - 1) // TILE
    for tile in range(src.shape[0] * n_k * n_c):
        _transpose_tile(src, dst, tile, n_k, n_c)


@njit(cache=True, nogil=True, parallel=True)
def _transpose_parallel(src, dst, n_blocks):
    n_k = (src.shape[1] + TILE - 1) // TILE
    n_c = (src.shape[2] + TILE - 1) // TILE
    n_tiles = src.shape[0] * n_k * n_c
    for block in prange(n_blocks):
        for tile in range(block * n_tiles // n_blocks, (block + 1) * n_tiles // n_blocks):
            _transpose_tile(src, dst, tile, n_k, n_c)


def transpose(src: np.ndarray, dst: np.ndarray, n_threads: int) -> None:
    """Write ``src`` (``(A, K, C)``, any strides) transposed into ``dst`` (``(A, C, K)``):
    ``dst[a, c, k] = src[a, k, c]``, in tiles, on up to ``n_threads`` threads."""
    if src.shape != (dst.shape[0], dst.shape[2], dst.shape[1]):
        raise ValueError(f"transpose: shapes {src.shape} and {dst.shape} do not match")
    n_tiles = src.shape[0] * -(-src.shape[1] // TILE) * -(-src.shape[2] // TILE)
    _launch(_transpose_parallel, _transpose_serial, _blocks(n_tiles, src.size, n_threads), src, dst)
