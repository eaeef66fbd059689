"""Forward time of every member of the sparsegen family against sparsemax's, same run.

The speed issue's target: each member (float and per-row tensor parameter, with and
without a mask) ≤ 1.15× sparsemax's unmasked forward, masked sparsemax ≤ 1.1×. Run it
three times on an idle machine and report the spread. Writes benchmarks/family.md.

    python benchmarks/bench_family.py [--repeats 9]
"""

import argparse
from pathlib import Path

from tqdm import tqdm

from sparsegen.benchmark import (
    SHAPES,
    family_rows,
    family_times,
    keep_freed_memory,
    write_report,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("family.md"))
    args = parser.parse_args()
    keep_freed_memory()
    ratios = {shape: family_times(shape, args.repeats) for shape in tqdm(SHAPES)}
    title = "The family at sparsemax's cost"
    write_report(title, "bench_family.py", args.repeats, family_rows(ratios), args.output)


if __name__ == "__main__":
    main()
