"""Training-step time of the translation and NLI models with sparse vs softmax attention.

Ratios measured in the same run (interleaved rounds, medians): the issues' target is
≤ 1.1× softmax's step for sparse attention. Writes benchmarks/attention_models.md.

    python benchmarks/bench_attention_models.py [--repeats 15]
"""

import argparse
from pathlib import Path

from sparsegen.benchmark import model_rows, model_step_times, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).with_name("attention_models.md")
    )
    args = parser.parse_args()
    rows = model_rows(model_step_times(args.repeats))
    title = "The experiments' models: a training step"
    write_report(title, "bench_attention_models.py", args.repeats, rows, args.output)


if __name__ == "__main__":
    main()
