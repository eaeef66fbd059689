"""Fused sparsemax attention on a GPU against torch's flash attention; writes
benchmarks/attention_gpu.md.

For each length L, head size D, causal or not, and two kinds of input (q, k, v ~ N(0, 1),
and q scaled so that the scores q·k·scale have variance 6, as trained models' roughly
do): torch's scaled_dot_product_attention on the flash back end (forward, forward +
backward of a fixed random gradient, peak memory of the latter less the inputs), and
``sparsegen.attention.scaled_dot_product_attention`` with sparsemax
(``implementation="fused"``) as ratios to it; the unfused path, which builds the L×S
weights, at the shortest L only; AdaSplash's sparsemax (``alpha=2``) where it imports.
Then the sparsity those inputs give (keys kept per query, share of 64×64 blocks holding a
nonzero weight, on a slice of one head, from the unfused weights), and
``sparsegen.nn.MultiheadAttention`` (softmax, sparsemax) ÷ ``torch.nn.MultiheadAttention``.

bfloat16, 16 heads, batch B = 16384 // L (at least 1). Every measurement is guarded: an
OOM, an unsupported shape or the spent time budget fills its cell with that, the run goes
on, and the report is rewritten after each row.

    python benchmarks/bench_attention_gpu.py [--budget-s 210] [--output PATH]
    python benchmarks/bench_attention_gpu.py --smoke   # no GPU: CPU tensors, Triton's interpreter
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

if not torch.cuda.is_available():  # the Triton kernels then run in the interpreter, on CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch.nn.functional as F
from bench_gpu import median_ms
from torch.nn.attention import SDPBackend, sdpa_kernel

import sparsegen as sg
from sparsegen import attention as sga
from sparsegen.experiments.tables import markdown_table

HEADS = 16
TOKENS = 16384  # B·L per call; B = 1 beyond
SHAPES = [(length, dim) for length in (1024, 4096, 16384, 32768) for dim in (64, 128)]
SMOKE_SHAPES = [(16, 16), (32, 16)]  # (L, D)
INPUT_KINDS = {"N(0,1)": 1.0, "scores σ²=6": 6.0}  # the scores' variance
BLOCK = 64  # the sparsity's block side
PROBE_BLOCKS = 16  # query blocks of 64 rows in the sparsity slice
CALL_BUDGET_S = 1.0  # fewer repeats (at least 3) for calls slower than this ÷ --repeats
MHA_SHAPES = [(8, 1024), (2, 4096)]  # (B, L), at E = 512 and 8 heads
Cell = float | str  # a measurement, or why there is none


@dataclass
class Runner:
    """Times calls and measures their memory, each guarded: a failure or a spent budget
    becomes the cell's text, never the run's end."""

    device: torch.device
    repeats: int  # 0: one call, no warm-up (--smoke: it proves the script runs, no more)
    deadline: float

    def guard(self, measure: Callable[[], object]) -> object:
        if time.perf_counter() > self.deadline:
            return "skipped (time)"
        try:
            return measure()
        except Exception as error:  # an OOM, an unsupported shape, a compiler error
            first = (str(error).strip().splitlines() or [""])[0][:160]
            print(f"    {type(error).__name__}: {first}", flush=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if isinstance(error, torch.cuda.OutOfMemoryError):
                return "OOM"
            return f"fails: {type(error).__name__}"

    def time(self, fn: Callable[[], object]) -> Cell:
        if self.repeats == 0:
            return self.guard(lambda: once_ms(fn))
        return self.guard(lambda: median_ms(fn, self._repeats(fn), self.device))

    def peak(self, fn: Callable[[], object]) -> Cell:
        """Peak MiB allocated by one (warm) call beyond what was allocated before it."""
        if self.device.type != "cuda":
            return "n/a"

        def measure() -> float:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - before) / 2**20

        return self.guard(measure)

    def _repeats(self, fn: Callable[[], object]) -> int:
        """``repeats``, fewer (at least 3) where one call would make the timing last past
        CALL_BUDGET_S; the first call also compiles."""
        if self.device.type != "cuda":
            return self.repeats
        fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        once = max(time.perf_counter() - start, 1e-6)
        return max(3, min(self.repeats, int(CALL_BUDGET_S / once)))


def once_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start)


def flash_sdpa(q, k, v, causal: bool) -> torch.Tensor:
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def sparsemax_attention(*args, implementation: str, **kwargs):
    """sparsegen's scaled_dot_product_attention with sparsemax."""
    return sga.scaled_dot_product_attention(
        *args, mapping=sg.sparsemax, implementation=implementation, **kwargs
    )


def sparse_sdpa(q, k, v, causal: bool, implementation: str, mapping=sg.sparsemax) -> torch.Tensor:
    """sparsegen's scaled_dot_product_attention with ``mapping``, ``(q, k, v, causal)`` as
    every attention here takes them."""
    return sga.scaled_dot_product_attention(
        q, k, v, is_causal=causal, mapping=mapping, implementation=implementation
    )


def attentions(implementation: str) -> dict[str, Callable[..., torch.Tensor]]:
    """Each attention ``(q, k, v, causal) -> output``: the baseline first, AdaSplash where
    it imports."""
    found = {
        "SDPA": flash_sdpa,
        "sparsemax": functools.partial(sparse_sdpa, implementation=implementation),
        "unfused": functools.partial(sparse_sdpa, implementation="unfused"),
    }
    try:
        from adasplash import adasplash

        found["AdaSplash"] = lambda q, k, v, causal: adasplash(q, k, v, alpha=2.0, is_causal=causal)
    except ImportError:
        pass
    return found


def training_step(attend, q, k, v, causal: bool) -> Callable[[], None]:
    """Forward and backward of a fixed random gradient, into q, k and v."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    grad = torch.randn_like(q)

    def step() -> None:
        attend(*leaves, causal).backward(grad)
        for leaf in leaves:
            leaf.grad = None

    return step


def three_measures(runner: Runner, attend, q, k, v, causal: bool) -> dict[str, Cell]:
    """Forward ms, forward+backward ms and the latter's peak MiB."""
    step = training_step(attend, q, k, v, causal)
    return {
        "fwd": runner.time(lambda: attend(q, k, v, causal)),
        "fb": runner.time(step),
        "peak": runner.peak(step),
    }


def sparsity(q, k, v, causal: bool) -> tuple[float, float, float]:
    """Keys kept and keys visible per query, and the share of the visible 64×64 blocks that
    hold a nonzero weight: head 0 of batch 0, query blocks spread over the sequence, the
    unfused float32 weights."""
    length = q.shape[-2]
    rows_per_block = min(BLOCK, length)
    count = max(1, min(PROBE_BLOCKS, length // rows_per_block))
    starts = torch.linspace(0, length - rows_per_block, count).long()
    starts = starts // rows_per_block * rows_per_block
    rows = (starts[:, None] + torch.arange(rows_per_block)).flatten().to(q.device)
    keep = torch.arange(length, device=q.device) <= rows[:, None]
    if not causal:
        keep = torch.ones_like(keep)
    result = sparsemax_attention(
        q[0, 0, rows].float(), k[0, 0].float(), v[0, 0].float(), attn_mask=keep,
        need_weights=True, implementation="unfused",
    )  # fmt: skip

    def blocks(present: torch.Tensor) -> torch.Tensor:
        padded = F.pad(present.to(torch.uint8), (0, -length % BLOCK))
        return padded.view(count, rows_per_block, -1, BLOCK).amax((1, 3))

    live = blocks(result.weights > 0).sum() / blocks(keep).sum()
    support = result.support_size.float().mean()
    return support.item(), keep.sum(-1).float().mean().item(), live.item()


def config_row(runner, found, shape, causal: bool, kind: str, context: dict) -> dict:
    """Every attention at one shape and input kind (the baseline once per shape)."""
    length, dim = shape
    batch, heads, dtype = context["batch"](length), context["heads"], context["dtype"]
    torch.manual_seed(0)
    q, k, v = (torch.randn(batch, heads, length, dim, device=runner.device, dtype=dtype)
               for _ in range(3))  # fmt: skip
    q = q * math.sqrt(INPUT_KINDS[kind])
    row = {"L": length, "B": batch, "D": dim, "causal": causal, "inputs": kind}
    key = (length, dim, causal)
    if key not in context["baseline"]:  # its time does not depend on the values
        context["baseline"][key] = three_measures(runner, found["SDPA"], q, k, v, causal)
    row["SDPA"] = context["baseline"][key]
    for name, attend in found.items():
        if name == "SDPA" or (name == "unfused" and length != context["unfused_at"]):
            continue
        print(f"  {name}", flush=True)
        row[name] = three_measures(runner, attend, q, k, v, causal)
    row["sparsity"] = runner.guard(lambda: sparsity(q, k, v, causal))
    return row


def ms(cell: Cell) -> str:
    return f"{cell:.2f}" if isinstance(cell, float) else cell


def ratio(cell: Cell, base: Cell) -> str:
    if isinstance(cell, str):
        return cell
    return "—" if isinstance(base, str) or base <= 0 else f"{cell / base:.2f}"


def measures(row: dict, name: str) -> list[str]:
    """``name``'s three ratios to the baseline; "—" where it was not run."""
    if name not in row:
        return ["—"] * 3
    return [ratio(row[name][part], row["SDPA"][part]) for part in ("fwd", "fb", "peak")]


def sweep_tables(rows: list[dict], peers: list[str]) -> list[str]:
    def shape(row: dict) -> list[object]:
        return [row["L"], row["B"], row["D"], "yes" if row["causal"] else "no", row["inputs"]]

    head = ["L", "B", "D", "causal", "inputs"]
    main = [[*shape(r), *(ms(r["SDPA"][p]) for p in ("fwd", "fb", "peak")),
             *measures(r, "sparsemax")] for r in rows]  # fmt: skip
    lines = ["", "## Torch's flash attention and sparsegen's fused sparsemax", ""]
    lines += markdown_table(
        [*head, "SDPA fwd (ms)", "SDPA fwd+bwd (ms)", "SDPA peak (MiB)",
         "sparsemax fwd ÷", "fwd+bwd ÷", "peak ÷"], main,
    )  # fmt: skip
    others = [r for r in rows if any(p in r for p in peers)]
    lines += ["", "## Peers ÷ SDPA (unfused: shortest L only)", ""]
    cells = [f"{p} {part}" for p in peers for part in ("fwd ÷", "fwd+bwd ÷", "peak ÷")]
    peer_rows = [[*shape(r), *(c for p in peers for c in measures(r, p))] for r in others]
    lines += markdown_table([*head, *cells], peer_rows)
    if "AdaSplash" not in peers:
        lines += ["", "AdaSplash: not installed (`import adasplash` failed)."]
    lines += ["", "## Sparsity (head 0, 16 query blocks of 64 rows, unfused float32 weights)", ""]
    lines += markdown_table(
        [*head, "keys kept / query", "keys visible / query", "live 64×64 blocks"],
        [[*shape(r), *sparsity_cells(r["sparsity"])] for r in rows],
    )
    return lines


def sparsity_cells(cell: object) -> list[str]:
    if isinstance(cell, str):
        return [cell, "—", "—"]
    kept, visible, live = cell
    return [f"{kept:.1f}", f"{visible:.0f}", f"{100 * live:.1f} %"]


def mha_modules(embed: int, heads: int, device, dtype) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    made = {"torch": torch.nn.MultiheadAttention(embed, heads, batch_first=True)}
    for mapping in ("softmax", "sparsemax"):
        made[mapping] = sg.nn.MultiheadAttention(embed, heads, batch_first=True, mapping=mapping)
    return {name: module.to(device, dtype) for name, module in made.items()}


def module_calls(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor):
    """Self-attention over ``x``: a forward without grad, and a forward+backward."""

    def forward() -> None:
        with torch.no_grad():
            module(x, x, x, need_weights=False)

    def step() -> None:
        module(x, x, x, need_weights=False)[0].backward(grad)
        module.zero_grad(set_to_none=True)

    return forward, step


def mha_lines(runner: Runner, shapes, embed: int, heads: int, dtype) -> list[str]:
    """sparsegen.nn.MultiheadAttention (softmax, sparsemax) ÷ torch's, need_weights=False."""
    rows = []
    for batch, length in shapes:
        x = torch.randn(batch, length, embed, device=runner.device, dtype=dtype)
        times = {}
        for name, module in mha_modules(embed, heads, runner.device, dtype).items():
            print(f"  MultiheadAttention {name} {batch}×{length}", flush=True)
            forward, step = module_calls(module, x, torch.randn_like(x))
            times[name] = (runner.time(forward), runner.time(step))
        base = times.pop("torch")
        rows.append([f"{batch}×{length}", ms(base[0]), ms(base[1]),
                     *(ratio(t[i], base[i]) for t in times.values() for i in (0, 1))])  # fmt: skip
    head = ["B×L", "torch fwd (ms)", "torch fwd+bwd (ms)", "softmax fwd ÷", "softmax fwd+bwd ÷"]
    return markdown_table([*head, "sparsemax fwd ÷", "sparsemax fwd+bwd ÷"], rows)


def run_line(device: torch.device) -> str:
    """The date, the machine and the versions, which head each GPU report."""
    import triton

    machine = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (Triton interpreter)"
    return (
        f"{datetime.date.today()}, {machine}, torch {torch.__version__}, triton "
        f"{triton.__version__}, sparsegen {sg.__version__}, Python {platform.python_version()}"
    )


def header(args, device: torch.device, dtype: torch.dtype) -> list[str]:
    return [
        "# Fused sparsemax attention against flash attention",
        "",
        f"{run_line(device)}; {str(dtype).removeprefix('torch.')}, sparsegen's "
        f"implementation={args.implementation!r}. "
        f"Medians of up to {args.repeats} calls after warm-ups (at least 3 where one call is "
        f"slow); peak memory of one forward+backward less the inputs. "
        "`python benchmarks/bench_attention_gpu.py`.",
    ]


def report_arguments(
    parser: argparse.ArgumentParser, budget_s: float, report: str
) -> argparse.Namespace:
    """The options every GPU report takes (``--repeats``, ``--budget-s``, ``--output``, default
    ``benchmarks/<report>`` but none under ``--smoke``, and ``--smoke``), parsed."""
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=budget_s, help="then skip what is left")
    parser.add_argument("--output", type=Path, help=f"default benchmarks/{report}")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, any device")
    args = parser.parse_args()
    if args.output is None and not args.smoke:
        args.output = Path(__file__).with_name(report)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
    return args


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--implementation", default="fused", choices=("fused", "auto", "unfused"))
    return report_arguments(parser, 210.0, "attention_gpu.md")


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    dtype = torch.float32 if args.smoke else torch.bfloat16
    runner = Runner(device, 0 if args.smoke else args.repeats, started + args.budget_s - 20)
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    context = {
        "batch": (lambda length: 2) if args.smoke else (lambda length: max(1, TOKENS // length)),
        "heads": 2 if args.smoke else HEADS,
        "dtype": dtype,
        "unfused_at": shapes[0][0],
        "baseline": {},
    }
    found = attentions(args.implementation)
    peers = [name for name in found if name not in ("SDPA", "sparsemax")]
    rows: list[dict] = []

    def report(tail: list[str]) -> str:
        text = "\n".join([*header(args, device, dtype), *sweep_tables(rows, peers), *tail])
        if args.output is not None:
            args.output.write_text(text + "\n")
        return text

    for shape in shapes:
        for causal in (False, True):
            for kind in INPUT_KINDS:
                print(f"L={shape[0]} D={shape[1]} causal={causal} {kind}", flush=True)
                rows.append(config_row(runner, found, shape, causal, kind, context))
                report([])
    runner.deadline = started + args.budget_s
    embed, heads = (32, 4) if args.smoke else (512, 8)
    title = f"## MultiheadAttention (E={embed}, {heads} heads, need_weights=False) ÷ torch's"
    tail = ["", title, ""]
    tail += mha_lines(runner, [(2, 32)] if args.smoke else MHA_SHAPES, embed, heads, dtype)
    tail += ["", f"Run time: {time.perf_counter() - started:.0f} s."]
    print(report(tail))


if __name__ == "__main__":
    main()
