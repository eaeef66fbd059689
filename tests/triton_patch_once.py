"""Triton's interpreter, patching the language once a launch instead of once a helper call.

The interpreter runs a kernel with ``triton.language`` patched to its NumPy semantics
(``interpreter._patch_lang``, which patches the language modules the function's globals
name: ``triton.language`` and ``triton.language.core``), and patches them again on every
call of a ``@triton.jit`` helper inside the kernel: each time it walks their members with
``inspect.getmembers``, a third of the interpreter's time in kernels built of small
helpers (the fused attention's). Here a helper called by a running launch is patched only
for a language module the launch has not patched yet (``tl.zeros`` names ``core``, which a
kernel module naming ``tl`` does not). Were a patch skipped that was needed, the helper
would call the unpatched language and fail loudly ("Did you forget to add @triton.jit?"),
never compute something else. ``tests/conftest.py`` turns this on for the whole suite when
the kernels run in the interpreter.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import triton.language as tl
from triton.runtime import interpreter


@functools.cache
def _languages(fn) -> frozenset[str]:
    """The language modules ``interpreter._patch_lang(fn)`` patches."""
    return frozenset(
        value.__name__ for value in fn.__globals__.values() if value is tl or value is tl.core
    )


@contextlib.contextmanager
def language_patched_once() -> Iterator[None]:
    """Inside the block, a launch patches each language module once (module docstring)."""
    launch, patch = interpreter.GridExecutor.__call__, interpreter._patch_lang
    patched: set[str] | None = None  # in a launch, the modules patched since it began

    def launch_patching_once(self, *args, **kwargs):
        nonlocal patched
        patched = set()
        try:
            return launch(self, *args, **kwargs)
        finally:
            patched = None

    def patch_once(fn):
        languages = _languages(fn)
        if patched is not None and languages <= patched:  # a helper of the running launch
            return interpreter._LangPatchScope()  # (nothing to restore)
        scope = patch(fn)
        if patched is not None:
            patched.update(languages)
        return scope

    interpreter.GridExecutor.__call__, interpreter._patch_lang = launch_patching_once, patch_once
    try:
        yield
    finally:
        interpreter.GridExecutor.__call__, interpreter._patch_lang = launch, patch
