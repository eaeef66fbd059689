"""Whether this process was forked from one that had imported sparsegen.

GNU OpenMP cannot start threads in a process forked from one that used it: the child
hangs or aborts. numba's "omp" threading layer binds to torch's own libgomp, so a parallel
torch op before the fork is enough, even where the parent never ran a sparsegen kernel
(and never imported the numba kernels, whose own fork hook would then not exist). The hook
is registered here, when sparsegen is imported, and the kernels read the flag.
"""

from __future__ import annotations

import os

__all__ = ["forked"]

forked = False


def _in_child() -> None:
    global forked
    forked = True


os.register_at_fork(after_in_child=_in_child)
