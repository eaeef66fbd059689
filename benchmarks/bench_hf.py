"""A training step of a tiny Hugging Face Llama: sparsemax attention vs sdpa and eager softmax.

The target: forward + backward of a tiny random ``LlamaConfig`` model with
``attn_implementation="sparsemax"`` (``sparsegen.integrations.transformers``) within
1.2× the same model's on ``"sdpa"``, on the CPU; ``"eager"`` (softmax written out, the
weights materialised as sparsemax's are) is the fair baseline beside it, and the
integration's own ``"softmax"`` separates the cost of the function from the mapping's.

Every implementation runs the same weights on the same batch; the rounds interleave
them (one step of each per round, in a rotating order), so that the machine's load
falls on all alike, and the medians over rounds are compared. The whole measurement is
repeated ``--runs`` times to show the spread of the ratios. Writes benchmarks/hf.md.

    python benchmarks/bench_hf.py [--rounds 30] [--runs 5] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig

from sparsegen.experiments.tables import markdown_table
from sparsegen.integrations.transformers import register

IMPLEMENTATIONS = ("sdpa", "eager", "softmax", "sparsemax")
TARGET = 1.2


def models(seq: int) -> dict[str, torch.nn.Module]:
    """The same random tiny Llama under each attention implementation."""
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=seq,
    )
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()
    built = {}
    for name in IMPLEMENTATIONS:
        if name not in ("sdpa", "eager"):
            register(name, name)  # the integration's softmax / sparsemax
        model = copy.deepcopy(base)
        model.set_attn_implementation(name)
        built[name] = model
    return built


def step(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """Seconds of one forward + backward (the gradients then cleared)."""
    start = time.perf_counter()
    model(ids, labels=ids).loss.backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def measure(built: dict[str, torch.nn.Module], ids: torch.Tensor, rounds: int) -> dict:
    """Median step seconds per implementation over interleaved rounds (after 3 warm-ups)."""
    names = list(built)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds + 3):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            seconds = step(built[name], ids)
            if round_ >= 3:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def rows(results: dict[int, list[dict]]) -> list[tuple]:
    """Per thread count and implementation: the median of the runs' medians, its ratios
    to sdpa and eager, and the range of the ÷ sdpa ratio over the runs."""
    out = []
    for threads, runs in results.items():
        for name in IMPLEMENTATIONS:
            ms = statistics.median(run[name] for run in runs) * 1000
            to_sdpa = [run[name] / run["sdpa"] for run in runs]
            to_eager = [run[name] / run["eager"] for run in runs]
            out.append((
                threads, name, f"{ms:.1f}", f"{statistics.median(to_sdpa):.2f}×",
                f"{statistics.median(to_eager):.2f}×",
                f"{min(to_sdpa):.2f}–{max(to_sdpa):.2f}×",
            ))  # fmt: skip
    return out


def verdict(results: dict[int, list[dict]]) -> list[str]:
    lines = []
    for threads, runs in results.items():
        ratios = [run["sparsemax"] / run["sdpa"] for run in runs]
        median = statistics.median(ratios)
        met = "met" if median <= TARGET else "not met"
        lines.append(
            f"- {threads} thread(s): sparsemax ÷ sdpa {median:.3f}× (runs: "
            f"{', '.join(f'{r:.3f}' for r in ratios)}): target ≤ {TARGET}× {met}; "
            f"÷ eager {statistics.median(run['sparsemax'] / run['eager'] for run in runs):.2f}×."
        )
    return lines


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as stream:
            cpu = next(line.split(":", 1)[1].strip() for line in stream if "model name" in line)
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"{os.cpu_count()} cores ({cpu}); load average at the start {load}"


def sparsemax_support(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """The share of the causally visible keys that the sparsemax attention keeps."""
    model.eval()
    with torch.no_grad():
        attentions = model(ids, output_attentions=True).attentions
    model.train()
    visible = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
    kept = sum(int(((w > 0) & visible).sum()) for w in attentions)
    return kept / (int(visible.sum()) * attentions[0].shape[:2].numel() * len(attentions))


def report(
    args: argparse.Namespace, results: dict[int, list[dict]], host: str, support: float
) -> str:
    header = ("threads", "attention", "step (ms)", "÷ sdpa", "÷ eager", "÷ sdpa over runs")
    lines = [
        "# A tiny Hugging Face Llama: a training step with sparsemax attention",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {host}; torch "
        f"{torch.__version__}, transformers {transformers.__version__}, Python "
        f"{platform.python_version()}.",
        "",
        f"Command: `{' '.join(['python benchmarks/bench_hf.py', *sys.argv[1:]])}`",
        "",
        f"Model: `LlamaConfig` (hidden 128, 2 layers, 4 heads, 2 key/value heads, MLP 344, "
        f"vocabulary 1000), random weights, the same for every implementation; a batch of "
        f"{args.batch} sequences of {args.seq} random tokens, no padding. A step: forward, "
        f"the language-model loss, backward (no optimiser step). Median over {args.rounds} "
        f"interleaved rounds after 3 warm-ups; {args.runs} such runs, the table's "
        "times and ratios being the medians over them.",
        "",
        *markdown_table(header, rows(results)),
        "",
        f"## Target: sparsemax ≤ {TARGET}× sdpa",
        "",
        *verdict(results),
        "",
        "`softmax` is the integration's function with softmax as its mapping (the same "
        "masks, scores and weights materialised as for sparsemax): sparsemax ÷ softmax is "
        "the cost of the mapping itself, softmax ÷ eager that of the integration's path. "
        f"At this random initialisation sparsemax keeps {100 * support:.1f} % of the "
        "causally visible keys (measured on the batch). The machine "
        "is shared: other jobs ran beside this one, which the interleaving spreads over all "
        "implementations alike but which widens the spread between runs.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("hf.md"))
    args = parser.parse_args()
    host = machine()
    built = models(args.seq)
    ids = torch.randint(0, 1000, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    results: dict[int, list[dict]] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        results[threads] = [measure(built, ids, args.rounds) for _ in range(args.runs)]
        print(f"{threads} thread(s): done", file=sys.stderr)
    text = report(args, results, host, sparsemax_support(built["sparsemax"], ids))
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
