"""Training-step time of the translation and NLI models with sparse vs softmax attention.

Ratios measured in the same run (interleaved rounds, medians): the issues' target is
≤ 1.1× softmax's step for sparse attention. Writes benchmarks/attention_models.md.

    python benchmarks/bench_attention_models.py [--repeats 15]
"""

import argparse
from pathlib import Path

import torch

from sparsegen.benchmark import model_rows, model_step_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).with_name("attention_models.md")
    )
    args = parser.parse_args()
    text = "\n".join(
        [
            "# The experiments' models: a training step",
            "",
            f"torch {torch.__version__}, median of {args.repeats} interleaved rounds; "
            "`python benchmarks/bench_attention_models.py`.",
            "",
            *model_rows(model_step_times(args.repeats)),
        ]
    )
    print(text)
    args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
