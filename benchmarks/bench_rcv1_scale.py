"""Memory and time of the Table 2 protocol at RCV1-v2's full size, on generated data.

    python benchmarks/bench_rcv1_scale.py [--max-iter 5]

RCV1-v2 cannot be downloaded on every machine, so this generates a CSR set of
its shapes (23,149 train / 781,265 test rows, 47,236 features, 76 non-zeros
per row as RCV1's 0.16 % density, 103 labels, 3 per row) and serves it through
``sklearn.datasets.fetch_rcv1``, then runs what ``sparsegen multilabel
--datasets rcv1`` runs per task: load and standardise the split, fit one model
on the training rows, score it on the test rows in chunks. It prints the peak
resident memory after each step and the time per L-BFGS iteration, from which
a full run's duration follows (the protocol fits 11 × 5 + 2 models per method,
each up to 100 iterations).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import scipy.sparse as sp
import sklearn.datasets
from sklearn.utils import Bunch

from sparsegen.experiments import multilabel

TRAIN, TEST, FEATURES, LABELS, PER_ROW = 23_149, 781_265, 47_236, 103, 76


def generated_rcv1(subset: str, **_) -> Bunch:
    """A random CSR set of RCV1-v2's shapes; the same rows for a subset on every call."""
    first, rows = (0, TRAIN) if subset == "train" else (TRAIN, TEST)
    rng = np.random.default_rng(first)
    indptr = np.arange(rows + 1, dtype=np.int32) * PER_ROW
    indices = rng.integers(0, FEATURES, rows * PER_ROW, dtype=np.int32)
    X = sp.csr_matrix((rng.random(rows * PER_ROW), indices, indptr), shape=(rows, FEATURES))
    X.sum_duplicates()
    Y = np.zeros((rows, LABELS), dtype=np.int8)
    Y[np.arange(rows)[:, None], rng.integers(0, LABELS, (rows, 3))] = 1
    return Bunch(data=X, target=sp.csr_matrix(Y), target_names=[f"t{j}" for j in range(LABELS)])


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-iter", type=int, default=5, help="L-BFGS iterations to time")
    args = parser.parse_args()
    sklearn.datasets.fetch_rcv1 = generated_rcv1
    start = time.perf_counter()
    split = multilabel.load_split("rcv1")
    print(
        f"split loaded and standardised: X_train {split.X_train.shape} ({split.X_train.nnz:,} "
        f"non-zeros), X_test {split.X_test.shape} ({split.X_test.nnz:,}); "
        f"{time.perf_counter() - start:.0f} s, peak {peak_gb():.2f} GB"
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = multilabel._fit(
            "sparsemax", 1e-4, None, split.X_train, split.Y_train, max_iter=args.max_iter
        )
    fit = time.perf_counter() - start
    print(
        f"fit: {clf.n_iter_} L-BFGS iterations in {fit:.1f} s "
        f"({fit / max(clf.n_iter_, 1):.2f} s each), peak {peak_gb():.2f} GB"
    )
    start = time.perf_counter()
    scores = multilabel._f1_scores(clf, split.X_test, split.Y_test, "sparsemax", 0.0)
    print(
        f"test scored in chunks of {multilabel.PREDICT_CHUNK_ROWS:,} rows: micro/macro-F1 "
        f"{100 * scores[0]:.2f}/{100 * scores[1]:.2f} in {time.perf_counter() - start:.0f} s, "
        f"peak {peak_gb():.2f} GB"
    )


if __name__ == "__main__":
    main()
