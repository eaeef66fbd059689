"""The losses' training step against torch's cross-entropy, same run (CPU).

One forward and backward of each loss (mean over the batch) ÷ that of
``torch.nn.functional.cross_entropy`` on the same float32 scores and class indices,
one thread. Class indices take each loss's own formula (a gather); a label matrix
(here the same one-hot) takes the dense formula, as class indices did before that
formula existed. Writes benchmarks/losses.md.

    python benchmarks/bench_losses.py [--repeats 15]
"""

import torch
import torch.nn.functional as F

from sparsegen import losses
from sparsegen.benchmark import (
    markdown_table,
    median_times,
    on_threads,
    shape_script,
    threads_restored,
)

LOSSES = {"sparsemax_loss": losses.sparsemax_loss, "softmax_loss": losses.softmax_loss}


def training_step(loss, z: torch.Tensor, target: torch.Tensor):
    def run():
        leaf = z.detach().requires_grad_()
        loss(leaf, target).backward()

    return on_threads(run, 1)


def shape_times(shape, repeats: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(shape, generator=generator)
    index = torch.randint(0, shape[1], shape[:1], generator=generator)
    one_hot = F.one_hot(index, shape[1]).float()
    calls = {"cross_entropy": training_step(F.cross_entropy, z, index)}
    for name, loss in LOSSES.items():
        calls[name, "class indices"] = training_step(loss, z, index)
        calls[name, "label matrix"] = training_step(loss, z, one_hot)
    with threads_restored():
        times = median_times(calls, repeats)
    return {key: t / times["cross_entropy"] for key, t in times.items()} | {
        "cross_entropy µs": times["cross_entropy"] * 1e6
    }


def rows(ratios: dict) -> list[str]:
    header = ("B×K", "cross_entropy fwd+bwd (µs)",
              *(f"{name}, {target}" for name in LOSSES
                for target in ("class indices", "label matrix")))  # fmt: skip
    cells = [
        (f"{b}×{k}", f"{r['cross_entropy µs']:.0f}",
         *(f"{r[name, target]:.2f}×" for name in LOSSES
           for target in ("class indices", "label matrix")))
        for (b, k), r in ratios.items()
    ]  # fmt: skip
    return [
        "Forward+backward time ÷ `F.cross_entropy`'s, same scores, same rounds; float32, "
        "one thread, mean over the batch. *Label matrix*: the same targets one-hot, the "
        "dense formula (with its label checks).",
        "",
        *markdown_table(header, cells),
    ]


def main() -> None:
    title = "The losses' training step against cross-entropy"
    shape_script(__doc__, __file__, title, shape_times, rows, repeats=15)


if __name__ == "__main__":
    main()
