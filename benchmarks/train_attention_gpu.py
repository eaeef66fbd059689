"""Train a small decoder-only Transformer with softmax and with sparsemax attention; writes
benchmarks/attention_training.md (and a PNG of the curves where matplotlib is installed).

The fused kernel's end-to-end proof: a causal byte-level language model (4 layers, width
256, 4 heads, windows of 512 bytes, built from torch.nn pieces) whose attention is
``sparsegen.attention.scaled_dot_product_attention(..., is_causal=True, mapping=...)``,
trained on the English side of Multi30k's training captions (shipped with the package,
``sparsegen.datasets.load_multi30k``) joined into one stream of UTF-8 bytes. Each mapping
gets the same seed, initial weights, batches and number of steps; the report gives the
training loss (mean of each 25 steps), the loss on Multi30k's validation captions at the
end, the median time of a step, peak memory, and how many keys each query kept on a
validation batch. bfloat16 autocast on a GPU. Then, for each sparse run, the kernel on the
trained model's own q, k and v (each layer's, on a validation batch): keys kept, the share
of live 64×64 blocks, and the fused attention's forward and forward+backward ÷ torch's
flash SDPA on those inputs. A run that fails or overruns its share of
the time budget is reported as such; the other still runs.

    python benchmarks/train_attention_gpu.py [--steps 300] [--output PATH]
    python benchmarks/train_attention_gpu.py --smoke   # CPU: 2 layers, d=32, L=16, 3 steps
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch

if not torch.cuda.is_available():  # the Triton kernels then run in the interpreter, on CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch.nn.functional as F
from bench_attention_gpu import (
    BLOCK,
    Runner,
    flash_sdpa,
    ratio,
    run_line,
    sparse_sdpa,
    three_measures,
)
from torch import nn

import sparsegen as sg
from sparsegen import attention as sga
from sparsegen.datasets import load_multi30k
from sparsegen.experiments.tables import markdown_table

MAPPINGS = {
    "softmax": sg.softmax,
    "sparsemax": sg.sparsemax,
    "sparsegen_lin λ=0.5": functools.partial(sg.sparsegen_lin, lam=0.5),
    "sparsehourglass q=1": functools.partial(sg.sparsehourglass, q=1.0),
}
VOCAB = 256  # bytes


@dataclasses.dataclass(frozen=True)
class Config:
    layers: int = 4
    width: int = 256
    heads: int = 4
    length: int = 512
    batch: int = 16
    steps: int = 300
    lr: float = 1e-3
    warmup: int = 30
    log_every: int = 25
    valid_windows: int = 64


SMOKE = Config(layers=2, width=32, heads=2, length=16, batch=2, steps=3, warmup=1, log_every=1,
               valid_windows=2)  # fmt: skip


class CausalSelfAttention(nn.Module):
    def __init__(self, config: Config, mapping, implementation: str) -> None:
        super().__init__()
        self.heads, self.mapping, self.implementation = config.heads, mapping, implementation
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.out = nn.Linear(config.width, config.width)
        self.support: list[float] | None = None  # a list: record keys kept per query
        self.inputs: list[tuple] | None = None  # a list: record (q, k, v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if self.inputs is not None:
            self.inputs.append(tuple(t.detach().contiguous() for t in (q, k, v)))
        if self.support is None:
            y = sga.scaled_dot_product_attention(
                q, k, v, is_causal=True, mapping=self.mapping, implementation=self.implementation
            )
        else:  # the weights, to count what each query keeps
            y, _, support = sga.scaled_dot_product_attention(
                q, k, v, is_causal=True, mapping=self.mapping, need_weights=True,
                implementation="unfused",
            )  # fmt: skip
            self.support.append(support.float().mean().item())
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    def __init__(self, config: Config, mapping, implementation: str) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(config.width), nn.LayerNorm(config.width)
        self.attention = CausalSelfAttention(config, mapping, implementation)
        self.mlp = nn.Sequential(
            nn.Linear(config.width, 4 * config.width),
            nn.GELU(),
            nn.Linear(4 * config.width, config.width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LanguageModel(nn.Module):
    """Pre-norm decoder-only Transformer over bytes, learnt positions."""

    def __init__(self, config: Config, mapping, implementation: str) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, config.width)
        self.positions = nn.Embedding(config.length, config.width)
        blocks = [Block(config, mapping, implementation) for _ in range(config.layers)]
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, VOCAB, bias=False)

    def loss(self, window: torch.Tensor) -> torch.Tensor:
        """Mean next-byte cross-entropy (nats) over a ``(B, L + 1)`` window of bytes."""
        inputs, targets = window[:, :-1], window[:, 1:]
        positions = torch.arange(inputs.shape[1], device=inputs.device)
        hidden = self.blocks(self.tokens(inputs) + self.positions(positions))
        logits = self.head(self.norm(hidden))
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def byte_stream(split: str) -> torch.Tensor:
    """Multi30k's English captions of ``split``, one per line, as a stream of UTF-8 bytes."""
    captions = load_multi30k(split, source="fr", target="en").target
    data = bytearray("\n".join(captions).encode("utf-8"))
    return torch.frombuffer(data, dtype=torch.uint8).long()


def training_windows(stream: torch.Tensor, config: Config) -> Iterator[torch.Tensor]:
    """Random ``(B, L + 1)`` windows, the same sequence for every run (its own generator)."""
    generator = torch.Generator().manual_seed(1)
    offsets = torch.arange(config.length + 1)
    while True:
        starts = torch.randint(len(stream) - config.length, (config.batch, 1), generator=generator)
        yield stream[starts + offsets]


def validation_loss(model: LanguageModel, stream: torch.Tensor, config: Config, device) -> float:
    """Mean loss over up to ``valid_windows`` consecutive non-overlapping windows."""
    count = min(config.valid_windows, (len(stream) - 1) // config.length)
    starts = torch.arange(count)[:, None] * config.length
    windows = stream[starts + torch.arange(config.length + 1)].to(device)
    model.eval()
    with torch.no_grad(), autocast(device):
        losses = [model.loss(part) for part in windows.split(config.batch)]
    model.train()
    sizes = [len(part) for part in windows.split(config.batch)]
    return sum(loss.item() * size for loss, size in zip(losses, sizes, strict=True)) / count


def autocast(device: torch.device):
    return torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")


class StepTimer:
    """Each step's milliseconds: CUDA events (read once, at the end) or the wall clock."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.starts: list = []
        self.ends: list = []

    def start(self) -> None:
        self.starts.append(self._now())

    def stop(self) -> None:
        self.ends.append(self._now())

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def median_ms(self) -> float:
        spans = zip(self.starts, self.ends, strict=True)
        if self.cuda:
            torch.cuda.synchronize()
            return statistics.median(a.elapsed_time(b) for a, b in spans)
        return statistics.median(1e3 * (b - a) for a, b in spans)


def optimiser_step(model: LanguageModel, config: Config, device: torch.device):
    """``step(window) -> loss``: forward, backward, clipping, AdamW with linear warm-up."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95),
                                  weight_decay=0.1)  # fmt: skip
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1, (s + 1) / config.warmup))

    def step(window: torch.Tensor) -> torch.Tensor:
        with autocast(device):
            loss = model.loss(window)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        warmup.step()
        return loss.detach()

    return step


def train(name: str, config: Config, data: dict, device: torch.device, args) -> dict:
    """One run: the loss curve, the validation loss, ms per step, peak memory and support."""
    torch.manual_seed(0)
    model = LanguageModel(config, MAPPINGS[name], args.implementation).to(device)
    step_once, timer = optimiser_step(model, config, device), StepTimer(device)
    windows, losses, curve = training_windows(data["train"], config), [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for step in range(1, config.steps + 1):
        window = next(windows).to(device, non_blocking=True)
        timer.start()
        losses.append(step_once(window))
        timer.stop()
        if step % config.log_every == 0:
            curve.append((step, torch.stack(losses[-config.log_every :]).mean().item()))
            print(f"  {name} step {step}: train loss {curve[-1][1]:.3f}", flush=True)
        if time.perf_counter() - started > args.budget_s / len(args.mappings):
            break
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    found = recorded(model, data["valid"], config, device, ("support", "inputs"))
    return {
        "steps": step,
        "curve": curve,
        "valid": validation_loss(model, data["valid"], config, device),
        "ms": timer.median_ms(),
        "peak": peak,
        "support": statistics.mean(kept for layer in found["support"] for kept in layer),
        "inputs": [layer[0] for layer in found["inputs"]],
    }


def first_batch(stream: torch.Tensor, config: Config, device) -> torch.Tensor:
    """The first ``batch`` consecutive validation windows."""
    offsets = torch.arange(config.batch)[:, None] * config.length
    return stream[offsets + torch.arange(config.length + 1)].to(device)


def recorded(model: LanguageModel, stream: torch.Tensor, config: Config, device, what: tuple):
    """What each layer records (``"support"``: keys kept per query; ``"inputs"``: its q, k, v)
    in one pass over the first validation batch: a list per layer of each."""
    layers = [block.attention for block in model.blocks]
    for layer, name in itertools.product(layers, what):
        setattr(layer, name, [])
    model.eval()
    with torch.no_grad(), autocast(device):
        model.loss(first_batch(stream, config, device))
    model.train()
    found = {name: [getattr(layer, name) for layer in layers] for name in what}
    for layer, name in itertools.product(layers, what):
        setattr(layer, name, None)
    return found


def guarded_train(name: str, config: Config, data: dict, device: torch.device, args) -> dict:
    try:
        return train(name, config, data, device, args)
    except Exception as error:  # an OOM, an unsupported shape: report it, run the next
        first = (str(error).strip().splitlines() or [""])[0][:200]
        print(f"  {name}: {type(error).__name__}: {first}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"error": f"fails: {type(error).__name__}: {first}"}


def summary_row(name: str, run: dict, base: dict) -> list[object]:
    if "error" in run:
        return [name, run["error"], *["—"] * 6]
    speed = f"{run['ms'] / base['ms']:.2f}" if "ms" in base else "—"
    last = f"{run['curve'][-1][1]:.3f}" if run["curve"] else "—"
    peak = "n/a" if run["peak"] is None else f"{run['peak']:.0f}"
    return [name, run["steps"], last, f"{run['valid']:.3f}", f"{run['ms']:.1f}", speed, peak,
            f"{run['support']:.1f}"]  # fmt: skip


def trained_sparsity(q, k, v, mapping) -> tuple[float, float]:
    """Keys kept per query and the share of the causally visible 64×64 blocks holding a
    nonzero weight: batch 0, head 0, the unfused float32 weights."""
    weights = sga.scaled_dot_product_attention(
        q[0, 0].float(), k[0, 0].float(), v[0, 0].float(), is_causal=True, mapping=mapping,
        need_weights=True, implementation="unfused",
    ).weights  # fmt: skip
    length = weights.shape[-1]
    padded = F.pad(weights > 0, (0, -length % BLOCK, 0, -length % BLOCK))
    tiles = padded.unflatten(0, (-1, BLOCK)).unflatten(2, (-1, BLOCK)).any(3).any(1)
    visible = torch.ones_like(tiles).tril()
    return (weights > 0).sum(-1).float().mean().item(), (tiles.sum() / visible.sum()).item()


def kernel_rows(runs: dict[str, dict], device, args) -> list[list[object]]:
    """Each sparse run's layers: sparsity, and the fused kernel ÷ flash SDPA on their inputs."""
    runner = Runner(device, 0 if args.smoke else 20, time.perf_counter() + 60)
    rows = []
    for name, run in runs.items():
        for layer, (q, k, v) in enumerate(run.pop("inputs", []) if name != "softmax" else []):
            attend = functools.partial(sparse_sdpa, mapping=MAPPINGS[name],
                                       implementation=args.implementation)  # fmt: skip
            base = three_measures(runner, flash_sdpa, q, k, v, True)
            ours = three_measures(runner, attend, q, k, v, True)
            found = runner.guard(lambda q=q, k=k, v=v, n=name: trained_sparsity(
                q, k, v, MAPPINGS[n]))  # fmt: skip
            sparsity = [found, "—"] if isinstance(found, str) else [
                f"{found[0]:.1f}", f"{100 * found[1]:.0f} %"]  # fmt: skip
            rows.append([name, layer, *sparsity,
                         *(ratio(ours[p], base[p]) for p in ("fwd", "fb", "peak"))])  # fmt: skip
    return rows


def curve_table(runs: dict[str, dict]) -> list[str]:
    curves = {name: dict(run.get("curve", [])) for name, run in runs.items()}
    steps = sorted({step for curve in curves.values() for step in curve})
    rows = [[step, *(f"{c[step]:.3f}" if step in c else "—" for c in curves.values())]
            for step in steps]  # fmt: skip
    return markdown_table(["step", *curves], rows)


def report(runs: dict[str, dict], config: Config, args, device, picture: Path | None,
           kernels: list[list[object]] | None = None) -> str:  # fmt: skip
    base = runs.get("softmax", {})
    visible = (config.length + 1) / 2
    precision = "bfloat16 autocast" if device.type == "cuda" else "float32"
    lines = [
        "# Training with sparse attention: a byte-level language model on Multi30k",
        "",
        f"{run_line(device)}. {config.layers} layers, width {config.width}, "
        f"{config.heads} heads, windows of "
        f"{config.length} bytes, {config.batch} windows a step, AdamW (lr {config.lr}, "
        f"{config.warmup} steps of warm-up), {precision}; sparsegen's "
        f"implementation={args.implementation!r}; the same seed, "
        "weights and batches for every attention. Losses in nats per byte (÷ ln 2: bits). "
        "`python benchmarks/train_attention_gpu.py`.",
        "",
        *markdown_table(
            ["attention", "steps", f"train loss (last {config.log_every})", "validation loss",
             "ms/step (median)", "÷ softmax", "peak memory (MiB)",
             f"keys kept / query (of {visible:.1f} visible)"],
            [summary_row(name, run, base) for name, run in runs.items()],
        ),
        "",
        f"## Training loss (mean of each {config.log_every} steps)",
        "",
        *curve_table(runs),
    ]  # fmt: skip
    if kernels:
        lines += [
            "", "## The kernel on the trained models' q, k, v (a validation batch, causal)", "",
            *markdown_table(
                ["attention", "layer", "keys kept / query", "live 64×64 blocks",
                 "fused fwd ÷ SDPA", "fwd+bwd ÷", "peak ÷"], kernels,
            ),
        ]  # fmt: skip
    if picture is not None:
        lines += ["", f"![Training loss]({picture.name})"]
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict], path: Path) -> Path | None:
    """The training curves, each run's validation loss a cross at its last step; None
    where matplotlib is not installed (or drawing fails)."""
    try:
        from sparsegen.experiments.tables import pyplot, save_figure

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, run in runs.items():
            if run.get("curve"):
                steps, values = zip(*run["curve"], strict=True)
                (line,) = ax.plot(steps, values, label=name)
                ax.scatter([steps[-1]], [run["valid"]], marker="x", color=line.get_color())
        ax.set(xlabel="step", ylabel="loss (nats per byte)", title="Training loss (×: validation)")
        ax.legend()
        return save_figure(fig, path)
    except Exception as error:  # matplotlib absent on the GPU machine, or a drawing error
        print(f"no plot: {type(error).__name__}: {error}", flush=True)
        return None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=Config.steps)
    parser.add_argument("--mappings", nargs="+", default=["softmax", "sparsemax"],
                        choices=list(MAPPINGS))  # fmt: skip
    share = "split equally between the runs; a run stops early past its share"
    parser.add_argument("--budget-s", type=float, default=150.0, help=share)
    parser.add_argument("--output", type=Path, help="default benchmarks/attention_training.md")
    parser.add_argument("--implementation", default="fused", choices=("fused", "auto", "unfused"))
    parser.add_argument("--smoke", action="store_true", help="2 layers, d=32, L=16, 3 steps")
    args = parser.parse_args()
    if args.output is None and not args.smoke:
        args.output = Path(__file__).with_name("attention_training.md")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = SMOKE if args.smoke else dataclasses.replace(Config(), steps=args.steps)
    data = {"train": byte_stream("train"), "valid": byte_stream("val")}
    print(f"Multi30k English: {len(data['train']):,} training, {len(data['valid']):,} "
          f"validation bytes; {device}", flush=True)  # fmt: skip
    runs: dict[str, dict] = {}
    for name in args.mappings:
        print(name, flush=True)
        runs[name] = guarded_train(name, config, data, device, args)
        if args.output is not None:
            args.output.write_text(report(runs, config, args, device, None))
    print("the kernel on the trained inputs", flush=True)
    kernels = kernel_rows(runs, device, args)
    picture = plot(runs, args.output.with_suffix(".png")) if args.output is not None else None
    text = report(runs, config, args, device, picture, kernels)
    text += f"\nRun time: {time.perf_counter() - started:.0f} s.\n"
    print(text)
    if args.output is not None:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
