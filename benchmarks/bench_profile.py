"""Where sparsemax's forward time goes, against the floor of any exact forward.

Per shape, one thread, in the same interleaved rounds: torch.softmax, the whole
``sg.sparsemax`` call, the numba solver alone on NumPy arrays, and the floor (the
solver's fastest max pass and one clipped write: what every exact forward must do). It
explains the speed issue's misses: the solver's threshold search costs
``solver ÷ floor`` times the floor, the call around it adds a few µs, and where
``floor ÷ softmax`` is above a target, no exact forward can meet it on this machine.
Writes benchmarks/profile.md.

    python benchmarks/bench_profile.py [--repeats 15]
"""

import argparse
from pathlib import Path

from tqdm import tqdm

from sparsegen.benchmark import (
    PROFILE_NOTE,
    SHAPES,
    forward_profile,
    keep_freed_memory,
    profile_rows,
    write_report,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("profile.md"))
    args = parser.parse_args()
    keep_freed_memory()
    profiles = {shape: forward_profile(shape, args.repeats) for shape in tqdm(SHAPES)}
    rows = [PROFILE_NOTE, "", *profile_rows(profiles)]
    title = "Where the forward's time goes (one thread)"
    write_report(title, "bench_profile.py", args.repeats, rows, args.output)


if __name__ == "__main__":
    main()
