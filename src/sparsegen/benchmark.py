"""Speed of the projection kernels against torch.softmax and entmax, measured side by side.

``sparsegen bench`` (or ``python benchmarks/bench_sparsemax.py``) runs it.

Prints, for float32 (B, K) shapes, with 1 thread and with all threads, the
median forward and forward+backward times and their ratios (to softmax,
entmax and sparsemax), then the peak extra memory of one forward, the time of
``import sparsegen`` and of the first call (compilation, then from the disk
cache). Writes the same tables as markdown.

    sparsegen bench [--quick] [--out DIR]    # writes DIR/bench.md

Timings are medians of repeated runs measured in the same process, so the
ratios are comparable even on a noisy shared machine; absolute times are not.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path

import numpy as np
import torch

import sparsegen as sg
from sparsegen._extras import needs_extra
from sparsegen._projection import transform_compiled
from sparsegen.experiments import flags
from sparsegen.experiments.settings import Setting
from sparsegen.experiments.tables import markdown_table

with needs_extra("experiments", __name__):
    from tqdm import tqdm

try:
    import entmax
except ImportError:  # entmax is a test extra; the comparison is skipped without it
    entmax = None

__all__ = ["SHAPES", "mappings", "run_benchmark"]

SHAPES = [(4096, 16), (4096, 64), (1024, 512), (256, 4096), (32, 32768), (4, 262144)]


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    By default glibc unmaps large freed buffers (or trims the heap), so the
    next call's fresh MiB-sized output pays a page fault per 4 KiB page; which
    function pays depends on the order of frees, and the resulting ms-long
    outliers hit softmax and ours at random. With the thresholds raised (as
    ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` would), both reuse
    their buffers and the ratios measure the kernels. Returns False where
    this is not glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(
            libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30)
        )
    except (OSError, AttributeError):
        return False


# A row whose rounds disagree more than this (interquartile range ÷ median, for softmax
# or sparsemax) was measured on a busy machine: the table flags it instead of trusting it.
UNSTABLE_SPREAD = 0.15


def median_times(
    functions: dict[Hashable, Callable[[], object]],
    repeats: int,
    budget: float = 0.02,
    spread: dict[Hashable, float] | None = None,
) -> dict[Hashable, float]:
    """Median over ``repeats`` rounds of each function's mean time per call; ``spread``, if
    given, receives each one's interquartile range over the rounds ÷ its median.

    A round times a batch of calls lasting about ``budget`` s of every function
    in turn (each after one untimed call, so that it does not pay for the
    previous function's memory or thread-pool switch), so that a passing
    slowdown of the shared machine hits all of them in the same rounds instead
    of one function's whole sample.
    """
    if repeats < 1:
        raise ValueError(f"median_times: repeats must be at least 1; got {repeats}")
    numbers = {}
    for name, fn in functions.items():
        fn()
        start = time.perf_counter()
        fn()
        numbers[name] = max(1, int(budget / max(time.perf_counter() - start, 1e-7)))
    samples: dict[Hashable, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            fn()
            start = time.perf_counter()
            for _ in range(numbers[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / numbers[name])
    medians = {name: statistics.median(values) for name, values in samples.items()}
    if spread is not None:
        for name, values in samples.items():
            q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (0, 0, 0)
            spread[name] = (q3 - q1) / medians[name]
    return medians


@contextlib.contextmanager
def threads_restored() -> Iterator[None]:
    """Give torch back its thread count on leaving (the timed calls switch it)."""
    previous = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def on_threads(fn: Callable[[], object], n_threads: int) -> Callable[[], object]:
    """``fn`` run with ``n_threads`` torch threads (switched by the untimed first call)."""

    def run():
        if torch.get_num_threads() != n_threads:
            torch.set_num_threads(n_threads)
        return fn()

    return run


def forward_backward(mapping: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad):
    def run():
        leaf = x.detach().requires_grad_()
        mapping(leaf).backward(grad)

    return run


def mappings() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    found = {
        "softmax": lambda x: torch.softmax(x, -1),
        "sparsemax": sg.sparsemax,
        "sparsegen_lin": lambda x: sg.sparsegen_lin(x, lam=0.5),
        "sparsehourglass": lambda x: sg.sparsehourglass(x, q=0.5),
    }
    if entmax is not None:
        found["entmax"] = entmax.sparsemax
    return found


def measure_shape(shape, repeats: int, thread_counts=(1,)) -> dict[int, dict[str, float]]:
    """Median times per thread count and function, all measured in the same rounds.

    Interleaving the thread counts too makes the thread-scaling ratios as
    robust to the shared machine's slow spells as the ratios between functions.
    """
    x = torch.randn(shape)
    grad = torch.randn(shape)
    groups: dict[bool, dict[tuple[int, str], Callable[[], object]]] = {True: {}, False: {}}
    for threads in thread_counts:
        for name, mapping in mappings().items():
            group = groups[name != "entmax"]  # entmax (slow, memory-hungry) is timed apart
            forward = torch.no_grad()(lambda m=mapping: m(x))
            group[threads, f"{name} fwd"] = on_threads(forward, threads)
            if name in ("softmax", "sparsemax", "entmax"):
                both = forward_backward(mapping, x, grad)
                group[threads, f"{name} fwd+bwd"] = on_threads(both, threads)
    spread: dict = {}
    with threads_restored():
        times = median_times(groups[True], repeats, spread=spread)
        if groups[False]:
            times.update(median_times(groups[False], max(3, repeats // 4)))
    times.update({(n, f"{name} spread"): value for (n, name), value in spread.items()})
    return {
        threads: {name: t for (n, name), t in times.items() if n == threads}
        for threads in thread_counts
    }


def _peak_in_subprocess(setup: str, call: str) -> tuple[float, float]:
    """Peak resident bytes that ``call`` adds, and its seconds, in a fresh interpreter.

    ``setup`` (torch and sparsegen imported, no grad) makes what the call needs,
    warmed up; the peak is then reset (``/proc/self/clear_refs``), so the figure
    is what the call itself adds.
    """
    setup = "\n    ".join(setup.strip().splitlines())
    code = f"""
import time, torch, sparsegen as sg
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
with torch.no_grad():
    {setup}
    open("/proc/self/clear_refs", "w").write("5")
    before = status("VmRSS")
    start = time.perf_counter()
    result = {call}
    elapsed = time.perf_counter() - start
    after = status("VmHWM")
print(after - before, elapsed)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    added, seconds = out.stdout.split()[-2:]
    return float(added), float(seconds)


def peak_extra_memory(name: str, shape) -> float:
    """Peak resident memory added by one forward, in units of the input's size (subprocess).

    The output is 1×.
    """
    setup = f"""
from sparsegen.benchmark import mappings
f = mappings()[{name!r}]
f(torch.randn(8, 8))
x = torch.randn({tuple(shape)!r})
"""
    added, _ = _peak_in_subprocess(setup, "f(x)")
    return added / (torch.Size(shape).numel() * 4)  # float32 input


ATTENTION_MEMORY = {"length": 8192, "embed": 64, "heads": 4}


def attention_peak_memory(implementation: str, need_weights: bool) -> tuple[float, float]:
    """Peak memory (MiB) added by one self-attention forward at :data:`ATTENTION_MEMORY`'s
    sizes, no grad, and its time (s), in a subprocess.

    ``implementation`` is ``"torch"`` (``nn.MultiheadAttention``) or a mapping of
    ``sparsegen.nn.MultiheadAttention``. One head's full weights take
    ``L² · 4`` bytes (256 MiB at L = 8192).
    """
    size = ATTENTION_MEMORY
    module = (
        "torch.nn.MultiheadAttention(E, H, batch_first=True)"
        if implementation == "torch"
        else f"sg.nn.MultiheadAttention(E, H, batch_first=True, mapping={implementation!r})"
    )
    setup = f"""
E, H, L = {size["embed"]}, {size["heads"]}, {size["length"]}
model = {module}
model(*[torch.randn(1, 16, E)] * 3)  # warm: kernels compiled, pools made
x = torch.randn(1, L, E)
"""
    added, seconds = _peak_in_subprocess(setup, f"model(x, x, x, need_weights={need_weights})")
    return added / 2**20, seconds


def attention_memory_rows() -> list[str]:
    size = ATTENTION_MEMORY
    rows = [
        f"Self-attention at L = S = {size['length']}, {size['heads']} heads, E = "
        f"{size['embed']}, batch 1, no grad; peak memory one forward adds (MiB) and its time. "
        f"One head's full weights are {size['length'] ** 2 * 4 / 2**20:.0f} MiB.",
        "",
    ]
    cells = []
    for implementation in ("torch", "softmax", "sparsemax", "sparsegen_lin"):
        for need_weights in (True, False):
            megabytes, seconds = attention_peak_memory(implementation, need_weights)
            name = "torch.nn" if implementation == "torch" else f"sparsegen {implementation}"
            cells.append((name, need_weights, f"{megabytes:.0f}", f"{seconds:.2f}"))
    header = ("attention", "need_weights", "peak extra MiB", "seconds")
    return rows + markdown_table(header, cells)


def startup_times() -> dict[str, float]:
    """``import sparsegen`` (after torch) and the first call, without and with the disk cache."""
    code = """
import time, torch
start = time.perf_counter(); import sparsegen as sg; imported = time.perf_counter() - start
x = torch.randn(64, 100)
start = time.perf_counter(); sg.sparsemax(x); first = time.perf_counter() - start
xr = x.clone().requires_grad_()
start = time.perf_counter()
sg.sparsemax(xr).sum().backward()
first_bwd = time.perf_counter() - start
print(imported, first, first_bwd)
"""
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("cold cache", "warm cache"):
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
            ).stdout.split()
            results[f"import sparsegen ({label})"] = float(out[0])
            results[f"first forward ({label})"] = float(out[1])
            results[f"first backward ({label})"] = float(out[2])
    return results


TRANSFORMER = {"d_model": 256, "heads": 8, "layers": 2, "length": 128, "batch": 32}


def transformer_step_times(repeats: int) -> dict[tuple[str, str], float]:
    """Median time of one training step (forward + backward) of a Transformer encoder.

    ``nn.TransformerEncoder`` with :data:`TRANSFORMER`'s sizes, as torch builds
    it (its own softmax attention), then with sparsegen's MultiheadAttention
    (:func:`sparsegen.nn.sparsify_attention`) running softmax and sparsemax,
    each eager and ``torch.compile``d (inductor), all timed in the same rounds.
    Keys are ``(attention, mode)``.
    """
    size = TRANSFORMER
    x = torch.randn(size["batch"], size["length"], size["d_model"])
    steps = {}
    for attention in ("torch softmax", "sparsegen softmax", "sparsegen sparsemax"):
        torch.manual_seed(0)
        layer = torch.nn.TransformerEncoderLayer(
            size["d_model"], size["heads"], 4 * size["d_model"], dropout=0.0, batch_first=True
        )
        model = torch.nn.TransformerEncoder(layer, size["layers"], enable_nested_tensor=False)
        if attention != "torch softmax":
            sg.nn.sparsify_attention(model, attention.split()[1])
        for mode, run in (("eager", model), ("compiled", torch.compile(model))):
            steps[attention, mode] = _training_step(run, x)
    for step in steps.values():  # compile (and warm) before timing
        step()
    return median_times(steps, repeats, budget=0.0)


def _training_step(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    def step():
        model(x).square().mean().backward()

    return step


def transformer_rows(times: dict[tuple[str, str], float]) -> list[str]:
    size = TRANSFORMER
    rows = [
        f"2-layer `nn.TransformerEncoder`, d = {size['d_model']}, {size['heads']} heads, "
        f"sequence {size['length']}, batch {size['batch']}, float32; one step = forward + "
        "backward; all threads.",
        "",
    ]
    header = ("attention", "eager step (ms)", "compiled step (ms)", "÷ torch softmax, eager",
              "÷ torch softmax, compiled", "compiled ÷ eager")  # fmt: skip
    base_eager, base_compiled = times["torch softmax", "eager"], times["torch softmax", "compiled"]
    cells = []
    for attention in ("torch softmax", "sparsegen softmax", "sparsegen sparsemax"):
        eager, compiled = times[attention, "eager"], times[attention, "compiled"]
        cells.append((
            attention, f"{eager * 1e3:.1f}", f"{compiled * 1e3:.1f}",
            f"{eager / base_eager:.2f}×", f"{compiled / base_compiled:.2f}×",
            f"{compiled / eager:.2f}×",
        ))  # fmt: skip
    return rows + markdown_table(header, cells)


MODEL_GRID = (
    Setting("softmax", "softmax"),
    Setting("sparsemax", "sparsemax"),
    Setting("sparsegen-lin", "sparsegen_lin", lam=0.5),
    Setting("sparsehourglass", "sparsehourglass", q=1.0),
)


def model_step_times(repeats: int, batch: int = 64) -> dict[tuple[str, str], float]:
    """Median time of one training step (forward, backward, AdamW) of the experiments' models.

    The translation model (:class:`sparsegen.models.Seq2Seq` at the sizes of
    ``sparsegen translate``: vocabularies of 4000, 128-d embeddings, 256 units;
    source and target of 14 tokens) and the NLI model
    (:class:`sparsegen.models.NLIClassifier`: 8000 pieces, 100 units; premise 14,
    hypothesis 8 tokens), on one thread (the experiments run one thread per
    process), with each setting of :data:`MODEL_GRID`, in the same rounds.
    Keys are ``(model, setting name)``.
    """
    from sparsegen.models import NLIClassifier, Seq2Seq

    generator = torch.Generator().manual_seed(0)

    def ids(vocab: int, length: int) -> torch.Tensor:
        return torch.randint(4, vocab, (batch, length), generator=generator)

    lengths = torch.randint(8, 15, (batch,), generator=generator)
    lengths[0] = 14
    source, target = ids(4000, 14), ids(4000, 15)
    premise, hypothesis = ids(8000, 14), ids(8000, 8)
    steps = {}
    for setting in MODEL_GRID:
        name, attention = setting.name, {"attention": setting.mapping, **setting.mapping_options()}
        torch.manual_seed(0)
        translation = Seq2Seq(4000, 4000, embed_dim=128, hidden_dim=256, **attention)
        nli = NLIClassifier(8000, **attention)

        def translation_loss(model=translation):
            logits, _ = model(source, lengths, target[:, :-1])
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target[:, 1:].flatten())

        def nli_loss(model=nli):
            logits = model(premise, lengths, hypothesis, torch.full((batch,), 8)).logits
            return logits.logsumexp(1).mean()

        steps["translation", name] = _optimiser_step(translation, translation_loss)
        steps["NLI", name] = _optimiser_step(nli, nli_loss)
    with threads_restored():
        torch.set_num_threads(1)
        return median_times(steps, repeats, budget=0.0)


def _optimiser_step(model: torch.nn.Module, loss: Callable[[], torch.Tensor]):
    optimizer = torch.optim.AdamW(model.parameters())

    def step():
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()

    return step


def model_rows(times: dict[tuple[str, str], float]) -> list[str]:
    rows = [
        "One training step (forward + backward + AdamW) of the translation and NLI models at "
        "the experiments' sizes, batch 64, one thread; only the attention mapping differs.",
        "",
    ]
    cells = [
        (model, s.name, f"{times[model, s.name] * 1e3:.1f}",
         f"{times[model, s.name] / times[model, 'softmax']:.2f}×")
        for model in ("translation", "NLI")
        for s in MODEL_GRID
    ]  # fmt: skip
    return rows + markdown_table(("model", "attention", "step (ms)", "÷ softmax"), cells)


def call_overhead() -> dict[str, float]:
    """Per-call cost (µs, 1×16 float32, no grad) of the ways into the projection.

    The functional API (what users call), the operator through torch's
    dispatcher (what compiled and exported graphs call), and the kernel alone.
    """
    from sparsegen import _ops

    x = torch.randn(1, 16)
    calls = {
        "sg.sparsemax(x)": lambda: sg.sparsemax(x),
        "torch.ops.sparsegen.project (dispatcher)": lambda: torch.ops.sparsegen.project.default(
            x, None, "given", None, "compiled"
        ),
        "kernel alone": lambda: _ops._project(x, None, None, "compiled", False, False),
    }
    with torch.no_grad():
        return {name: t * 1e6 for name, t in median_times(calls, 20).items()}


def forward_profile(shape, repeats: int) -> dict[str, float]:
    """Where sparsemax's forward time goes (one thread, µs): the whole call, the numba
    solver alone on NumPy arrays, and the floor of any exact forward (a max pass and a
    write of the output, :func:`sparsegen._kernels.max_and_write_rows`), beside softmax,
    in the same rounds."""
    from sparsegen import _kernels

    x = torch.randn(shape)
    rows = x.numpy()
    out, scale = np.empty_like(rows), np.ones(shape[0])
    tau, support = np.empty(shape[0], dtype=rows.dtype), np.empty(shape[0], dtype=np.int64)
    calls = {
        "softmax": lambda: torch.softmax(x, -1),
        "sparsemax": lambda: sg.sparsemax(x),
        "solver": lambda: _kernels.project_rows(rows, None, scale, out, tau, support, 1),
        "floor": lambda: _kernels.max_and_write_rows(rows, out),
    }
    with threads_restored(), torch.no_grad():
        torch.set_num_threads(1)
        return {name: t * 1e6 for name, t in median_times(calls, repeats).items()}


PROFILE_NOTE = (
    "*Solver alone*: the numba projection on NumPy arrays; *call around it*: the rest of "
    "`sg.sparsemax` (checks, dispatch, allocation); *floor*: what any exact forward must "
    "do, read each row once (a max pass) and write its output once. The solver's excess "
    "over the floor is its threshold search: for short rows Newton passes over the row "
    "and the lockstep bookkeeping of 64 rows at a time; long rows read the row once, "
    "copy out its few candidates and write zeros and the support."
)


def profile_rows(profiles: dict[tuple[int, int], dict[str, float]]) -> list[str]:
    """The forward's time split into the solver, the call around it and the floor."""
    header = ("B×K", "softmax (µs)", "sparsemax (µs)", "solver alone", "call around it",
              "floor: max + write", "solver ÷ floor", "floor ÷ softmax")  # fmt: skip
    cells = [
        (f"{b}×{k}", f"{t['softmax']:.0f}", f"{t['sparsemax']:.0f}", f"{t['solver']:.0f}",
         f"{t['sparsemax'] - t['solver']:.0f}", f"{t['floor']:.0f}",
         f"{t['solver'] / t['floor']:.2f}×", f"{t['floor'] / t['softmax']:.2f}×")
        for (b, k), t in profiles.items()
    ]  # fmt: skip
    return markdown_table(header, cells)


# The family: each member with a float parameter, a per-slice tensor one and a
# mask (10% of entries masked), timed against sparsemax's unmasked forward.
FAMILY = {
    "sparsemax": lambda x, p, mask: sg.sparsemax(x, mask=mask),
    "sparsegen-lin λ=0.5": lambda x, p, mask: sg.sparsegen_lin(x, lam=0.5 * p, mask=mask),
    "sparsegen-exp λ=0.5": lambda x, p, mask: sg.sparsegen_exp(x, lam=0.5 * p, mask=mask),
    "sparsegen-sq λ=0.5": lambda x, p, mask: sg.sparsegen_sq(x, lam=0.5 * p, mask=mask),
    "sparsecone q=1": lambda x, p, mask: sg.sparsecone(x, q=p, mask=mask),
    "sparsehourglass q=1": lambda x, p, mask: sg.sparsehourglass(x, q=p, mask=mask),
    "sum-normalization++": lambda x, p, mask: sg.sum_normalization_pp(x, mask=mask),
}
FAMILY_VARIANTS = ("float", "tensor", "float, masked")
# Single passes over the same input, to read the members' distance to sparsemax by:
# the compiled transforms that sparsegen-exp, -sq and sum-normalization++ run before
# the projection, and the torch passes that would compute the same transforms.
ONE_PASS = {
    "compiled exp transform (sparsegen-exp's)": lambda x, mask: transform_compiled(
        x, None, "exp_gap"
    ),
    "compiled square transform (sparsegen-sq's)": lambda x, mask: transform_compiled(
        x, None, "square_gap"
    ),
    "compiled ratio transform (sum-normalization++'s)": lambda x, mask: transform_compiled(
        x, None, "ratio"
    ),
    "torch expm1": lambda x, mask: torch.expm1(x),
    "torch masked_fill": lambda x, mask: x.masked_fill(~mask, -math.inf),
}

# Softmax beside the family: torch's, and the library's with its rules for slices of
# +inf or only -inf (on the CPU it checks for them after torch's pass, rather than
# computing them on every slice).
SOFTMAX = {
    "torch.softmax": lambda x, mask: torch.softmax(x, -1),
    "sg.softmax": lambda x, mask: sg.softmax(x),
    "sg.softmax, masked": lambda x, mask: sg.softmax(x, mask=mask),
}


def family_times(shape, repeats: int) -> dict[tuple[str, str], float]:
    """Median forward time of every member of :data:`FAMILY` (one thread, no grad), each
    variant of :data:`FAMILY_VARIANTS`, over its ``("sparsemax", "float")`` time, in the
    same rounds."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    mask = torch.rand(shape, generator=generator) > 0.1
    per_slice = torch.ones(shape[0], 1)
    calls = {}
    for name, mapping in FAMILY.items():
        for variant in FAMILY_VARIANTS:
            if name in ("sparsemax", "sum-normalization++") and variant == "tensor":
                continue  # no parameter
            p = per_slice if variant == "tensor" else 1.0
            m = mask if variant.endswith("masked") else None
            call = torch.no_grad()(lambda f=mapping, p=p, m=m: f(x, p, m))
            calls[name, variant] = on_threads(call, 1)
    for name, one_pass in ONE_PASS.items():
        calls["one pass", name] = on_threads(lambda f=one_pass: f(x, mask), 1)
    for name, softmax in SOFTMAX.items():
        calls["softmax", name] = on_threads(torch.no_grad()(lambda f=softmax: f(x, mask)), 1)
    with threads_restored():
        times = median_times(calls, repeats)
    base = times["sparsemax", "float"]
    return {key: t / base for key, t in times.items()}


def _family_table(ratios: dict[tuple[int, int], dict[tuple[str, str], float]]) -> list[str]:
    """One row per (mapping, variant) but sparsemax's own, the base; one column per shape."""
    shapes = list(ratios)
    measured = [key for key in ratios[shapes[0]] if key != ("sparsemax", "float")]
    cells = [
        (name, variant, *(f"{ratios[shape][name, variant]:.2f}×" for shape in shapes))
        for name, variant in measured
    ]
    header = ("mapping", "variant", *(f"{b}×{k}" for b, k in shapes))
    return markdown_table(header, cells)


def family_rows(ratios: dict[tuple[int, int], dict[tuple[str, str], float]]) -> list[str]:
    rows = [
        "Forward time ÷ sparsemax's unmasked forward, same shape and run; one thread, no "
        "grad. Tensor: one parameter per row (no grad). Masked: 10% of entries masked. "
        "*One pass*: a single operation over the same input: the compiled transform "
        "that sparsegen-exp, -sq and sum-normalization++ run before the projection (a "
        "max pass and a write; long rows of sparsegen-exp and -sq without a gradient "
        "skip it, transforming only their support's candidates), and torch passes for "
        "comparison (a transform in torch ops takes four to six such passes). *softmax*: torch's "
        "and the library's (which gives slices of +inf or only -inf their limits).",
        "",
    ]
    return rows + _family_table(ratios)


# The gradients a model trains with: of the scores, and of a per-row parameter that
# requires one (the scale's term of the backward, ∂L/∂λ or ∂L/∂q).
FAMILY_GRADIENT_VARIANTS = ("float", "learnt", "float, masked")


def family_backward_times(shape, repeats: int) -> dict[tuple[str, str], float]:
    """Median forward+backward time of every member of :data:`FAMILY` (one thread) in each
    variant of :data:`FAMILY_GRADIENT_VARIANTS`, and of softmax, over sparsemax's unmasked
    forward+backward in the same rounds."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    grad = torch.randn(shape, generator=generator)
    mask = torch.rand(shape, generator=generator) > 0.1
    calls = {}
    for name, mapping in FAMILY.items():
        for variant in FAMILY_GRADIENT_VARIANTS:
            if name in ("sparsemax", "sum-normalization++") and variant == "learnt":
                continue  # no parameter
            learnt = torch.ones(shape[0], 1) if variant == "learnt" else None
            m = mask if variant.endswith("masked") else None
            run = _gradients_of(mapping, x, learnt, m, grad)
            calls[name, variant] = on_threads(run, 1)
    calls["softmax", "torch.softmax"] = on_threads(
        forward_backward(lambda z: torch.softmax(z, -1), x, grad), 1
    )
    with threads_restored():
        times = median_times(calls, repeats)
    base = times["sparsemax", "float"]
    return {key: t / base for key, t in times.items()}


def _gradients_of(mapping, x, learnt, mask, grad) -> Callable[[], object]:
    """One forward and backward of ``mapping``: the scores' gradient, and ``learnt``'s."""

    def run():
        leaf = x.detach().requires_grad_()
        if learnt is None:
            return torch.autograd.grad(mapping(leaf, 1.0, mask), leaf, grad)
        parameter = learnt.detach().requires_grad_()
        return torch.autograd.grad(mapping(leaf, parameter, mask), (leaf, parameter), grad)

    return run


def family_backward_rows(ratios: dict[tuple[int, int], dict[tuple[str, str], float]]) -> list[str]:
    rows = [
        "Forward+backward time ÷ sparsemax's unmasked forward+backward, same shape and "
        "run; one thread. The scores take a gradient; *learnt*: so does a parameter per "
        "row (λ or q), whose gradient is the backward's scale term. Masked: 10% of entries "
        "masked.",
        "",
    ]
    return rows + _family_table(ratios)


def family_page_times(shape, repeats: int) -> dict[str, dict[tuple[str, str], float]]:
    """Both of the family's measurements of one shape: forward, and forward+backward."""
    return {
        "forward": family_times(shape, repeats),
        "backward": family_backward_times(shape, repeats),
    }


def family_page_rows(results: dict[tuple[int, int], dict[str, dict]]) -> list[str]:
    """The forward table, then the forward+backward one under its own heading."""
    forward = family_rows({shape: r["forward"] for shape, r in results.items()})
    backward = family_backward_rows({shape: r["backward"] for shape, r in results.items()})
    return [*forward, "", "## Forward and backward", "", *backward]


RATIO_HEADER = ("threads", "B×K", "softmax fwd (µs)", "ours fwd (µs)", "ours ÷ softmax fwd",
                "ours ÷ softmax fwd+bwd", "entmax ÷ ours fwd", "entmax ÷ ours fwd+bwd",
                "sparsegen-lin ÷ sparsemax", "sparsehourglass ÷ sparsemax")  # fmt: skip


def ratio_rows(all_times: dict) -> list[str]:
    cells = []
    unstable = False
    for (threads, shape), t in all_times.items():
        spread = max(t.get("softmax fwd spread", 0.0), t.get("sparsemax fwd spread", 0.0))
        flag = " ⚠" if spread > UNSTABLE_SPREAD else ""
        unstable = unstable or bool(flag)
        entmax_fwd = f"{t['entmax fwd'] / t['sparsemax fwd']:.1f}×" if "entmax fwd" in t else "—"
        entmax_bwd = (
            f"{t['entmax fwd+bwd'] / t['sparsemax fwd+bwd']:.1f}×" if "entmax fwd" in t else "—"
        )
        cells.append((
            threads, f"{shape[0]}×{shape[1]}", f"{t['softmax fwd'] * 1e6:.0f}",
            f"{t['sparsemax fwd'] * 1e6:.0f}",
            f"{t['sparsemax fwd'] / t['softmax fwd']:.2f}×{flag}",
            f"{t['sparsemax fwd+bwd'] / t['softmax fwd+bwd']:.2f}×", entmax_fwd, entmax_bwd,
            f"{t['sparsegen_lin fwd'] / t['sparsemax fwd']:.2f}×",
            f"{t['sparsehourglass fwd'] / t['sparsemax fwd']:.2f}×",
        ))  # fmt: skip
    rows = markdown_table(RATIO_HEADER, cells)
    if unstable:
        rows += [
            "",
            f"⚠ unstable: in the rows flagged, the rounds of softmax or sparsemax disagree by "
            f"more than {UNSTABLE_SPREAD:.0%} (interquartile range ÷ median): the machine was "
            "busy. Rerun before reading them.",
        ]
    if entmax is None:
        rows += ["", "entmax not installed (`pip install entmax`): its columns are empty."]
    return rows


def scaling_rows(all_times: dict, n_threads: int) -> list[str]:
    header = ("B×K", f"sparsemax fwd speed-up, {n_threads} threads ÷ 1", "softmax's")
    cells = []
    for shape in SHAPES:
        one, many = all_times[(1, shape)], all_times[(n_threads, shape)]
        cells.append((
            f"{shape[0]}×{shape[1]}", f"{one['sparsemax fwd'] / many['sparsemax fwd']:.2f}×",
            f"{one['softmax fwd'] / many['softmax fwd']:.2f}×",
        ))  # fmt: skip
    return markdown_table(header, cells)


def all_shape_times(shapes, repeats: int, thread_counts: list[int]) -> dict:
    """``measure_shape``'s times keyed by (threads, shape), ordered by thread count."""
    all_times = {}
    for shape in tqdm(shapes, desc="bench (shapes)"):
        for threads, times in measure_shape(shape, repeats, thread_counts).items():
            all_times[threads, shape] = times
    return dict(sorted(all_times.items(), key=lambda item: item[0][0]))


def peak_memory_rows() -> list[str]:
    cells = [
        (
            f"{shape[0]}×{shape[1]}",
            *(f"{peak_extra_memory(name, shape):.2f}×" for name in mappings()),
        )
        for shape in [(32768, 512), (64, 262144)]  # 64 MiB, well above start-up noise
    ]
    return markdown_table(("B×K", *mappings()), cells)


def full_only_sections(all_times: dict, shapes, repeats: int, n_threads: int) -> list[str]:
    """The sections the quick benchmark leaves out: profile, thread scaling, memory, start-up,
    call overhead, attention memory and training steps."""
    profiles = {shape: forward_profile(shape, repeats) for shape in shapes}
    lines = ["", "## Where the forward's time goes (one thread)", "", PROFILE_NOTE, ""]
    lines += profile_rows(profiles)
    if n_threads > 1:
        lines += ["", "## Thread scaling", "", *scaling_rows(all_times, n_threads)]
    lines += [
        "",
        "## Peak extra memory of one forward (multiples of the input's size; the output is 1×)",
        "",
        *peak_memory_rows(),
    ]
    lines += ["", "## Start-up", ""]
    lines += markdown_table(
        ("what", "seconds"), [(k, f"{v:.3f}") for k, v in startup_times().items()]
    )
    lines += ["", "## Per-call cost (1×16, no grad)", ""]
    lines += markdown_table(("way in", "µs"), [(k, f"{v:.1f}") for k, v in call_overhead().items()])
    lines += ["", "## Attention at length: memory", "", *attention_memory_rows()]
    lines += ["", "## A Transformer training step", ""]
    lines += transformer_rows(transformer_step_times(max(3, repeats // 4)))
    lines += ["", "## The experiments' models: a training step", ""]
    lines += model_rows(model_step_times(max(5, repeats // 2)))
    return lines


def run_benchmark(
    quick: bool = False, json_path: Path | None = None, keep_freed: bool = False
) -> str:
    """Measure and return the markdown report (``quick``: 3 shapes, 5 repeats, no memory).

    ``keep_freed`` first changes this process's malloc settings (see
    :func:`keep_freed_memory`): what the ``sparsegen bench`` command and the
    benchmark script ask for, a library call does not by default.
    """
    repeats = 5 if quick else 20
    shapes = SHAPES[:3] if quick else SHAPES
    allocator = (
        "glibc malloc keeps freed memory (see `keep_freed_memory`)"
        if keep_freed and keep_freed_memory()
        else "default allocator"
    )
    n_threads = torch.get_num_threads()  # (the cores this process may use, not the machine's)
    all_times = all_shape_times(shapes, repeats, sorted({1, n_threads}))

    lines = [
        "# Benchmark: sparsemax kernels vs torch.softmax and entmax",
        "",
        f"float32, median of {repeats} runs, torch {torch.__version__}, "
        f"{n_threads} cores, {allocator}; `sparsegen bench{' --quick' if quick else ''}`.",
        "",
        "## Time ratios (lower is better for ours ÷ softmax; higher for entmax ÷ ours)",
        "",
        *ratio_rows(all_times),
        "",
        "## The family at sparsemax's cost",
        "",
        *family_rows({shape: family_times(shape, repeats) for shape in shapes}),
    ]
    if not quick:
        lines += full_only_sections(all_times, shapes, repeats, n_threads)
    if json_path:
        json_path.write_text(
            json.dumps({f"{k[0]}-{k[1][0]}x{k[1][1]}": v for k, v in all_times.items()}, indent=1)
        )
    return "\n".join(lines) + "\n"


def write_report(title: str, script: str, repeats: int, rows: list[str], output: Path) -> None:
    """Print and write a benchmark script's markdown page: title, set-up line, table."""
    text = "\n".join(
        [
            f"# {title}",
            "",
            f"torch {torch.__version__}, median of {repeats} interleaved rounds; "
            f"`python benchmarks/{script}`.",
            "",
            *rows,
        ]
    )
    print(text)
    output.write_text(text + "\n")


def shape_script(
    doc: str,
    file: str,
    title: str,
    measure: Callable[[tuple[int, int], int], dict],
    rows: Callable[[dict], list[str]],
    repeats: int,
) -> None:
    """The command line of a script under ``benchmarks/`` that measures each of
    :data:`SHAPES`: ``--repeats`` (default ``repeats``) and ``--output`` (default its
    ``bench_NAME.py``'s ``NAME.md`` beside it); ``measure(shape, repeats)`` per shape, and
    the page of ``rows(results by shape)`` written (:func:`write_report`)."""
    script = Path(file)
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--repeats", type=flags.positive_int, default=repeats)
    default = script.with_name(script.stem.removeprefix("bench_") + ".md")
    parser.add_argument("--output", type=flags.output_file, default=default)
    args = parser.parse_args()
    keep_freed_memory()
    results = {shape: measure(shape, args.repeats) for shape in tqdm(SHAPES)}
    write_report(title, script.name, args.repeats, rows(results), args.output)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n\n")[0] or None)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller shapes")
    # (a string default: argparse checks it as it checks a given path, before the run)
    parser.add_argument("--output", type=flags.output_file, default="benchmarks/results.md")
    parser.add_argument("--json", type=flags.output_file, help="also dump the raw medians here")
    args = parser.parse_args(argv)
    text = run_benchmark(args.quick, args.json, keep_freed=True)
    print(text)
    args.output.write_text(text)
