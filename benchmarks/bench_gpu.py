"""The projection on a GPU against torch.softmax, timed in the same run; writes benchmarks/gpu.md.

For each B×K and dtype: forward and forward+backward medians of sparsemax (the
``"auto"`` algorithm, Triton on CUDA) and of ``torch.softmax``, their ratios, the
bandwidth sparsemax's forward achieves (one read, one write), and its float32 error
against the float64 projection. Then every family member ÷ sparsemax, masked ÷
unmasked, entmax / Liger-Kernel / AdaSplash's sparsemax where installed, sparsemax ÷
softmax along dim 1 of (B, C, H, W) maps (rows read in place), compiled sparsemax ÷
compiled softmax, a check that no call synchronises with the host, and training steps
of a Transformer encoder and of the translation model with sparse attention ÷ softmax's.

    python benchmarks/bench_gpu.py [--repeats 50] [--output benchmarks/gpu.md]
    TRITON_INTERPRET=1 python benchmarks/bench_gpu.py --smoke   # no GPU: runs, times nothing useful
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import sparsegen as sg

SHAPES = [
    (4096, 16),
    (4096, 64),
    (1024, 512),
    (16384, 1024),
    (256, 4096),
    (8192, 8192),
    (32, 32768),
    (2048, 32768),
    (4, 262144),
    (64, 1048576),
]
SMOKE_SHAPES = [(64, 16), (4, 300)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Shapes at which the family, masks and peers are compared (short, on chip, long).
DETAIL_SHAPES = [(4096, 64), (16384, 1024), (2048, 32768)]


BATCH_MS = 1.0  # on a GPU, calls are timed back to back in batches of about this long


def median_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median milliseconds of one call of ``fn`` after three warm-ups: over ``repeats``
    timings, each on a GPU the mean of a batch of back-to-back calls between two CUDA
    events (a call timed alone from an idle GPU would time the host's launch, tens of µs,
    rather than kernels of a few), the wall clock of one call elsewhere."""
    for _ in range(3):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times)
    calls = max(1, min(100, round(BATCH_MS / max(_cuda_ms(fn, 1), 1e-3))))
    return statistics.median(_cuda_ms(fn, calls) for _ in range(repeats))


def _cuda_ms(fn: Callable[[], object], calls: int) -> float:
    """Mean milliseconds of ``calls`` back-to-back calls of ``fn`` on the GPU."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def forward_backward(mapping: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    leaf = x.detach().requires_grad_()
    grad = torch.randn_like(x)

    def step():
        mapping(leaf).backward(grad)
        leaf.grad = None

    return step


def softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, -1)


def shape_row(shape, dtype: torch.dtype, repeats: int, device: torch.device) -> list[str]:
    x = torch.randn(shape, device=device, dtype=dtype)
    times = {
        "softmax": median_ms(lambda: softmax(x), repeats, device),
        "sparsemax": median_ms(lambda: sg.sparsemax(x), repeats, device),
        "softmax fb": median_ms(forward_backward(softmax, x), repeats, device),
        "sparsemax fb": median_ms(forward_backward(sg.sparsemax, x), repeats, device),
    }
    gigabytes = 2 * x.numel() * x.element_size() / 1e9
    error = "—"
    if dtype == torch.float32:
        exact = sg.sparsemax(x.double(), algorithm="sort")
        error = f"{(sg.sparsemax(x).double() - exact).abs().max().item():.1e}"
    return [
        f"{shape[0]}×{shape[1]}",
        f"{1e3 * times['softmax']:.1f}",
        f"{1e3 * times['sparsemax']:.1f}",
        f"{times['sparsemax'] / times['softmax']:.2f}",
        f"{times['sparsemax fb'] / times['softmax fb']:.2f}",
        f"{gigabytes / (times['sparsemax'] / 1e3):.0f}",
        error,
    ]


# Maps normalised along dim 1, a segmentation model's classes: (B, C, H, W).
MAPS = [(8, 21, 256, 256), (2, 150, 128, 128)]
SMOKE_MAPS = [(2, 5, 8, 8)]


def dim_rows(repeats: int, device: torch.device, maps) -> list[str]:
    """sparsemax ÷ torch.softmax along dim 1 of (B, C, H, W) maps (rows read in place,
    entries H·W apart), forward and forward+backward, float32 and bfloat16."""
    lines = ["| B×C×H×W | dtype | ÷ softmax fwd | ÷ softmax fwd+bwd |", "|---|---|---|---|"]
    for shape in maps:
        for name, dtype in DTYPES.items():
            x = torch.randn(shape, device=device, dtype=dtype)
            forward, both = _along_dim_1(x, repeats, device)
            lines.append(f"| {'×'.join(map(str, shape))} | {name} | {forward:.2f} | {both:.2f} |")
    return lines


def _along_dim_1(x: torch.Tensor, repeats: int, device: torch.device) -> tuple[float, float]:
    """``(forward, forward + backward)``: sparsemax's time ÷ softmax's, along dim 1."""

    def ours(t):
        return sg.sparsemax(t, 1)

    def theirs(t):
        return torch.softmax(t, 1)

    forward = [median_ms(lambda f=f: f(x), repeats, device) for f in (ours, theirs)]
    both = [median_ms(forward_backward(f, x), repeats, device) for f in (ours, theirs)]
    return forward[0] / forward[1], both[0] / both[1]


def family(x: torch.Tensor) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Each family member as a function of scores shaped as ``x``, its tensor parameter
    and mask built here, once, not in the timed calls. Sparsecone takes the Gaussian
    scores as they are: inside its domain (Σz + Kq > 0) but at vanishing odds for K ≥ 16."""
    per_slice = torch.full((*x.shape[:-1], 1), 0.5, device=x.device, dtype=x.dtype)
    learnt = per_slice.clone().requires_grad_()  # (a model's parameter: its gradient too)
    keep = torch.ones(x.shape, device=x.device, dtype=torch.bool)
    return {
        "sparsegen_lin λ=0.5": lambda z: sg.sparsegen_lin(z, lam=0.5),
        "sparsegen_lin tensor λ": lambda z: sg.sparsegen_lin(z, lam=per_slice),
        "sparsegen_lin learnt λ": lambda z: sg.sparsegen_lin(z, lam=learnt),
        "sparsegen_exp λ=0.5": lambda z: sg.sparsegen_exp(z, lam=0.5),
        "sparsegen_sq λ=0.5": lambda z: sg.sparsegen_sq(z, lam=0.5),
        "sparsecone q=1": lambda z: sg.sparsecone(z, q=1.0),
        "sparsehourglass q=1": lambda z: sg.sparsehourglass(z, q=1.0),
        "sparsehourglass tensor q": lambda z: sg.sparsehourglass(z, q=per_slice),
        "sparsehourglass learnt q": lambda z: sg.sparsehourglass(z, q=learnt),
        "sum_normalization_pp": lambda z: sg.sum_normalization_pp(z),
        "sparsemax masked": lambda z: sg.sparsemax(z, mask=keep),
    }


def peers() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Other libraries' sparsemax, those that import."""
    found = {}
    try:
        import entmax

        found["entmax (sort)"] = lambda x: entmax.sparsemax(x, -1)
    except ImportError:
        pass
    try:
        from liger_kernel.transformers.functional import liger_sparsemax

        found["Liger-Kernel"] = lambda x: liger_sparsemax(x, -1)
    except ImportError:
        pass
    try:
        from adasplash import triton_sparsemax

        found["AdaSplash"] = lambda x: triton_sparsemax(x, dim=-1)
    except ImportError:
        pass
    return found


def detail_rows(repeats: int, device: torch.device, shapes) -> list[str]:
    """Each family member and peer ÷ sparsemax (forward, float32), per shape."""
    names = [*family(torch.empty(1, 1)), *peers()]
    lines = ["| B×K | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for shape in shapes:
        x = torch.randn(shape, device=device)
        candidates = {**family(x), **peers()}
        base = median_ms(lambda x=x: sg.sparsemax(x), repeats, device)
        cells = []
        for fn in candidates.values():
            try:
                ratio = median_ms(lambda fn=fn, x=x: fn(x), repeats, device) / base
                cells.append(f"{ratio:.2f}")
            except Exception as error:  # a peer's failure is reported, not fatal
                cells.append(f"fails: {type(error).__name__}")
        lines.append(f"| {shape[0]}×{shape[1]} | " + " | ".join(cells) + " |")
    return lines


def sync_free_rows(device: torch.device) -> list[str]:
    """Whether forward+backward of each mapping runs without a host synchronisation."""
    if device.type != "cuda":
        return ["(no CUDA device: not checked)"]
    x = torch.randn(64, 1000, device=device)
    lines = ["| mapping | synchronises? |", "|---|---|"]
    for name, fn in {"sparsemax": sg.sparsemax, **family(x)}.items():
        step = forward_backward(fn, x)
        step()  # warm: first calls may compile kernels
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
            verdict = "no"
        except RuntimeError as error:
            verdict = f"yes: {str(error).splitlines()[0][:80]}"
        finally:
            torch.cuda.set_sync_debug_mode(0)
        lines.append(f"| {name} | {verdict} |")
    return lines


def compiled_rows(repeats: int, device: torch.device, shapes) -> list[str]:
    """Forward+backward of ``torch.compile``d sparsemax (on CUDA, inductor launching the
    Triton kernels itself) ÷ compiled softmax and ÷ eager sparsemax, float32; inductor on
    CUDA, aot_eager elsewhere (the smoke run)."""
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    compiled = {
        name: torch.compile(fn, fullgraph=True, backend=backend, dynamic=False)
        for name, fn in {"softmax": softmax, "sparsemax": sg.sparsemax}.items()
    }
    lines = [
        "| B×K | compiled softmax (µs) | compiled sparsemax (µs) | ÷ compiled softmax "
        "| ÷ eager sparsemax |",
        "|---|---|---|---|---|",
    ]
    for shape in shapes:
        x = torch.randn(shape, device=device)
        base, ours, eager = (
            median_ms(forward_backward(fn, x), repeats, device)
            for fn in (compiled["softmax"], compiled["sparsemax"], sg.sparsemax)
        )
        lines.append(
            f"| {shape[0]}×{shape[1]} | {1e3 * base:.1f} | {1e3 * ours:.1f} "
            f"| {ours / base:.2f} | {ours / eager:.2f} |"
        )
    return lines


def transformer_step(attention: str | Callable, device: torch.device, batch: int, length: int):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(256, 8, 1024, dropout=0.0, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).to(device)
    if attention is not torch_softmax:  # (torch's own layers are torch's softmax)
        sg.nn.sparsify_attention(model, attention)
    x = torch.randn(batch, length, 256, device=device)
    return lambda: model(x).square().mean().backward()


def translation_step(attention: str | Callable, device: torch.device, batch: int, length: int):
    from sparsegen.models import Seq2Seq

    torch.manual_seed(0)
    model = Seq2Seq(8000, 8000, attention=attention).to(device)
    source = torch.randint(4, 8000, (batch, length), device=device)
    lengths = torch.full((batch,), length, device=device)
    target = torch.randint(4, 8000, (batch, length), device=device)
    return lambda: model(source, lengths, target)[0].square().mean().backward()


def torch_softmax(
    scores: torch.Tensor, dim: int = -1, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """torch's softmax as an attention mapping: none of the library's rules for slices of
    +inf or only -inf, which ``sg.softmax`` applies on every slice on a GPU."""
    return torch.softmax(scores if mask is None else scores.masked_fill(~mask, -math.inf), dim)


def training_rows(repeats: int, device: torch.device, smoke: bool) -> list[str]:
    lines = [
        "| model | softmax (ms) | sparsemax (ms) | ÷ softmax | ÷ torch.softmax |",
        "|---|---|---|---|---|",
    ]
    models = [  # (model, its name, (batch, length))
        (transformer_step, "Transformer encoder (2 layers, {}×{})", (2, 8) if smoke else (32, 512)),
        (translation_step, "translation Seq2Seq ({}×{} tokens)", (2, 6) if smoke else (64, 40)),
    ]
    for build, title, (batch, length) in models:
        name = title.format(batch, length)
        torch_base = median_ms(build(torch_softmax, device, batch, length), repeats, device)
        base = median_ms(build("softmax", device, batch, length), repeats, device)
        ours = median_ms(build("sparsemax", device, batch, length), repeats, device)
        lines.append(
            f"| {name} | {base:.2f} | {ours:.2f} | {ours / base:.2f} | {ours / torch_base:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--output", type=Path, help="default benchmarks/gpu.md")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, any device")
    args = parser.parse_args()
    if args.output is None and not args.smoke:
        args.output = Path(__file__).with_name("gpu.md")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    repeats = 3 if args.smoke else args.repeats
    started = time.perf_counter()
    header = "| B×K | softmax fwd (µs) | sparsemax fwd (µs) | ÷ softmax fwd | ÷ softmax fwd+bwd |"
    machine = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    lines = [
        "# The projection on a GPU",
        "",
        f"{datetime.date.today()}, {machine}, torch {torch.__version__}, "
        f"Python {platform.python_version()}; medians of {repeats}"
        " calls, each after warm-ups. `python benchmarks/bench_gpu.py`.",
    ]

    def write() -> None:
        if args.output is not None:
            args.output.write_text("\n".join(lines) + "\n")

    def section(title: str, rows: Callable[[], list[str]]) -> None:
        """Adds a section, and writes what there is so far (a run cut short keeps it); a
        section that raises says so in its place, and the next ones still run."""
        try:
            built = rows()
        except Exception as error:
            built = [f"fails: {type(error).__name__}: {str(error).splitlines()[0][:300]}"]
        lines.extend(["", f"## {title}", "", *built])
        print("\n".join(built), flush=True)
        write()

    def dtype_rows(dtype: torch.dtype) -> list[str]:
        rows = [header + " GB/s (fwd) | max error (float32) |", "|---|---|---|---|---|---|---|"]
        cells = (shape_row(shape, dtype, repeats, device) for shape in shapes)
        return rows + ["| " + " | ".join(row) + " |" for row in cells]

    for dtype_name, dtype in DTYPES.items():
        section(dtype_name, functools.partial(dtype_rows, dtype))
    details = SMOKE_SHAPES[:1] if args.smoke else DETAIL_SHAPES
    section("Family, masks and peers ÷ sparsemax (forward, float32)",
            lambda: detail_rows(repeats, device, details))  # fmt: skip
    maps = SMOKE_MAPS if args.smoke else MAPS
    section("Along dim 1 of (B, C, H, W) maps", lambda: dim_rows(repeats, device, maps))
    section("Host synchronisation (forward + backward)", lambda: sync_free_rows(device))
    section("torch.compile (forward + backward, float32)",
            lambda: compiled_rows(repeats, device, details))  # fmt: skip
    steps = max(1 if args.smoke else 5, repeats // 5)
    section("Training steps (forward + backward, float32)",
            lambda: training_rows(steps, device, args.smoke))  # fmt: skip
    lines += ["", f"Run time: {time.perf_counter() - started:.0f} s."]
    print(lines[-1])
    write()


if __name__ == "__main__":
    main()
