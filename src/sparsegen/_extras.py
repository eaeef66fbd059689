"""Optional libraries: a missing one is a one-line error naming the extra that installs it.

The core (mappings, losses, ``nn``, attention) needs torch, numpy and numba only;
the estimator and the reproduction harness import libraries that ``pyproject.toml``
declares as extras (``sparsegen[sklearn]``, ``sparsegen[experiments]``, ...).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["OPTIONAL", "MissingExtra", "needs_extra"]

# import name -> the distribution pip installs; only these become MissingExtra, so an
# unrelated missing module (a user's pickle, a bug) keeps its own error
OPTIONAL = {
    "arff": "liac-arff",
    "joblib": "joblib",
    "matplotlib": "matplotlib",
    "rouge_score": "rouge-score",
    "sacrebleu": "sacrebleu",
    "scipy": "scipy",
    "sentencepiece": "sentencepiece",
    "sklearn": "scikit-learn",
    "tqdm": "tqdm",
    "transformers": "transformers",
    "triton": "triton",
}


class MissingExtra(ModuleNotFoundError):
    """An optional library is not installed; the message says which extra brings it."""


@contextlib.contextmanager
def needs_extra(extra: str, user: str) -> Iterator[None]:
    """Turn an optional library missing in the block into :class:`MissingExtra`.

    ``user`` (a module's ``__name__``, a function, a command) heads the message:
    ``sparsegen.linear_model needs scikit-learn: pip install 'sparsegen[sklearn]'``,
    chained from the original error. A :class:`MissingExtra` raised inside (by a
    module the block imports) passes unchanged: it names its own extra.
    """
    try:
        yield
    except MissingExtra:
        raise
    except ModuleNotFoundError as error:
        library = OPTIONAL.get((error.name or "").partition(".")[0])
        if library is None:
            raise
        message = f"{user} needs {library}: pip install 'sparsegen[{extra}]'"
        raise MissingExtra(message, name=error.name) from error
