"""A worked example of sparse attention in a Hugging Face model: a tiny GPT-2 language model.

A small GPT-2 (``transformers``' ``GPT2LMHeadModel``, 2 layers, 4 heads) is trained
from scratch on the English side of Multi30k (29,000 image captions, shipped) with
the same steps, seed and batches under four attentions: ``transformers``' own
``"sdpa"`` softmax, and through :mod:`sparsegen.integrations.transformers`
sparsemax, sparsegen-lin with a fixed λ and sparsegen-lin with λ learnt (per layer,
from the same λ). Each run reports the perplexity per SentencePiece piece on
Multi30k's validation and test (2016 Flickr) captions, the attention's support
(share of the causally visible keys with nonzero weight) on a fixed validation
batch at step 0 and at the end, and the median time of a training step.

Why a language model rather than NLI: perplexity is a smooth, per-token measure
that separates settings after a few hundred steps, where a from-scratch encoder's
3-way accuracy on the shipped NLI dev data stays near chance and its differences
within the seed noise; every caption position is a query over a growing causal
prefix, so the support share is measured over tens of thousands of attention rows.

The initial scale. ``transformers`` initialises weights with standard deviation
0.02, so the scores ``q·k/√d`` start within a few hundredths of each other, and
sparsemax of nearly equal scores keeps (nearly) every key of a short row: sparsemax
attention starts dense and becomes sparse as far as training spreads the scores.
sparsegen-lin is sparsemax of the scores times ``1/(1-λ)``: a fixed λ (0.9: ×10)
is a scale multiplier, sparse from the first step, and a learnt λ lets training
move that temperature.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsegen._extras import needs_extra
from sparsegen.datasets import load_multi30k
from sparsegen.experiments import tables
from sparsegen.experiments.runner import (
    RunResult,
    SettingSummary,
    check_plan,
    mean_sd,
    run_all,
    summarise_runs,
)
from sparsegen.experiments.settings import Setting
from sparsegen.experiments.text import encode
from sparsegen.integrations.transformers import MAPPING_ATTRIBUTE, attention_modules, sparsify
from sparsegen.models import resolve_device
from sparsegen.models.training import decay_groups
from sparsegen.text import BOS, EOS, PAD, SubwordTokenizer, bucket_batches, pad_sequences

__all__ = ["QUICK", "HFConfig", "HFRun", "Prepared", "grid", "prepare", "run_hf", "train_one"]

# The label cross-entropy skips (transformers' and torch's convention): padding.
IGNORE = -100


@dataclass(frozen=True)
class HFConfig:
    """Model, data and training sizes (the defaults are the committed full run's).

    Each field's ``help`` is its ``sparsegen hf`` flag's (``add_config_flags``).
    """

    vocab_size: int = field(default=2000, metadata={"help": "SentencePiece pieces"})
    hidden_size: int = field(default=128, metadata={"help": "GPT-2's n_embd"})
    layers: int = field(default=2, metadata={"help": "transformer blocks"})
    heads: int = field(default=4, metadata={"help": "attention heads (divide --hidden-size)"})
    dropout: float = field(default=0.1, metadata={"help": "GPT-2's dropouts (attention too)"})
    max_tokens: int = field(
        default=40, metadata={"help": "cut longer captions to this many pieces, with a warning"}
    )
    batch_size: int = field(default=64, metadata={"help": "captions per step"})
    steps: int = field(default=1200, metadata={"help": "training steps, the same for every run"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW's peak learning rate"})
    warmup: int = field(default=50, metadata={"help": "steps of linear warm-up"})
    eval_every: int = field(
        default=200, metadata={"help": "validation perplexity and support every N steps"}
    )
    lam: float = field(
        default=0.9,
        metadata={"help": "sparsegen-lin's fixed λ (scores × 1/(1-λ)) and the learnt λ's start"},
    )
    probe_size: int = field(
        default=128, metadata={"help": "validation captions the support is measured on"}
    )
    train_limit: int | None = field(
        default=None, metadata={"help": "train on the first N captions only"}
    )
    eval_limit: int | None = field(
        default=None, metadata={"help": "score the first N validation and test captions only"}
    )


QUICK = HFConfig(vocab_size=1000, hidden_size=64, batch_size=32, steps=200, eval_every=50,
                 train_limit=8000, eval_limit=400, probe_size=64)  # fmt: skip


def grid(lam: float = 0.9) -> tuple[Setting, ...]:
    """sdpa softmax, sparsemax, sparsegen-lin at ``lam``, and with λ learnt from ``lam``."""
    return (
        Setting("softmax", "softmax", label="softmax (sdpa)"),
        Setting("sparsemax", "sparsemax"),
        Setting("sparsegen-lin", "sparsegen_lin", lam=lam),
        Setting("sparsegen-lin", "sparsegen_lin", lam=lam, learnable=True),
    )


@dataclass
class HFRun(RunResult):
    """One run; its columns are the perplexities, the support at step 0 and at the end,
    the median step time and the curves (validation perplexity and support per
    evaluation)."""

    def to_row(self) -> dict:
        return {**self.csv_row(), **{f"curve_{k}": v for k, v in self.curves.items()}}

    def csv_row(self) -> dict:
        """The run's hf_runs.csv row: no curves."""
        return {
            "setting": self.setting,
            "family": self.family,
            "seed": self.seed,
            "valid_perplexity": self.valid,
            "test_perplexity": self.tests["test"],
            **self.stats,
            "learnt_lam": self.learnt_lam,
            "steps": self.epochs,
            "seconds": self.seconds,
        }

    @classmethod
    def from_row(cls, row: dict) -> HFRun:
        stats = ("support_start", "support_end", "keys_end", "step_ms", "parameters")
        return cls(
            setting=row["setting"],
            family=row["family"],
            seed=row["seed"],
            valid=row["valid_perplexity"],
            tests={"test": row["test_perplexity"]},
            stats={k: row[k] for k in stats},
            seconds=row["seconds"],
            epochs=row["steps"],
            learnt_lam=row.get("learnt_lam"),
            curves={k.removeprefix("curve_"): v for k, v in row.items() if k.startswith("curve_")},
        )


@dataclass
class Prepared:
    """The tokenizer (as bytes: it crosses processes) and the captions as piece ids."""

    tokenizer: bytes
    train: list[list[int]]
    valid: list[list[int]]
    test: list[list[int]]
    description: str


def prepare(config: HFConfig, data_home: str | Path | None = None) -> Prepared:
    """Multi30k's English captions: a tokenizer trained on the training ones, all encoded."""
    train, valid, test = (
        load_multi30k(split, source="fr", target="en", data_home=data_home).target
        for split in ("train", "val", "test_2016_flickr")
    )
    train = train[: config.train_limit]
    valid, test = valid[: config.eval_limit], test[: config.eval_limit]
    tokenizer = SubwordTokenizer.train(train, config.vocab_size)
    description = (
        f"Multi30k English captions: {len(train):,} training, {len(valid):,} validation and "
        f"{len(test):,} test (2016 Flickr) captions"
    )
    return Prepared(
        tokenizer.to_bytes(),
        *(
            encode(tokenizer, captions, config.max_tokens, what)
            for captions, what in ((train, "training"), (valid, "validation"), (test, "test"))
        ),
        description,
    )


def _batch(
    captions: Sequence[list[int]], index: Sequence[int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids ``BOS caption EOS`` padded, the padding mask (1 = a real token) and the labels
    (the ids, padding ignored; the model shifts them itself)."""
    ids, lengths = pad_sequences([captions[i] for i in index], bos=True, eos=True)
    mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
    labels = ids.masked_fill(mask == 0, IGNORE)
    return ids.to(device), mask.to(device), labels.to(device)


def _model(setting: Setting, config: HFConfig, vocab: int) -> nn.Module:
    """A randomly initialised GPT-2 on ``transformers``' sdpa, switched to the setting's
    sparsegen attention unless it is the softmax baseline."""
    with needs_extra("transformers", __name__):
        from transformers import AutoModelForCausalLM, GPT2Config

    gpt2 = GPT2Config(
        vocab_size=vocab,
        n_positions=config.max_tokens + 2,  # BOS and EOS around the longest caption
        n_embd=config.hidden_size,
        n_layer=config.layers,
        n_head=config.heads,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    model = AutoModelForCausalLM.from_config(gpt2, attn_implementation="sdpa")
    if setting.mapping != "softmax":
        sparsify(model, setting.mapping, lam=setting.lam, learnable=setting.learnable)
    return model


def _nll(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """The summed negative log-likelihood of each next piece, and how many were predicted.

    Computed here rather than by ``labels=``: GPT-2's class name tells ``transformers``
    no loss type, and it warns before falling back to this same loss."""
    logits = model(ids, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    nll = nn.functional.cross_entropy(
        logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE, reduction="sum"
    )
    return nll, int((target != IGNORE).sum())


@torch.no_grad()
def perplexity(model: nn.Module, captions: Sequence[list[int]], device: torch.device) -> float:
    """exp of the mean negative log-likelihood per predicted piece (EOS included)."""
    model.eval()
    total, count = 0.0, 0
    for index in bucket_batches([len(c) for c in captions], 128, shuffle=False):
        nll, n = _nll(model, *_batch(captions, index, device))
        total, count = total + float(nll), count + n
    return math.exp(total / count)


@torch.no_grad()
def attention_support(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, sdpa: bool
) -> dict[str, float]:
    """The attention's mean support over a batch: the share of the visible keys (causal,
    not padding) with nonzero weight, and their number, per query row of a real token
    that sees at least two keys (the first sees only itself: no choice), averaged over
    the rows, heads and layers. The model is in evaluation mode (dropout on the weights
    would add zeros); ``sdpa`` returns no weights, so it is measured on ``"eager"``, the
    same softmax written out."""
    model.eval()
    if sdpa:
        model.set_attn_implementation("eager")
    try:
        attentions = model(ids, attention_mask=mask, output_attentions=True).attentions
    finally:
        if sdpa:
            model.set_attn_implementation("sdpa")
    length = ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
    visible = causal & mask.bool()[:, None, :]  # (batch, query, key)
    keys = visible.sum(-1)
    rows = mask.bool() & (keys >= 2)
    kept = torch.stack([((w > 0) & visible[:, None]).sum(-1) for w in attentions])
    kept = kept.double()  # (layer, batch, head, query)
    chosen = rows[None, :, None].expand_as(kept)
    share = (kept / keys[None, :, None].clamp(min=1))[chosen]
    return {"share": float(share.mean()), "keys": float(kept[chosen].mean())}


def _learnt_lam(model: nn.Module) -> list[float] | None:
    """Each layer's learnt λ (its mean over heads), or None when λ is fixed."""
    mappings = [getattr(m, MAPPING_ATTRIBUTE, None) for m in attention_modules(model)]
    if not mappings or any(m is None for m in mappings):
        return None
    return [float(m.lam.detach().mean()) for m in mappings]


def _batches(captions: Sequence[list[int]], batch_size: int, seed: int) -> Iterator[Any]:
    """Length-bucketed training batches, epoch after epoch, each epoch reshuffled."""
    lengths = [len(c) for c in captions]
    epoch = 0
    while True:
        yield from bucket_batches(lengths, batch_size, seed=seed * 1000 + epoch)
        epoch += 1


def _schedule(config: HFConfig) -> Callable[[int], float]:
    """Linear warm-up to the peak rate, then linear decay to a tenth of it at the last step."""

    def factor(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        done = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 1.0 - 0.9 * min(done, 1.0)

    return factor


class _Evaluator:
    """Validation perplexity and attention support at step 0, every ``eval_every`` steps
    and at the end, into curves; the probe batch is the first validation captions."""

    def __init__(
        self, setting: Setting, prepared: Prepared, config: HFConfig, device: torch.device
    ) -> None:
        self.prepared, self.device = prepared, device
        self.sdpa = setting.mapping == "softmax"
        probe = range(min(config.probe_size, len(prepared.valid)))
        self.ids, self.mask, _ = _batch(prepared.valid, probe, device)
        self.curves: dict[str, list[float]] = {"step": [], "valid": [], "support": []}
        self.last: dict[str, float] = {}  # the latest support measurement

    def __call__(self, model: nn.Module, step: int) -> None:
        support = attention_support(model, self.ids, self.mask, self.sdpa)
        self.curves["step"].append(step)
        self.curves["valid"].append(perplexity(model, self.prepared.valid, self.device))
        self.curves["support"].append(support["share"])
        self.last = support
        model.train()


def _train(
    model: nn.Module,
    prepared: Prepared,
    config: HFConfig,
    seed: int,
    device: torch.device,
    evaluate: _Evaluator,
) -> list[float]:
    """``config.steps`` AdamW steps; returns each step's seconds (evaluations excluded)."""
    optimizer = torch.optim.AdamW(decay_groups(model), lr=config.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    batches = _batches(prepared.train, config.batch_size, seed)
    seconds = []
    evaluate(model, 0)
    for step in range(1, config.steps + 1):
        ids, mask, labels = _batch(prepared.train, next(batches), device)
        start = time.perf_counter()
        nll, count = _nll(model, ids, mask, labels)
        loss = nll / count
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        seconds.append(time.perf_counter() - start)
        if step % config.eval_every == 0 or step == config.steps:
            evaluate(model, step)
    return seconds


def train_one(
    setting: Setting,
    seed: int,
    prepared: Prepared,
    config: HFConfig,
    device: str | None = None,
    *,
    checkpoint: Path | None = None,
    progress: bool = False,
) -> HFRun:
    """Train one model from scratch and measure it.

    ``checkpoint`` and ``progress`` are the runner's; a run lasts minutes, so only
    finished runs are kept (by the runner), and nothing is resumed mid-run.
    """
    device = resolve_device(device)
    torch.manual_seed(seed)
    model = _model(setting, config, len(SubwordTokenizer.from_bytes(prepared.tokenizer)))
    model.to(device).train()
    evaluate = _Evaluator(setting, prepared, config, device)
    start = time.perf_counter()
    seconds = _train(model, prepared, config, seed, device, evaluate)
    learnt = _learnt_lam(model)
    return HFRun(
        setting=setting.name,
        family=setting.family,
        seed=seed,
        valid=evaluate.curves["valid"][-1],
        tests={"test": perplexity(model, prepared.test, device)},
        stats={
            "support_start": evaluate.curves["support"][0],
            "support_end": evaluate.curves["support"][-1],
            "keys_end": evaluate.last["keys"],
            "step_ms": 1000 * statistics.median(seconds),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        seconds=time.perf_counter() - start,
        epochs=config.steps,
        learnt_lam=None if learnt is None else statistics.fmean(learnt),
        curves=evaluate.curves,
    )


def _setting_row(summary: SettingSummary) -> dict:
    """A setting's hf.csv row: means over seeds (and the perplexities' sd)."""
    valid, valid_sd = mean_sd([r.valid for r in summary.runs])
    test, test_sd, _ = summary.test("test")
    return {
        "setting": summary.setting.name,
        "family": summary.setting.family,
        "seeds": summary.seeds,
        "valid_perplexity": valid,
        "valid_sd": valid_sd,
        "test_perplexity": test,
        "test_sd": test_sd,
        **summary.stats,
        "learnt_lam": summary.learnt_lam,
        "seconds": sum(r.seconds for r in summary.runs),
    }


def run_hf(
    out: Path,
    *,
    quick: bool = False,
    seeds: Sequence[int] = (0,),
    config: HFConfig | None = None,
    data_home: str | Path | None = None,
    n_jobs: int = 2,
    device: str | None = None,
    prepared: Prepared | None = None,
) -> list[dict]:
    """Train every setting on every seed; write hf.md, hf.csv (per setting) and hf_runs.csv.

    Runs already finished in ``out/runs/hf`` (``hf-quick``) are read back, not retrained.
    """
    check_plan("run_hf", seeds=seeds)
    out.mkdir(parents=True, exist_ok=True)
    config = config or (QUICK if quick else HFConfig())
    settings = grid(config.lam)
    prepared = prepared or prepare(config, data_home=data_home)
    tasks = [
        (f"{s.slug}-seed{seed}", (s, seed, prepared, config, device))
        for s in settings
        for seed in seeds
    ]
    folder = out / "runs" / ("hf-quick" if quick else "hf")
    found = run_all(train_one, tasks, folder, n_jobs=n_jobs, description="hf (setting × seed)")
    runs = [HFRun.from_row(row) for row in found]
    per_setting = [_setting_row(s) for s in summarise_runs(runs, settings)]
    tables.write_csv(per_setting, out / "hf.csv")
    tables.write_csv([r.csv_row() for r in runs], out / "hf_runs.csv")
    (out / "hf.md").write_text(markdown(per_setting, runs, prepared, config, seeds, quick, n_jobs))
    return [r.to_row() for r in runs]


def markdown(
    per_setting: list[dict],
    runs: Sequence[HFRun],
    prepared: Prepared,
    config: HFConfig,
    seeds: Sequence[int],
    quick: bool,
    n_jobs: int,
) -> str:
    """The report: setup, the table, support over training, findings, and the caveats."""
    label = "quick run" if quick else "full run"
    vocab = len(SubwordTokenizer.from_bytes(prepared.tokenizer))
    lines = [
        f"# Sparse attention in a Hugging Face model: a tiny GPT-2 on Multi30k ({label})",
        "",
        f"Data: {prepared.description}; a SentencePiece vocabulary of {vocab} pieces trained "
        "on the training captions. Perplexity is per piece (EOS included), on the final model.",
        "",
        f"Model: `transformers`' GPT-2 from a random initialisation ({config.layers} layers, "
        f"{config.heads} heads, hidden size {config.hidden_size}, dropout {config.dropout}), "
        f"{config.steps} AdamW steps of {config.batch_size} captions (peak lr {config.lr}, "
        f"{config.warmup} warm-up steps, linear decay to a tenth), the same batches for every "
        f"setting; seeds {', '.join(map(str, seeds))}; {n_jobs} run(s) at a time. Support = "
        "share of the causally visible keys with nonzero weight, per query row seeing at least "
        f"two keys, on the first {min(config.probe_size, len(prepared.valid))} validation "
        "captions (softmax's measured on `eager`, since sdpa returns no weights).",
        "",
        *_table(per_setting),
        "",
        "## Support and validation perplexity during training (first seed)",
        "",
        *_curves_table(runs),
        "",
        "## Findings",
        "",
        *findings(per_setting, config.lam),
        "",
        "## What differs from a real pre-training setup",
        "",
        *caveats(min(row["parameters"] for row in per_setting)),
    ]
    return "\n".join(lines) + "\n"


def caveats(parameters: float) -> list[str]:
    """What a reader of the numbers should not take from them."""
    return [
        f"- Scale: a {parameters / 1e6:.2f}M-parameter model (embeddings included) trained for "
        "minutes on short captions, not a model of hundreds of millions of parameters "
        "pre-trained on billions of tokens; the sequences are ~15–40 pieces, so a query sees at "
        "most a few dozen keys and the cost of the attention itself is a small part of a step.",
        *CAVEATS,
    ]


CAVEATS = (
    "- Softmax runs on `transformers`' sdpa kernel, the sparse settings on sparsegen's "
    "attention function (scores and weights materialised). The ms / step column is not a "
    "speed comparison: runs go two at a time on a shared CPU, each pair at another time under "
    "another load; benchmarks/hf.md compares the attentions in one run.",
    "- One fixed number of steps and the final model (no early stopping, no tuning of the "
    "learning rate per setting); the λ of the scaled setting is one value, not a search.",
    "- Without ± in the table the numbers are single runs (one seed): a gap of a few tenths "
    "of perplexity may be within what another seed changes; `--seeds 3` measures the spread.",
    "- A pre-trained softmax model switched to sparsemax meets the same scale question at "
    "another scale: its scores were trained for softmax; see docs/huggingface.md.",
)


def _table(per_setting: list[dict]) -> list[str]:
    header = ("setting", "valid ppl", "test ppl", "support at step 0", "support at end",
              "keys kept at end", "learnt λ", "ms / step")  # fmt: skip
    rows = [
        (
            row["setting"],
            _with_sd(row["valid_perplexity"], row["valid_sd"], row["seeds"]),
            _with_sd(row["test_perplexity"], row["test_sd"], row["seeds"]),
            tables.percent(row["support_start"]),
            tables.percent(row["support_end"]),
            f"{row['keys_end']:.2f}",
            "—" if row["learnt_lam"] is None else f"{row['learnt_lam']:.3f}",
            f"{row['step_ms']:.0f}",
        )
        for row in per_setting
    ]
    return tables.markdown_table(header, rows)


def _with_sd(mean: float, sd: float, seeds: int) -> str:
    return f"{mean:.2f}" if seeds < 2 else f"{mean:.2f} ± {sd:.2f}"


def _curves_table(runs: Sequence[HFRun]) -> list[str]:
    """Per setting (first seed): the support share, then the validation perplexity, per step."""
    first: dict[str, HFRun] = {}
    for run in sorted(runs, key=lambda r: r.seed):
        first.setdefault(run.setting, run)
    if not first:
        return []
    steps = next(iter(first.values())).curves["step"]
    header = ("setting", *(f"step {int(s)}" for s in steps))
    rows = [
        (name, *(f"{tables.percent(s)} / {v:.1f}" for s, v in
                 zip(run.curves["support"], run.curves["valid"], strict=True)))
        for name, run in first.items()
    ]  # fmt: skip
    return [*tables.markdown_table(header, rows), "", "Each cell: support share / validation "
            "perplexity."]  # fmt: skip


def findings(per_setting: list[dict], lam: float) -> list[str]:
    """The comparisons the table supports, each with its numbers (``lam``: the learnt λ's
    start)."""
    soft = next((r for r in per_setting if r["family"] == "softmax"), None)
    out = []
    for row in per_setting:
        if row is soft:
            continue
        line = (
            f"- {row['setting']}: support {tables.percent(row['support_start'])} of the visible "
            f"keys at step 0, {tables.percent(row['support_end'])} at the end "
            f"({row['keys_end']:.2f} keys per row)"
        )
        if soft is not None:
            gap = row["test_perplexity"] - soft["test_perplexity"]
            line += (
                f"; test perplexity {gap:+.2f} vs softmax ({row['test_perplexity']:.2f} vs "
                f"{soft['test_perplexity']:.2f})"
            )
        if row["learnt_lam"] is not None:
            learnt = row["learnt_lam"]
            line += (
                f"; λ went from {lam:g} to {learnt:.3f} (scores × {1 / (1 - lam):.1f} → "
                f"× {1 / (1 - learnt):.1f}): training {'lowered' if learnt < lam else 'raised'} "
                "the scale"
            )
        out.append(line + ".")
    return out + _scale_finding(per_setting)


def _scale_finding(per_setting: list[dict]) -> list[str]:
    """The initial-scale line: sparsemax's support at step 0 beside the scaled setting's."""
    sparsemax = next((r for r in per_setting if r["family"] == "sparsemax"), None)
    scaled = next((r for r in per_setting if r["family"] == "sparsegen-lin"), None)
    if sparsemax is None or scaled is None:
        return []
    dense = "nearly dense" if sparsemax["support_start"] > 0.9 else "already sparse"
    return [
        f"- The initial scale: at `transformers`' initialisation (std 0.02) sparsemax "
        f"attention is {dense} ({tables.percent(sparsemax['support_start'])} of the visible "
        f"keys), since the scores start within a few hundredths of each other; "
        f"{scaled['setting']}'s scale keeps {tables.percent(scaled['support_start'])} from the "
        f"first step, and ends at {tables.percent(scaled['support_end'])} where sparsemax ends "
        f"at {tables.percent(sparsemax['support_end'])}."
    ]
