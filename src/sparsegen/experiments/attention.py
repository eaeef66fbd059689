"""What sparse attention buys, on a task whose true alignment is known: key–value retrieval.

Each example is a set of ``n`` (key, value) items, ``n`` drawn from
``[min_items, max_items]`` (shorter sets padded, and the padding masked), and a
query key that occurs exactly once among the items; the answer is its value.
The one relevant position is the item holding the query key. A model embeds
the items (key + value embeddings), lets the query attend over them with one
:class:`sparsegen.nn.MultiheadAttention` layer and reads the value out of the
attention output with a linear layer. Only the attention mapping differs
between runs.

Reported per mapping, over several seeds, on a fixed held-out set: accuracy,
the mean support size of the attention (positions with nonzero weight, per
query and head) beside the mean number of items, and the mean attention mass
on the relevant position.

Training runs unchanged under ``torchrun`` (DistributedDataParallel; gloo on
CPU, nccl on GPUs): every rank draws the same seeded global batch and trains on
its contiguous share, so ``k`` processes take the same steps as one process::

    torchrun --nproc_per_node=2 -m sparsegen.experiments.attention --mapping sparsemax
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from sparsegen._extras import needs_extra
from sparsegen.experiments import flags
from sparsegen.experiments.settings import Setting
from sparsegen.experiments.tables import markdown_table, pyplot, save_figure, write_csv
from sparsegen.nn import MultiheadAttention

with needs_extra("experiments", __name__):
    from tqdm import tqdm

    from sparsegen.experiments.runner import (
        RunResult,
        check_plan,
        mean_sd,
        run_parallel,
        summarise_runs,
    )
    from sparsegen.models.training import distributed

__all__ = [
    "GRID",
    "AttentionRun",
    "Config",
    "RetrievalModel",
    "evaluate",
    "make_batch",
    "run_attention",
    "train",
]


@dataclass(frozen=True)
class Config:
    """One training run: the mapping, the task's sizes and the optimiser's settings."""

    mapping: str = "sparsemax"
    lam: float | None = None
    q: float | None = None
    learnable: bool = False
    seed: int = 0
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    key_parts: int = 8
    n_values: int = 16
    min_items: int = 6
    max_items: int = 32
    embed_dim: int = 12
    num_heads: int = 1
    test_size: int = 2000
    float64: bool = False


# The report's settings; their names are the files' ``method`` column.
GRID = (
    Setting("softmax", "softmax"),
    Setting("sparsemax", "sparsemax"),
    *(Setting("sparsegen-lin", "sparsegen_lin", lam=v) for v in (-1.0, 0.5, 0.75)),
    Setting(
        "sparsegen-lin", "sparsegen_lin", lam=0.0, learnable=True, label="sparsegen-lin λ learnt"
    ),
    Setting("sparsehourglass", "sparsehourglass", q=1.0),
)
_METRICS = ("support", "items", "relevant_mass")


def _setting(name: str) -> Setting:
    """The :data:`GRID` setting called ``name`` (a run file may name another: its own)."""
    return next((s for s in GRID if s.name == name), Setting(name, None, label=name))


@dataclass
class AttentionRun(RunResult):
    """One training run: its budget (``steps``), held-out ``accuracy`` (a test score) and
    attention statistics, and its attention on the heatmap's examples (``weights``, kept
    out of the files)."""

    steps: int = 0
    weights: np.ndarray | None = None

    def to_row(self) -> dict:
        """attention.csv's row."""
        return {
            "method": self.setting,
            "steps": self.steps,
            "seed": self.seed,
            "accuracy": self.tests["accuracy"],
            **{key: self.stats[key] for key in _METRICS},
            "learnt": self.learnt_lam,
            "seconds": self.seconds,
        }

    @classmethod
    def from_row(cls, row: dict) -> AttentionRun:
        return cls(
            setting=row["method"],
            family=_setting(row["method"]).family,
            seed=row["seed"],
            tests={"accuracy": row["accuracy"]},
            stats={key: row[key] for key in _METRICS},
            seconds=row["seconds"],
            learnt_lam=row["learnt"],
            steps=row["steps"],
        )


def make_batch(config: Config, size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A seeded batch: keys, values, padding (True = padded), query, target, relevant position."""
    lengths = torch.randint(config.min_items, config.max_items + 1, (size,), generator=generator)
    keys = torch.rand(size, config.key_parts**2, generator=generator).argsort(1)[
        :, : config.max_items
    ]
    values = torch.randint(config.n_values, (size, config.max_items), generator=generator)
    positions = torch.arange(config.max_items)
    padding = positions >= lengths.unsqueeze(1)
    relevant = (torch.rand(size, generator=generator) * lengths).long()
    rows = torch.arange(size)
    return {
        "keys": keys.masked_fill(padding, 0),
        "values": values.masked_fill(padding, 0),
        "padding": padding,
        "query": keys[rows, relevant],
        "target": values[rows, relevant],
        "relevant": relevant,
    }


def heatmap_examples(config: Config) -> dict[str, torch.Tensor]:
    """The 8 held-out examples every model's heatmap shows (the same for all runs)."""
    return make_batch(config, 8, torch.Generator().manual_seed(20_000))


class RetrievalModel(nn.Module):
    """Embed the items, attend from the query key, classify the value."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.key_parts = config.key_parts
        self.first_part = nn.Embedding(config.key_parts, config.embed_dim)
        self.second_part = nn.Embedding(config.key_parts, config.embed_dim)
        self.value_embedding = nn.Embedding(config.n_values, config.embed_dim)
        self.attention = MultiheadAttention(
            config.embed_dim,
            config.num_heads,
            batch_first=True,
            mapping=config.mapping,
            lam=config.lam,
            q=config.q,
            learnable=config.learnable,
        )
        self.classifier = nn.Linear(config.embed_dim, config.n_values)

    def embed_key(self, key: torch.Tensor) -> torch.Tensor:
        """A key is a pair of parts; its embedding is the sum of theirs."""
        return self.first_part(key // self.key_parts) + self.second_part(key % self.key_parts)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(N, n_values)`` and attention weights ``(N, heads, items)``."""
        items = self.embed_key(batch["keys"]) + self.value_embedding(batch["values"])
        query = self.embed_key(batch["query"]).unsqueeze(1)
        attended, weights = self.attention(
            query, items, items, key_padding_mask=batch["padding"], average_attn_weights=False
        )
        return self.classifier(attended.squeeze(1)), weights.squeeze(2)


def train(config: Config, progress: bool = False) -> RetrievalModel:
    """Train with Adam on fresh seeded batches; under torchrun, with DDP across the ranks.

    Each rank draws the same global batch of ``config.batch_size`` examples and
    trains on its contiguous share (the batch size must divide by the world
    size); DDP averages the gradients, so the steps equal one process's.
    """
    rank, world = distributed()
    if config.batch_size % world:
        raise ValueError(
            f"batch_size ({config.batch_size}) must be divisible by the world size ({world})"
        )
    torch.manual_seed(config.seed)
    model = RetrievalModel(config).to(torch.float64 if config.float64 else torch.float32)
    trained = model if world == 1 else nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(trained.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed + 1)
    share = slice(rank * config.batch_size // world, (rank + 1) * config.batch_size // world)
    for _ in tqdm(range(config.steps), disable=not progress, desc=config.mapping):
        batch = {k: v[share] for k, v in make_batch(config, config.batch_size, generator).items()}
        logits, _ = trained(batch)
        loss = nn.functional.cross_entropy(logits, batch["target"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@torch.no_grad()
def evaluate(model: RetrievalModel, config: Config) -> dict[str, float]:
    """Accuracy, mean support size, mean item count and mass on the relevant item (held out)."""
    batch = make_batch(config, config.test_size, torch.Generator().manual_seed(10_000))
    model.eval()
    logits, weights = model(batch)
    items = (~batch["padding"]).sum(1)
    relevant = weights[torch.arange(config.test_size), :, batch["relevant"]]
    return {
        "accuracy": (logits.argmax(1) == batch["target"]).double().mean().item(),
        "support": (weights > 0).sum(-1).double().mean().item(),
        "items": items.double().mean().item(),
        "relevant_mass": relevant.double().mean().item(),
    }


def _run(setting: Setting, config: Config) -> AttentionRun:
    torch.set_num_threads(1)  # the runs are spread over processes instead
    start = time.perf_counter()
    model = train(config)
    scores = evaluate(model, config)
    learnt = float(model.attention.mapping.lam.detach().mean()) if config.learnable else None
    seconds = time.perf_counter() - start
    with torch.no_grad():
        weights = model(heatmap_examples(config))[1].mean(1).numpy()
    return AttentionRun(
        setting=setting.name,
        family=setting.family,
        seed=config.seed,
        tests={"accuracy": scores["accuracy"]},
        stats={key: scores[key] for key in _METRICS},
        seconds=seconds,
        learnt_lam=learnt,
        steps=config.steps,
        weights=weights,
    )


def run_attention(
    out_dir: Path,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    methods: Sequence[str] = tuple(s.name for s in GRID),
    budgets: Sequence[int] = (400, Config.steps),
    n_jobs: int = 2,
    **overrides,
) -> list[dict]:
    """Train every method (a :data:`GRID` setting, by name) on every seed at every budget
    (steps).

    Writes attention.md/.csv and attention_heatmaps.png (first seed) to ``out_dir``.
    """
    check_plan("run_attention", seeds=seeds, methods=methods, budgets=budgets)
    names = [s.name for s in GRID]
    unknown = [name for name in methods if name not in names]
    if unknown:
        raise ValueError(f"run_attention: unknown methods {unknown}; the grid's are {names}")
    if not all(isinstance(steps, int) and steps >= 1 for steps in budgets):
        raise ValueError(f"run_attention: budgets must be step counts >= 1; got {budgets}")
    out_dir.mkdir(parents=True, exist_ok=True)
    base = replace(Config(), **overrides)
    settings = [_setting(name) for name in methods]
    tasks = [
        (s, replace(base, seed=seed, steps=steps, mapping=s.mapping, **s.mapping_options()))
        for steps in budgets
        for s in settings
        for seed in seeds
    ]
    runs = run_parallel(
        _run, tasks, n_jobs=n_jobs, description="attention (budget × method × seed)"
    )
    write_csv([run.to_row() for run in runs], out_dir / "attention.csv")
    (out_dir / "attention.md").write_text(attention_markdown(runs, base))
    shown = {(run.steps, run.setting): run.weights for run in runs if run.seed == seeds[0]}
    plot_heatmaps(shown, base, out_dir / "attention_heatmaps.png")
    return [run.to_row() for run in runs]


def summary(runs: Sequence[AttentionRun]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and (population) standard deviation over seeds of each metric, per method (in
    run order)."""
    table: dict[str, dict[str, tuple[float, float]]] = {}
    grid = [_setting(name) for name in dict.fromkeys(run.setting for run in runs)]
    for group in summarise_runs(runs, grid):
        metrics = {
            "accuracy": [r.tests["accuracy"] for r in group.runs],
            **{key: [r.stats[key] for r in group.runs] for key in _METRICS},
            "seconds": [r.seconds for r in group.runs],
        }
        if group.runs[0].learnt_lam is not None:
            metrics["learnt"] = [r.learnt_lam for r in group.runs]
        table[group.setting.name] = {key: mean_sd(v, ddof=0) for key, v in metrics.items()}
    return table


def attention_markdown(rows: Sequence[AttentionRun | dict], config: Config) -> str:
    """attention.md: the set-up, a table and the findings per budget, the heatmaps."""
    runs = [r if isinstance(r, AttentionRun) else AttentionRun.from_row(r) for r in rows]
    seeds = sorted({run.seed for run in runs})
    budgets = sorted({run.steps for run in runs})
    lines = [
        "# Sparse attention on key–value retrieval",
        "",
        f"One attention layer (`sparsegen.nn.MultiheadAttention`, {config.num_heads} head) "
        f"reads the value of a query key among {config.min_items}–{config.max_items} "
        f"(key, value) items; a key is a pair of symbols out of {config.key_parts} each, so "
        f"several items share half of the query key; {config.n_values} values, embeddings "
        f"of size {config.embed_dim}. Adam (lr {config.lr}) on batches of "
        f"{config.batch_size} fresh examples for {' or '.join(map(str, budgets))} steps; "
        f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); scored on {config.test_size} "
        "held-out examples. Mean ± standard deviation over seeds. *Support size*: items "
        "with nonzero attention weight, per query; *items*: the mean set size.",
        "",
        "Regenerate with `sparsegen attention --out DIR` (about a minute on 2 cores).",
    ]
    for steps in budgets:
        table = summary([run for run in runs if run.steps == steps])
        lines += ["", f"## {steps} training steps", "", *_budget_table(table), "", *findings(table)]
    lines += [
        "",
        "![attention heatmaps](attention_heatmaps.png)",
        "",
        f"Attention of each model (seed {seeds[0]}) on the same eight held-out sets, on a "
        "log scale: white cells are exact zeros, the red box marks the item that holds the "
        "query key.",
        "",
    ]
    return "\n".join(lines)


def _budget_table(table: dict[str, dict[str, tuple[float, float]]]) -> list[str]:
    """A budget's table: each method's accuracy, support, items and mass on the relevant item."""
    header = ("attention", "accuracy (%)", "support size", "items", "mass on the relevant item")
    rows = [
        (
            method + (f" (λ learnt: {m['learnt'][0]:.2f} ± {m['learnt'][1]:.2f})"
                      if "learnt" in m else ""),
            f"{100 * m['accuracy'][0]:.2f} ± {100 * m['accuracy'][1]:.2f}",
            f"{m['support'][0]:.2f} ± {m['support'][1]:.2f}",
            f"{m['items'][0]:.1f}",
            f"{m['relevant_mass'][0]:.3f} ± {m['relevant_mass'][1]:.3f}",
        )
        for method, m in table.items()
    ]  # fmt: skip
    return markdown_table(header, rows)


def findings(table: dict[str, dict[str, tuple[float, float]]]) -> list[str]:
    """The experiment's targets, checked against this run's numbers and said plainly."""
    if "softmax" not in table:
        return []
    soft = table["softmax"]
    lines = [
        "Against softmax (targets: within 1 point, ≥ 3× smaller support, more mass on the "
        "relevant item):",
        "",
    ]
    for method, m in table.items():
        if method == "softmax":
            continue
        gap = 100 * (m["accuracy"][0] - soft["accuracy"][0])
        ratio = soft["support"][0] / m["support"][0]
        more = m["relevant_mass"][0] - soft["relevant_mass"][0]
        missed = [
            name
            for name, met in (("accuracy", gap >= -1), ("support", ratio >= 3), ("mass", more > 0))
            if not met
        ]
        verdict = f"misses the {', '.join(missed)} target" if missed else "meets all three"
        lines.append(
            f"- {method}: accuracy {gap:+.2f} points, support {ratio:.1f}× smaller, "
            f"relevant mass {more:+.3f}: {verdict}."
        )
    return lines


def plot_heatmaps(weights: dict[tuple[int, str], np.ndarray], config: Config, path: Path) -> None:
    """Attention on the same 8 held-out examples, a row per budget and a column per method.

    Log colour scale, so softmax's small weights show; exact zeros are white,
    padding grey, and the relevant item is boxed in red.
    """
    plt = pyplot()
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    examples = heatmap_examples(config)
    padding = examples["padding"].numpy()
    budgets = sorted({steps for steps, _ in weights})
    methods = list(dict.fromkeys(method for _, method in weights))
    fig, axes = plt.subplots(
        len(budgets),
        len(methods),
        figsize=(2.3 * len(methods), 2.6 * len(budgets) + 0.6),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    cmap = plt.get_cmap("viridis").with_extremes(bad=(0, 0, 0, 0))  # zeros: see through
    norm = LogNorm(vmin=1e-3, vmax=1.0)
    for (row, steps), (col, method) in itertools.product(enumerate(budgets), enumerate(methods)):
        ax = axes[row, col]
        w = np.ma.masked_where(padding | (weights[steps, method] <= 0), weights[steps, method])
        ax.imshow(np.where(padding, 0.8, 1.0), cmap="gray", vmin=0, vmax=1, aspect="auto")
        image = ax.imshow(np.clip(w, 1e-3, None), cmap=cmap, norm=norm, aspect="auto")
        for example, position in enumerate(examples["relevant"].tolist()):
            ax.add_patch(
                Rectangle((position - 0.5, example - 0.5), 1, 1, fill=False, ec="red", lw=0.8)
            )
        ax.set_title(f"{method}\n{steps} steps", fontsize=8)
        if row == len(budgets) - 1:
            ax.set_xlabel("item position")
        if col == 0:
            ax.set_ylabel("held-out example")
    fig.colorbar(image, ax=axes.ravel().tolist(), label="attention weight (log scale)", shrink=0.8)
    fig.suptitle(
        "Attention of the query key on the items (seed 0). Red box: the item holding the "
        "query key; white: exactly 0; grey: padding",
        fontsize=10,
    )
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    """One training run; under torchrun, distributed. ``--save`` writes the trained parameters."""
    parser = argparse.ArgumentParser(
        prog="python -m sparsegen.experiments.attention", description=main.__doc__
    )
    parser.add_argument("--mapping", default="sparsemax")
    parser.add_argument("--lam", type=flags.finite_number)
    parser.add_argument("--q", type=flags.finite_number)
    parser.add_argument("--seed", type=flags.count, default=0)
    parser.add_argument("--steps", type=flags.positive_int, default=Config.steps)
    parser.add_argument("--batch-size", type=flags.positive_int, default=Config.batch_size)
    parser.add_argument("--float64", action="store_true", help="train in double precision")
    parser.add_argument(
        "--save", type=flags.output_file, help="write the trained state_dict here (rank 0)"
    )
    args = parser.parse_args(argv)
    try:  # an unknown mapping or a parameter out of its range, named before any training
        MultiheadAttention(1, 1, mapping=args.mapping, lam=args.lam, q=args.q)
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    config = Config(
        mapping=args.mapping,
        lam=args.lam,
        q=args.q,
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        float64=args.float64,
    )
    rank, world = distributed()
    model = train(config, progress=rank == 0)
    if rank == 0:
        print({"world_size": world, **asdict(config), **evaluate(model, config)})
        if args.save:
            torch.save(model.state_dict(), args.save)
    if dist.is_initialized():
        dist.barrier()  # every rank leaves together: no rank tears gloo down under another
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
