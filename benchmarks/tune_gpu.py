"""The GPU kernels' tile sizes swept on a GPU, each timed against the baseline of the same
run; writes benchmarks/tune_gpu.md.

The defaults (``_triton_projection``'s ``BLOCK_ELEMENTS``, ``LONG_CHUNK``,
``MAX_SHORT_K`` and the warps of ``_short_blocks``; ``_triton_attention``'s
``block_sizes`` and ``candidate_slots``) were chosen from the compiler's register and
shared-memory reports (``tests/library/triton_compile.py``). This script times the
alternatives so that they can be set from measurements instead:

- the projection on chip: elements per program × warps (and how many programs a processor
  the blocks aim at), forward and forward+backward
  (the kernels called directly: ``project_triton``, ``vjp_triton``) ÷ ``torch.softmax``,
  float32 and bfloat16;
- the split projection: the chunk a program takes, and at K = 32768 the on-chip path
  against the split one;
- the fused attention (bfloat16, sparsemax): ``(BLOCK_M, BLOCK_N, warps, stages)`` and the
  candidate slots a query, forward and forward+backward ÷ flash SDPA.

A configuration that does not compile (shared memory, registers) or runs out of memory
reports why; the best of each row is marked with *. Nothing here changes the defaults.

    python benchmarks/tune_gpu.py [--budget-s 300] [--output PATH]
    python benchmarks/tune_gpu.py --smoke   # no GPU: Triton's interpreter, tiny shapes
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator

import torch
from bench_attention_gpu import (
    Cell,
    Runner,
    flash_sdpa,
    report_arguments,
    run_line,
    sparse_sdpa,
    training_step,
)
from bench_gpu import forward_backward, softmax

from sparsegen import _triton_attention as ta
from sparsegen import _triton_projection as tp
from sparsegen.experiments.tables import markdown_table

SHORT_SHAPES = [(4096, 16), (4096, 64), (1024, 512), (16384, 1024), (256, 4096), (8192, 8192)]
# (elements a program, warps, programs wanted a processor: 0 = as many as the elements
# give, however few)
SHORT_CONFIGS = [*((elements, warps, 1) for elements in (1024, 4096, 16384)
                   for warps in (4, 8, 16)), (4096, 4, 0), (4096, 4, 4)]  # fmt: skip
SPLIT_SHAPES = [(32, 32768), (2048, 32768), (4, 262144), (64, 1048576)]
CHUNKS = (2048, 4096, 8192, 16384)
ATTENTION_SHAPES = [(4096, 64, False), (4096, 128, True), (16384, 64, False)]  # (L, D, causal)
TILES = [(64, 64, 8, 2), (64, 64, 4, 2), (64, 64, 8, 3), (64, 64, 8, 1), (128, 64, 8, 2),
         (64, 128, 8, 2), (128, 128, 8, 2), (32, 64, 4, 2), (64, 32, 4, 2)]  # fmt: skip
SLOTS = (32, 64, 128)
HEADS, TOKENS = 16, 16384  # as bench_attention_gpu.py: B = TOKENS // L
# Where the on-chip and the split projection's sweeps end, as shares of the time budget
# (the attention's takes the rest): a cell past its section's end reads "skipped (time)".
SHARES = (0.35, 0.5)


@contextlib.contextmanager
def patched(module: object, **values: object) -> Iterator[None]:
    """``module``'s globals set to ``values`` inside the block (the launchers read them at
    each call), restored after."""
    saved = {name: getattr(module, name) for name in values}
    for name, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def short_blocks_with(warps: int, fill: int) -> Callable[..., tuple[int, int, int]]:
    """``_short_blocks`` with its warps replaced, aiming at ``fill`` programs a processor
    (0: no aim)."""
    default = tp._short_blocks
    processors = tp.processors

    def blocks(rows: int, k: int, block_elements: int, device) -> tuple[int, int, int]:
        aim = (lambda _: 1) if fill == 0 else (lambda d: fill * processors(d))
        with patched(tp, processors=aim):
            block_m, block_k, _ = default(rows, k, block_elements, device)
        return block_m, block_k, warps

    return blocks


def projection_calls(x: torch.Tensor, **sizes: int) -> tuple[Callable, Callable]:
    """The Triton projection's forward, and its forward then backward (of ``cos x``, the
    same for every size), at ``sizes``."""
    grad = torch.cos(x)

    def forward() -> torch.Tensor:
        return tp.project_triton(x, None, None, info=False, keep_scale=False, **sizes)[0]

    def both() -> torch.Tensor:
        return tp.vjp_triton(forward(), None, grad, None, **sizes)

    return forward, both


def checked(runner: Runner, fn: Callable[[], torch.Tensor], reference: torch.Tensor) -> Cell:
    """``fn``'s median ms, or why not: "wrong" where its output strays from ``reference``
    (the defaults' output) by more than the dtype's rounding."""
    found = runner.guard(fn)
    if isinstance(found, str):
        return found
    error = (found.float() - reference.float()).abs().max().item()
    if not error <= 4 * torch.finfo(reference.dtype).eps * max(1.0, reference.abs().max().item()):
        return f"wrong ({error:.1e})"
    return runner.time(fn)


def best_marked(cells: list[Cell]) -> list[str]:
    """The cells as text, the smallest number marked with *."""
    numbers = [c for c in cells if isinstance(c, float)]
    best = min(numbers, default=None)
    return [c if isinstance(c, str) else f"{c:.2f}{' *' if c == best else ''}" for c in cells]


def ratios(cells: list[Cell], base: Cell) -> list[Cell]:
    if isinstance(base, str):
        return [base] * len(cells)
    return [c if isinstance(c, str) else c / base for c in cells]


def softmax_calls(runner: Runner, x: torch.Tensor) -> tuple[Cell, Cell]:
    """torch.softmax's forward, and forward then backward, timed."""
    return runner.time(lambda: softmax(x)), runner.time(forward_backward(softmax, x))


def short_tables(runner: Runner, shapes, configs, dtype: torch.dtype) -> list[str]:
    """On-chip rows: each (elements, warps, fill) ÷ softmax, forward and forward+backward."""
    rows = {"fwd": [], "fwd+bwd": []}
    for batch, k in shapes:
        print(f"projection {batch}×{k} {dtype}", flush=True)
        x = torch.randn(batch, k, device=runner.device, dtype=dtype)
        base = dict(zip(rows, softmax_calls(runner, x), strict=True))
        cells: dict[str, list[Cell]] = {"fwd": [], "fwd+bwd": []}
        expected = [fn() for fn in projection_calls(x)]  # the defaults
        for elements, warps, fill in configs:
            with patched(tp, _short_blocks=short_blocks_with(warps, fill)):
                calls = projection_calls(x, block_elements=elements)
                for part, fn, reference in zip(cells.values(), calls, expected, strict=True):
                    part.append(checked(runner, fn, reference))
        for part in rows:
            rows[part].append([f"{batch}×{k}", *best_marked(ratios(cells[part], base[part]))])
    head = ["B×K", *(f"{e}/{w}w/{f or '–'}" for e, w, f in configs)]
    lines = []
    for part, table in rows.items():
        title = f"### {part} ÷ torch.softmax {part} ({_name(dtype)}; elements/warps/fill)"
        lines += ["", title, ""]
        lines += markdown_table(head, table)
    return lines


def split_tables(runner: Runner, shapes, chunks, dtype: torch.dtype) -> list[str]:
    """Split rows: each chunk ÷ softmax; at K = 2·MAX_SHORT_K also the row held on chip."""
    rows = []
    for batch, k in shapes:
        print(f"split projection {batch}×{k} {dtype}", flush=True)
        x = torch.randn(batch, k, device=runner.device, dtype=dtype)
        base = runner.time(lambda x=x: softmax(x))
        expected = projection_calls(x)[0]()
        split = [projection_calls(x, chunk=chunk, max_short_k=k - 1)[0] for chunk in chunks]
        cells = [checked(runner, forward, expected) for forward in split]
        if k <= 2 * tp.MAX_SHORT_K:
            on_chip = projection_calls(x, max_short_k=k, block_elements=k)[0]
            cells.append(checked(runner, on_chip, expected))
        else:
            cells.append("—")
        rows.append([f"{batch}×{k}", *best_marked(ratios(cells, base))])
    head = ["B×K", *(f"chunk {c}" for c in chunks), "on chip"]
    title = f"### Split rows, fwd ÷ torch.softmax ({_name(dtype)})"
    return ["", title, "", *markdown_table(head, rows)]


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def attention_inputs(runner: Runner, length: int, dim: int, heads: int, batch: int):
    torch.manual_seed(0)
    dtype = torch.bfloat16 if runner.device.type == "cuda" else torch.float32
    return [torch.randn(batch, heads, length, dim, device=runner.device, dtype=dtype)
            for _ in range(3)]  # fmt: skip


def attention_pair(runner: Runner, q, k, v, causal: bool, attend) -> tuple[Cell, Cell]:
    step = training_step(attend, q, k, v, causal)
    return runner.time(lambda: attend(q, k, v, causal)), runner.time(step)


def fused_sparsemax(q, k, v, causal: bool) -> torch.Tensor:
    return sparse_sdpa(q, k, v, causal, implementation="fused")


def attention_error(runner: Runner, qkv, causal: bool, expected) -> tuple[str, str] | None:
    """None where the fused output is the defaults' ``expected`` up to bfloat16's rounding
    of a different summation order, else why not, once for each cell."""
    found = runner.guard(lambda: fused_sparsemax(*qkv, causal))
    if isinstance(found, str):
        return found, found
    error = (found.float() - expected).abs().max().item()
    return None if error <= 2e-2 else (f"wrong ({error:.1e})",) * 2


def attention_table(runner: Runner, shapes, tiles, slots, heads: int, tokens: int) -> list[str]:
    """Each tile and slot count ÷ flash SDPA, forward and forward+backward."""
    choices = [("tile", tile) for tile in tiles] + [("slots", n) for n in slots]
    rows = []
    for length, dim, causal in shapes:
        print(f"attention L={length} D={dim} causal={causal}", flush=True)
        q, k, v = attention_inputs(runner, length, dim, heads, max(1, tokens // length))
        base = attention_pair(runner, q, k, v, causal, flash_sdpa)
        expected = fused_sparsemax(q, k, v, causal).float()  # the defaults
        cells: tuple[list[Cell], list[Cell]] = ([], [])
        for kind, choice in choices:
            sizes = {"block_sizes": lambda *_, t=choice: t} if kind == "tile" else {
                "candidate_slots": lambda *_, n=choice: n}  # fmt: skip
            with patched(ta, **sizes):
                wrong = attention_error(runner, (q, k, v), causal, expected)
                measured = wrong or attention_pair(runner, q, k, v, causal, fused_sparsemax)
                for part, cell in zip(cells, measured, strict=True):
                    part.append(cell)
        for part, name in ((0, "fwd"), (1, "fwd+bwd")):
            marked = best_marked(ratios(cells[part], base[part]))
            rows.append([length, dim, "yes" if causal else "no", name, *marked])
    head = ["L", "D", "causal", "÷ SDPA", *(f"{c[0]}={c[1]}" for c in choices)]
    return ["", "## Fused sparsemax attention (tile: BLOCK_M, BLOCK_N, warps, stages)", "",
            *markdown_table(head, rows)]  # fmt: skip


def header(device: torch.device, repeats: int) -> list[str]:
    return [
        "# The GPU kernels' tile sizes",
        "",
        f"{run_line(device)}. Medians of up to {repeats} calls after warm-ups, each ÷ the "
        "baseline's median of "
        "the same run; * the fastest of a row. Defaults now: projection "
        f"{tp.BLOCK_ELEMENTS} elements a program, chunks of {tp.LONG_CHUNK}, rows on chip up "
        f"to K = {tp.MAX_SHORT_K}; attention {ta.block_sizes(device, torch.bfloat16, 64)} at "
        f"bfloat16 D ≤ 128, {ta.candidate_slots(device)} slots. "
        "`python benchmarks/tune_gpu.py`.",
    ]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    return report_arguments(parser, 300.0, "tune_gpu.md")


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runner = Runner(device, 0 if args.smoke else args.repeats, started + args.budget_s)
    lines = header(device, args.repeats)

    def save() -> None:
        if args.output is not None:
            args.output.write_text("\n".join(lines) + "\n")

    def write(table: Callable[..., list[str]], *table_args: object) -> None:
        """Adds ``table(runner, *table_args)``'s lines, or one saying why it raised (the
        defaults' own reference call is not guarded inside: the next tables still run)."""
        try:
            more = table(runner, *table_args)
        except Exception as error:
            first = (str(error).strip().splitlines() or [""])[0][:200]
            more = ["", f"{table.__name__}: fails: {type(error).__name__}: {first}"]
        lines.extend(more)
        save()

    lines += ["", "## The projection"]
    if args.smoke:
        write(short_tables, [(8, 16)], [(64, 1, 1), (256, 2, 0)], torch.float32)
        write(split_tables, [(2, 128)], (32, 64), torch.float32)
        write(attention_table, [(32, 16, True)], [(16, 16, 1, 1)], (8,), 2, 64)
    else:  # each section's deadline its share of the budget, so that none starves the next
        runner.deadline = started + SHARES[0] * args.budget_s
        for dtype in (torch.float32, torch.bfloat16):
            write(short_tables, SHORT_SHAPES, SHORT_CONFIGS, dtype)
        runner.deadline = started + SHARES[1] * args.budget_s
        for dtype in (torch.float32, torch.bfloat16):
            write(split_tables, SPLIT_SHAPES, CHUNKS, dtype)
        runner.deadline = started + args.budget_s
        write(attention_table, ATTENTION_SHAPES, TILES, SLOTS, HEADS, TOKENS)
    lines += ["", f"Run time: {time.perf_counter() - started:.0f} s."]
    save()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
