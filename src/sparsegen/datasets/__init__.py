"""Data for the experiments: multi-label benchmarks (ARFF) and text (translation, NLI).

The shipped sets need no download; every loader also takes files or a folder of
your own. :mod:`sparsegen.datasets.multilabel` reads MULAN/MEKA ARFF files and
builds Laha et al.'s synthetic sets; :mod:`sparsegen.datasets.text` reads
parallel corpora and SNLI/MultiNLI.
"""

from sparsegen._extras import needs_extra
from sparsegen.datasets.text import (
    NLI_LABELS,
    NLIData,
    ParallelData,
    load_multi30k,
    load_nli,
    read_nli,
    read_parallel,
    read_tatoeba,
    split_by_group,
)

with needs_extra("experiments", __name__):  # SciPy, for the sparse feature matrices
    from sparsegen.datasets.multilabel import (
        BENCHMARKS,
        DATA_ENV,
        MultilabelData,
        fetch_rcv1_multilabel,
        load_arff,
        load_mulan,
        make_laha_synthetic,
    )

__all__ = [
    "BENCHMARKS",
    "DATA_ENV",
    "NLI_LABELS",
    "MultilabelData",
    "NLIData",
    "ParallelData",
    "fetch_rcv1_multilabel",
    "load_arff",
    "load_mulan",
    "load_multi30k",
    "load_nli",
    "make_laha_synthetic",
    "read_nli",
    "read_parallel",
    "read_tatoeba",
    "split_by_group",
]
