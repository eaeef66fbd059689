"""Speed of the sparsemax kernels against torch.softmax and entmax; see sparsegen.benchmark.

    python benchmarks/bench_sparsemax.py [--quick] [--output benchmarks/results.md]

The same as ``sparsegen bench``; this script keeps the historical entry point
and writes the committed table, benchmarks/results.md, by default.
"""

from sparsegen.benchmark import main

if __name__ == "__main__":
    main()
