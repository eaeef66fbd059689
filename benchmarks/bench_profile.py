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

from sparsegen.benchmark import PROFILE_NOTE, forward_profile, profile_rows, shape_script


def main() -> None:
    title = "Where the forward's time goes (one thread)"
    rows = lambda profiles: [PROFILE_NOTE, "", *profile_rows(profiles)]  # noqa: E731
    shape_script(__doc__, __file__, title, forward_profile, rows, repeats=15)


if __name__ == "__main__":
    main()
