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
from sparsegen.experiments.tables import pyplot, write_csv
from sparsegen.nn import MultiheadAttention

with needs_extra("experiments", __name__):
    from joblib import Parallel, delayed
    from tqdm import tqdm

    from sparsegen.models.training import distributed

__all__ = [
    "METHODS",
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


# The runs of the report: name -> mapping options.
METHODS: dict[str, dict] = {
    "softmax": {"mapping": "softmax"},
    "sparsemax": {"mapping": "sparsemax"},
    "sparsegen-lin λ=-1": {"mapping": "sparsegen_lin", "lam": -1.0},
    "sparsegen-lin λ=0.5": {"mapping": "sparsegen_lin", "lam": 0.5},
    "sparsegen-lin λ=0.75": {"mapping": "sparsegen_lin", "lam": 0.75},
    "sparsegen-lin λ learnt": {"mapping": "sparsegen_lin", "lam": 0.0, "learnable": True},
    "sparsehourglass q=1": {"mapping": "sparsehourglass", "q": 1.0},
}


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


def _run(name: str, config: Config) -> tuple[dict, np.ndarray]:
    torch.set_num_threads(1)  # the runs are spread over processes instead
    start = time.perf_counter()
    model = train(config)
    row = {"method": name, "steps": config.steps, "seed": config.seed, **evaluate(model, config)}
    row["learnt"] = float(model.attention.mapping.lam.detach().mean()) if config.learnable else None
    row["seconds"] = time.perf_counter() - start
    with torch.no_grad():
        weights = model(heatmap_examples(config))[1].mean(1).numpy()
    return row, weights


def run_attention(
    out_dir: Path,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    methods: Sequence[str] = tuple(METHODS),
    budgets: Sequence[int] = (400, Config.steps),
    n_jobs: int = 2,
    **overrides,
) -> list[dict]:
    """Train every method on every seed at every budget (steps).

    Writes attention.md/.csv and attention_heatmaps.png (first seed) to ``out_dir``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    base = replace(Config(), **overrides)
    tasks = [
        (name, replace(base, seed=seed, steps=steps, **METHODS[name]))
        for steps in budgets
        for name in methods
        for seed in seeds
    ]
    jobs = Parallel(n_jobs=n_jobs, return_as="generator")(delayed(_run)(*t) for t in tasks)
    results = list(tqdm(jobs, total=len(tasks), desc="attention (budget × method × seed)"))
    rows = [row for row, _ in results]
    write_csv(rows, out_dir / "attention.csv")
    (out_dir / "attention.md").write_text(attention_markdown(rows, base))
    shown = {(row["steps"], row["method"]): w for row, w in results if row["seed"] == seeds[0]}
    plot_heatmaps(shown, base, out_dir / "attention_heatmaps.png")
    return rows


def summary(rows: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and standard deviation over seeds of each metric, per method (in run order)."""
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for method in dict.fromkeys(row["method"] for row in rows):
        runs = [row for row in rows if row["method"] == method]
        table[method] = {
            key: (float(np.mean([r[key] for r in runs])), float(np.std([r[key] for r in runs])))
            for key in ("accuracy", "support", "items", "relevant_mass", "seconds")
        }
        if runs[0]["learnt"] is not None:
            table[method]["learnt"] = tuple(
                float(f([r["learnt"] for r in runs])) for f in (np.mean, np.std)
            )
    return table


def attention_markdown(rows: list[dict], config: Config) -> str:
    seeds = sorted({row["seed"] for row in rows})
    budgets = sorted({row["steps"] for row in rows})
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
        table = summary([row for row in rows if row["steps"] == steps])
        lines += [
            "",
            f"## {steps} training steps",
            "",
            "| attention | accuracy (%) | support size | items | mass on the relevant item |",
            "|---|---|---|---|---|",
        ]
        for method, m in table.items():
            learnt = (
                f" (λ learnt: {m['learnt'][0]:.2f} ± {m['learnt'][1]:.2f})" if "learnt" in m else ""
            )
            lines.append(
                f"| {method}{learnt} | {100 * m['accuracy'][0]:.2f} ± {100 * m['accuracy'][1]:.2f} "
                f"| {m['support'][0]:.2f} ± {m['support'][1]:.2f} | {m['items'][0]:.1f} "
                f"| {m['relevant_mass'][0]:.3f} ± {m['relevant_mass'][1]:.3f} |"
            )
        lines += ["", *findings(table)]
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
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """One training run; under torchrun, distributed. ``--save`` writes the trained parameters."""
    parser = argparse.ArgumentParser(
        prog="python -m sparsegen.experiments.attention", description=main.__doc__
    )
    parser.add_argument("--mapping", default="sparsemax")
    parser.add_argument("--lam", type=float)
    parser.add_argument("--q", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=Config.steps)
    parser.add_argument("--batch-size", type=int, default=Config.batch_size)
    parser.add_argument("--float64", action="store_true", help="train in double precision")
    parser.add_argument("--save", type=Path, help="write the trained state_dict here (rank 0)")
    args = parser.parse_args(argv)
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
