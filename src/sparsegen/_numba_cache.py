"""numba's on-disk cache for the kernel modules, keyed on all of their sources together.

numba stamps a cached function with its own file's contents only. A kernel of
:mod:`sparsegen._transform_kernels` inlines functions of :mod:`sparsegen._kernels`,
so after an edit of the latter (an editable install, or an upgrade that changes
one module and not the other) numba would load the former's stale machine code.
Here each kernel module's cache is stamped with a hash of every module in
``KERNEL_MODULES``: a change to any of them recompiles them all.

Importing this module installs the locators; the kernel modules import it
before they define their first cached function.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from numba.core import caching

PACKAGE = Path(__file__).resolve().parent
# Every module of the package whose functions numba caches, and this one.
KERNEL_MODULES = (
    "_kernels.py",
    "_transform_kernels.py",
    "_loss_kernels.py",
    "_layout_kernels.py",
    "_numba_cache.py",
)


@functools.lru_cache(maxsize=1)
def sources_stamp() -> str:
    """A hash of the kernel modules' sources, read once a process."""
    digest = hashlib.sha256()
    for name in KERNEL_MODULES:
        digest.update((PACKAGE / name).read_bytes())
    return digest.hexdigest()


def _in_package(py_file: str) -> bool:
    return Path(py_file).resolve().parent == PACKAGE


def _keyed_on_sources(base: type) -> type:
    """``base`` (a numba source-file locator) for the package's own files only, stamped
    with :func:`sources_stamp` instead of the one file's contents."""

    class Locator(base):
        def get_source_stamp(self):
            return sources_stamp()

        @classmethod
        def from_function(cls, py_func, py_file):
            return super().from_function(py_func, py_file) if _in_package(py_file) else None

    Locator.__name__ = Locator.__qualname__ = f"SparsegenKernels{base.__name__.lstrip('_')}"
    return Locator


def _numba(*names: str) -> type:
    """A class of numba's caching module by its current name or an older, private one."""
    return next(getattr(caching, n) for n in names if hasattr(caching, n))


def install() -> None:
    """Put the locators first in numba's list (once), in numba's own order: the
    directory ``NUMBA_CACHE_DIR`` names, else the package's ``__pycache__`` where it
    is writable, else the user-wide cache."""
    impl = _numba("CacheImpl", "_CacheImpl")
    if any(
        getattr(c, "__name__", "").startswith("SparsegenKernels") for c in impl._locator_classes
    ):
        return
    bases = (
        _numba("UserProvidedCacheLocator", "_UserProvidedCacheLocator"),
        _numba("InTreeCacheLocator", "_InTreeCacheLocator"),
        _numba("UserWideCacheLocator", "_UserWideCacheLocator"),
    )
    impl._locator_classes[:0] = [_keyed_on_sources(base) for base in bases]


install()
