"""Forward, and forward+backward, time of every member of the sparsegen family against
sparsemax's, same run.

The speed issue's target: each member (float and per-row tensor parameter, with and
without a mask) ≤ 1.15× sparsemax's unmasked forward, masked sparsemax ≤ 1.1×. The
second table times the gradients a model trains with: of the scores, and of a learnt λ
or q. Run it three times on an idle machine and report the spread. Writes
benchmarks/family.md.

    python benchmarks/bench_family.py [--repeats 9]
"""

from sparsegen.benchmark import family_page_rows, family_page_times, shape_script


def main() -> None:
    title = "The family at sparsemax's cost"
    shape_script(__doc__, __file__, title, family_page_times, family_page_rows, repeats=9)


if __name__ == "__main__":
    main()
