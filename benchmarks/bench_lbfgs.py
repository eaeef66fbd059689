"""Time L-BFGS training of LinearMultilabelClassifier on Reuters-K500 (6000 × 500, 103 labels).

    python benchmarks/bench_lbfgs.py [--loss sparsemax] [--max-iter 100]

One thread (torch and BLAS), the shipped copy of MEKA's Reuters-K500, all 6000
rows. The speed issue's target: under 30 s for the sparsemax loss.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch

from sparsegen.datasets import load_mulan
from sparsegen.linear_model import LOSSES, LinearMultilabelClassifier
from sparsegen.metrics import micro_f1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loss", nargs="+", default=["sparsemax"], choices=sorted(LOSSES))
    parser.add_argument("--max-iter", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_mulan("reuters-k500", "all")
    X, Y = data.X, data.Y
    print(f"Reuters-K500: X {X.shape} ({X.nnz} non-zeros, CSR), Y {Y.shape}, 1 thread")
    for loss in args.loss:
        clf = LinearMultilabelClassifier(loss, alpha=1e-4, max_iter=args.max_iter)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(X, Y)
        seconds = time.perf_counter() - start
        print(
            f"{loss:>22}: {seconds:6.2f} s for {clf.n_iter_} L-BFGS iterations "
            f"({1000 * seconds / max(clf.n_iter_, 1):.1f} ms each); "
            f"training micro-F1 {100 * micro_f1(Y, clf.predict(X)):.1f}"
        )


if __name__ == "__main__":
    main()
