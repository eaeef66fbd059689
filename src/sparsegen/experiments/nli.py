"""Martins & Astudillo's (2016, §4.3) SNLI experiment, at the scale the shipped data allows.

Rocktäschel et al.'s conditional-encoding LSTMs (:class:`sparsegen.models.NLIClassifier`)
with no attention, softmax, sparsemax, sparsegen-lin (λ grid and λ learnt) and
sparsehourglass (q grid) attention of the hypothesis over the premise.

Data. SNLI's 550k training pairs are not shipped (not obtainable offline), so
by default the models train on SNLI dev + MultiNLI dev matched + mismatched
(29,489 labelled pairs), hold out a tenth of the premises (every pair of a
held-out premise, and the four pairs of the paper's slides) as the validation
slice, and are tested on the full SNLI test set (9,824 pairs). ``--train PATH``
takes SNLI's own training file instead (``.jsonl``/``.txt``/``.csv``); SNLI dev
is then the validation set: the paper's setting.

Selection. Each run keeps its best epoch by validation accuracy; λ and q are
chosen by the mean validation accuracy over seeds. Test accuracy is reported as
mean ± sd over seeds, with the attention's support: premise tokens (SentencePiece
pieces) with nonzero weight, absolute and as a fraction of the premise's length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparsegen.datasets import NLI_LABELS, NLIData, load_nli, read_nli, split_by_group
from sparsegen.experiments import runner, tables
from sparsegen.experiments.runner import RunResult, SettingSummary, run_all, summarise_grid
from sparsegen.experiments.settings import Setting
from sparsegen.experiments.text import encode
from sparsegen.models import (
    NLIClassifier,
    TrainingConfig,
    fit,
    glove_embeddings,
    glove_size,
    resolve_device,
)
from sparsegen.text import SubwordTokenizer, bucket_batches, pad_sequences

__all__ = [
    "FULL_GRID",
    "QUICK_GRID",
    "NLIConfig",
    "NLIRun",
    "Setting",
    "prepare",
    "run_nli",
    "train_one",
]

# Martins & Astudillo (2016), Table 4: SNLI test accuracy (%), trained on SNLI's 550k pairs.
PAPER = {"NoAttention": 81.84, "softmax": 82.86, "sparsemax": 82.52}
# The premise/hypothesis pairs on the paper's slides (all four are in SNLI dev).
SLIDE_EXAMPLES = (
    "4876043682.jpg#2r1e",  # a boy rides on a camel / a boy is riding an animal
    "3226796100.jpg#1r1c",  # a girl wearing a pink coat / ... a blue jacket
    "509200598.jpg#1r1c",  # two black dogs frolicking / two dogs swim in the lake
    "2093272744.jpg#1r1c",  # a man laughs ... / two mimes sit in complete silence
)


FULL_GRID = (
    Setting("NoAttention", None),
    Setting("softmax", "softmax"),
    Setting("sparsemax", "sparsemax"),
    *(Setting("sparsegen-lin", "sparsegen_lin", lam=v) for v in (0.25, 0.5, 0.75)),
    Setting("sparsegen-lin", "sparsegen_lin", lam=0.0, learnable=True),
    *(Setting("sparsehourglass", "sparsehourglass", q=v) for v in (0.5, 1.0)),
)
QUICK_GRID = (
    Setting("NoAttention", None),
    Setting("softmax", "softmax"),
    Setting("sparsemax", "sparsemax"),
    Setting("sparsegen-lin", "sparsegen_lin", lam=0.5),
)


@dataclass(frozen=True)
class NLIConfig:
    """Model and training sizes (the defaults are the committed full run's).

    Each field's ``help`` is its ``sparsegen nli`` flag's (``add_config_flags``).
    """

    vocab_size: int = field(default=8000, metadata={"help": "SentencePiece pieces"})
    embed_dim: int = field(default=100, metadata={"help": "embedding size"})
    hidden_dim: int = field(default=100, metadata={"help": "LSTM units"})
    dropout: float = field(default=0.2, metadata={"help": "dropout rate"})
    batch_size: int = field(default=64, metadata={"help": "sentence pairs per batch"})
    max_tokens: int = field(
        default=80, metadata={"help": "cut longer sentences to this many pieces, with a warning"}
    )
    epochs: int = field(default=6, metadata={"help": "at most this many epochs per run"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW's learning rate"})
    patience: int = field(
        default=2,
        metadata={"help": "stop after this many epochs without a better validation accuracy"},
    )
    train_limit: int | None = field(
        default=None, metadata={"help": "train on N of the training pairs, drawn at random"}
    )
    glove: str | None = field(
        default=None, metadata={"help": "initialise embeddings from a GloVe file"}
    )


QUICK = NLIConfig(vocab_size=4000, epochs=4, train_limit=8000)


@dataclass
class NLIRun(RunResult):
    """One NLI run; its files' columns are ``valid_accuracy``, ``test_accuracy``, ``curve``
    (validation accuracy per epoch) and ``example_weights`` (the slides' pairs)."""

    def to_row(self) -> dict:
        return {
            **self.csv_row(),
            "curve": self.curves.get("valid"),
            "example_weights": self.extra.get("example_weights"),
        }

    def csv_row(self) -> dict:
        """The run's nli_runs.csv row: no curve, no weights."""
        return {
            "setting": self.setting,
            "family": self.family,
            "seed": self.seed,
            "valid_accuracy": self.valid,
            "test_accuracy": self.tests["test"],
            **self.stats,
            "best_epoch": self.best_epoch,
            "epochs": self.epochs,
            "seconds": self.seconds,
            "learnt_lam": self.learnt_lam,
        }

    @classmethod
    def from_row(cls, row: dict) -> NLIRun:
        return cls(
            setting=row["setting"],
            family=row.get("family", ""),
            seed=row["seed"],
            valid=row["valid_accuracy"],
            tests={"test": row["test_accuracy"]},
            stats={"support": row["support"], "support_share": row["support_share"]},
            seconds=row["seconds"],
            best_epoch=row.get("best_epoch", 0),
            epochs=row.get("epochs", 0),
            learnt_lam=row.get("learnt_lam"),
            curves={"valid": row["curve"]} if "curve" in row else {},
            extra={"example_weights": row.get("example_weights")},
        )


@dataclass
class Split:
    premises: list[list[int]]
    hypotheses: list[list[int]]
    labels: np.ndarray
    premise_text: list[str]
    hypothesis_text: list[str]

    def tensors(self, index: np.ndarray, device: torch.device):
        p, p_len = pad_sequences([self.premises[i] for i in index])
        h, h_len = pad_sequences([self.hypotheses[i] for i in index])
        y = torch.as_tensor(self.labels[index])
        return p.to(device), p_len.to(device), h.to(device), h_len.to(device), y.to(device)


@dataclass
class Prepared:
    tokenizer: bytes
    train: Split
    valid: Split
    test: Split
    examples: Split
    description: str
    embeddings: torch.Tensor | None = None  # from config.glove, one row per piece
    pooled: bool = True  # trained on the shipped dev sets, not on a training file


def _split(tokenizer: SubwordTokenizer, data: NLIData, max_tokens: int, what: str) -> Split:
    return Split(
        encode(tokenizer, data.premises, max_tokens, f"{what} premise"),
        encode(tokenizer, data.hypotheses, max_tokens, f"{what} hypothesis"),
        data.labels,
        data.premises,
        data.hypotheses,
    )


def _snli(data_home: str | Path | None) -> tuple[NLIData, NLIData, NLIData]:
    """SNLI's dev and test sets, and the dev pairs the report's figure shows."""
    snli_dev = load_nli("snli", "dev", data_home=data_home)
    missing = [pair for pair in SLIDE_EXAMPLES if pair not in snli_dev.pair_ids]
    if missing:
        raise ValueError(
            f"SNLI's dev set lacks the pairs the report's figure shows (pairID "
            f"{', '.join(missing)}): a whole copy of snli_1.0_dev is needed"
        )
    examples = snli_dev.subset([snli_dev.pair_ids.index(i) for i in SLIDE_EXAMPLES])
    return snli_dev, load_nli("snli", "test", data_home=data_home), examples


def _multinli(data_home: str | Path | None) -> list[NLIData]:
    return [load_nli("multinli", split, data_home=data_home)
            for split in ("dev_matched", "dev_mismatched")]  # fmt: skip


def check_sets(data_home: str | Path | None = None) -> None:
    """Read the sets a run without ``train_path`` takes, so that a bad copy stops its
    caller with the file and line before anything trains."""
    _snli(data_home)
    _multinli(data_home)


def prepare(
    config: NLIConfig,
    *,
    train_path: str | Path | None = None,
    data_home: str | Path | None = None,
    seed: int = 0,
) -> Prepared:
    """Tokenised training, validation, test and slide-example pairs (see the module's doc)."""
    snli_dev, test, examples = _snli(data_home)
    if train_path is None:
        pool = NLIData.concatenate([snli_dev, *_multinli(data_home)])
        train_idx, valid_idx = split_by_group(pool.premises, (0.9, 0.1), seed=seed)
        held = set(examples.premises)  # the slides' premises stay out of training
        moved = [i for i in train_idx if pool.premises[i] in held]
        train_idx = np.setdiff1d(train_idx, moved)
        valid_idx = np.union1d(valid_idx, moved)
        train, valid = pool.subset(train_idx), pool.subset(valid_idx)
        description = (
            f"trained on SNLI dev + MultiNLI dev matched/mismatched less a validation slice "
            f"of a tenth of their premises ({len(train):,} / {len(valid):,} pairs)"
        )
    else:
        train, valid = read_nli(train_path), snli_dev
        description = f"trained on {train_path} ({len(train):,} pairs), validated on SNLI dev"
    if config.train_limit is not None and config.train_limit < len(train):
        # drawn, not the first ones: the pool is in file order, SNLI's pairs first
        kept = np.random.default_rng(seed).choice(len(train), config.train_limit, replace=False)
        train = train.subset(np.sort(kept))
        description += f"; {len(train):,} of the training pairs, drawn at random"
    tokenizer = SubwordTokenizer.train(train.premises + train.hypotheses, config.vocab_size)
    return Prepared(
        tokenizer.to_bytes(),
        _split(tokenizer, train, config.max_tokens, "training"),
        _split(tokenizer, valid, config.max_tokens, "validation"),
        _split(tokenizer, test, config.max_tokens, "test"),
        _split(tokenizer, examples, config.max_tokens, "example"),
        description,
        _glove(config.glove, tokenizer, config.embed_dim) if config.glove else None,
        pooled=train_path is None,
    )


def _glove(path: str, tokenizer: SubwordTokenizer, dim: int) -> torch.Tensor:
    """The GloVe rows of the tokenizer's pieces, read once here rather than in every run, so
    that a malformed file stops the experiment before training; ``ValueError`` names it."""
    pieces = [tokenizer.id_to_piece(i) for i in range(len(tokenizer))]
    try:
        size = glove_size(path)
        if size is not None and size != dim:  # (GloVe comes in 50, 100, 200 and 300 values)
            raise ValueError(
                f"{path}: vectors of {size} values, not {dim}; pass --embed-dim {size}"
            )
        matrix, found = glove_embeddings(path, pieces, dim)
        if not found:  # random vectors all: not what a user who passed a file asked for
            raise ValueError(f"{path}: none of the {len(pieces)} pieces has a vector there")
        return matrix
    except ValueError as error:
        if str(error).startswith(str(path)):  # already names file and line
            raise
        raise ValueError(f"{path}: not GloVe text, 'word v1 … v{dim}' per line ({error})") from None


def _evaluate(model: NLIClassifier, split: Split, device: torch.device) -> dict[str, float]:
    """Accuracy, mean support (tokens with nonzero weight) and its mean share of the premise."""
    correct, support, share = 0, 0.0, 0.0
    lengths = [len(p) + len(h) for p, h in zip(split.premises, split.hypotheses, strict=True)]
    for index in bucket_batches(lengths, 256, shuffle=False):
        p, p_len, h, h_len, y = split.tensors(index, device)
        logits, weights = model(p, p_len, h, h_len)
        correct += int((logits.argmax(1) == y).sum())
        if weights is not None:
            nonzero = (weights > 0).sum(1).double()
            support += float(nonzero.sum())
            share += float((nonzero / p_len).sum())
    n = len(split.labels)
    return {"accuracy": 100 * correct / n, "support": support / n, "support_share": share / n}


def _model(
    setting: Setting,
    config: NLIConfig,
    tokenizer: SubwordTokenizer,
    embeddings: torch.Tensor | None,
) -> NLIClassifier:
    model = NLIClassifier(
        len(tokenizer),
        embed_dim=config.embed_dim,
        hidden_dim=config.hidden_dim,
        attention=setting.mapping,
        dropout=config.dropout,
        **setting.mapping_options(),
    )
    if embeddings is not None:
        model.embedding.weight.data.copy_(embeddings)
    return model


def train_one(
    setting: Setting,
    seed: int,
    prepared: Prepared,
    config: NLIConfig,
    device: str | None = None,
    *,
    checkpoint: Path | None = None,
    progress: bool = False,
) -> NLIRun:
    """Train one model (resuming from ``checkpoint``), return its metrics and example weights."""
    device = resolve_device(device)
    tokenizer = SubwordTokenizer.from_bytes(prepared.tokenizer)
    torch.manual_seed(seed)
    model = _model(setting, config, tokenizer, prepared.embeddings).to(device)
    train = prepared.train
    lengths = [len(p) + len(h) for p, h in zip(train.premises, train.hypotheses, strict=True)]

    def loss(module: nn.Module, index: np.ndarray) -> tuple[torch.Tensor, int]:
        p, p_len, h, h_len, y = train.tensors(index, device)
        logits = module(p, p_len, h, h_len).logits
        return nn.functional.cross_entropy(logits, y, reduction="sum"), len(index)

    history = fit(
        model,
        lambda epoch: bucket_batches(lengths, config.batch_size, seed=seed * 1000 + epoch),
        loss,
        lambda m: _evaluate(m, prepared.valid, device)["accuracy"],
        TrainingConfig(epochs=config.epochs, lr=config.lr, patience=config.patience, seed=seed),
        checkpoint=checkpoint,
        progress=progress,
        description=setting.name,
    )
    test = _evaluate(model, prepared.test, device)
    ex = prepared.examples
    p, p_len, h, h_len, _ = ex.tensors(np.arange(len(ex.labels)), device)
    with torch.no_grad():
        weights = model(p, p_len, h, h_len).weights
    learnt = getattr(getattr(model.attention, "mapping", None), "lam", None)
    return NLIRun(
        setting=setting.name,
        family=setting.family,
        seed=seed,
        valid=history.best_score,
        tests={"test": test["accuracy"]},
        stats={"support": test["support"], "support_share": test["support_share"]},
        seconds=history.seconds,
        best_epoch=history.best_epoch,
        epochs=len(history.epochs),
        learnt_lam=float(learnt.detach().mean()) if setting.learnable else None,
        curves={"valid": [row["valid"] for row in history.epochs]},
        extra={"example_weights": None if weights is None else weights.cpu().tolist()},
    )


def _setting_row(summary: SettingSummary) -> dict:
    """A setting's nli_grid.csv row."""
    test, test_sd, _ = summary.test("test")
    return {
        "setting": summary.setting.name,
        "family": summary.setting.family,
        "seeds": summary.seeds,
        "valid_accuracy": summary.valid,
        "test_accuracy": test,
        "test_sd": test_sd,
        **summary.stats,
        "learnt_lam": summary.learnt_lam,
        "seconds": sum(r.seconds for r in summary.runs),
    }


def summarise(
    rows: Sequence[NLIRun | dict], grid: Sequence[Setting]
) -> tuple[list[dict], list[dict]]:
    """Per setting: means over seeds; per family: the setting with the best validation mean."""
    return summarise_grid(rows, grid, NLIRun, _setting_row, "valid_accuracy")


def run_nli(
    out: Path,
    *,
    quick: bool = False,
    seeds: Sequence[int] = (0, 1, 2),
    grid: Sequence[Setting] | None = None,
    config: NLIConfig | None = None,
    train_path: str | Path | None = None,
    data_home: str | Path | None = None,
    n_jobs: int = 2,
    device: str | None = None,
    prepared: Prepared | None = None,
) -> list[dict]:
    """Train every setting on every seed; write nli.md/.csv, nli_grid.csv and the figures.

    Runs already finished in ``out/runs/nli`` are read back, not retrained.
    ``prepared`` is :func:`prepare`'s result for ``config`` when the caller
    made it already (to report bad input before anything else happens).
    """
    config = config or (QUICK if quick else NLIConfig())
    grid = tuple((QUICK_GRID if quick else FULL_GRID) if grid is None else grid)
    runner.check_plan("run_nli", grid=grid, seeds=seeds)
    out.mkdir(parents=True, exist_ok=True)
    prepared = prepared or prepare(config, train_path=train_path, data_home=data_home)
    tasks = [
        (f"{s.slug}-seed{seed}", (s, seed, prepared, config, device))
        for s in grid
        for seed in seeds
    ]
    folder = out / "runs" / ("nli-quick" if quick else "nli")
    found = run_all(train_one, tasks, folder, n_jobs=n_jobs, description="nli (setting × seed)")
    rows = [NLIRun.from_row(row) for row in found]
    per_setting, chosen = summarise(rows, grid)
    tables.write_csv([r.csv_row() for r in rows], out / "nli_runs.csv")
    tables.write_csv(per_setting, out / "nli_grid.csv")
    tables.write_csv(chosen, out / "nli.csv")
    tokenizer = SubwordTokenizer.from_bytes(prepared.tokenizer)
    plot_examples(rows, chosen, prepared, tokenizer, out / "nli_attention.png")
    plot_curves(rows, grid, out / "nli_curves.png")
    text = markdown(per_setting, chosen, prepared, config, seeds, quick, rows, grid)
    (out / "nli.md").write_text(text)
    return [r.to_row() for r in rows]


def _scale(prepared: Prepared, quick: bool) -> tuple[str, str]:
    """The report title's label, and what its data say of the paper's setting."""
    label = "reduced-scale run" if prepared.pooled else "run on a training file"
    label = "quick run: a subset and few epochs" if quick else label
    if not prepared.pooled:
        return label, "The paper trained on SNLI 1.0's 550k training pairs."
    return (
        label,
        "SNLI's 550k training pairs are not obtainable offline, so this is a "
        "**reduced-scale reproduction**: about 1/20 of the paper's training data, and "
        "MultiNLI's genres beside SNLI's captions. The paper's accuracies are for orientation, "
        "not a match target. `sparsegen nli --train snli_1.0_train.jsonl` runs the paper's "
        "setting.",
    )


def markdown(
    per_setting: list[dict],
    chosen: list[dict],
    prepared: Prepared,
    config: NLIConfig,
    seeds: Sequence[int],
    quick: bool,
    rows: Sequence[NLIRun],
    grid: Sequence[Setting],
) -> str:
    label, scale = _scale(prepared, quick)
    embeddings = f"from {Path(config.glove).name}" if config.glove else "trained from scratch"
    lines = [
        f"# Sparse attention for NLI: Martins & Astudillo's SNLI experiment ({label})",
        "",
        *runner.untrained_note(rows),
        f"Data: {prepared.description}; tested on SNLI 1.0 test ({len(prepared.test.labels):,} "
        f"pairs). {scale}",
        "",
        f"Model: premise and hypothesis LSTMs ({config.hidden_dim} units, {config.embed_dim}-d "
        f"embeddings {embeddings}, dropout {config.dropout}), SentencePiece vocabulary "
        f"of {len(SubwordTokenizer.from_bytes(prepared.tokenizer))} pieces; AdamW (lr "
        f"{config.lr}), batches of {config.batch_size}, at most {config.epochs} epochs, early "
        f"stopping after {config.patience} without a better validation accuracy. Seeds: "
        f"{', '.join(map(str, seeds))}. Each run keeps its best epoch; λ and q are chosen by "
        "mean validation accuracy over seeds. Support = premise tokens (subword pieces) with "
        "nonzero attention, on the test set.",
        "",
        "## Table (chosen parameter per mapping)",
        "",
        *_chosen_table(chosen),
        "",
        "## Every setting",
        "",
        *_settings_table(per_setting),
    ]
    trained, settings, left_out = runner.without_diverged(chosen, per_setting, "valid_accuracy")
    lines += ["", "## Findings", "", *left_out, *findings(trained, settings, grid), ""]
    lines += [
        "## The slides' examples",
        "",
        "![attention on the slides' four pairs](nli_attention.png)",
        "",
        "Premise pieces shaded by attention weight (first seed; each mapping at its chosen "
        "parameter, and sparsegen-lin at every λ); exact zeros unshaded. The paper bolds: "
        "*rides on … camel*; *a pink coat … yellow*; *frolicking … grass together*; "
        "*laughs … seated next … man … clasping*.",
        "",
        "![validation accuracy per epoch](nli_curves.png)",
        "",
        f"Runs: {len(rows)}; total training time {sum(r.seconds for r in rows) / 60:.1f} "
        "min of one thread each.",
    ]
    return "\n".join(lines) + "\n"


def _accuracy(row: dict) -> str:
    """Test accuracy, mean ± sd over seeds (accuracies are already percentages)."""
    return f"{row['test_accuracy']:.2f} ± {row['test_sd']:.2f}"


def _chosen_table(chosen: list[dict]) -> list[str]:
    header = ("attention", "chosen", "valid acc.", "test acc. (mean ± sd)", "paper's test acc.",
              "support (tokens)", "support / premise length")  # fmt: skip
    rows = []
    for row in chosen:
        none = row["family"] == "NoAttention"
        parameter = row["setting"].removeprefix(row["family"]).strip() or "—"
        if row["learnt_lam"] is not None:
            parameter += f" (λ → {row['learnt_lam']:.2f})"
        paper = PAPER.get(row["family"])
        rows.append((
            row["family"], parameter, f"{row['valid_accuracy']:.2f}", _accuracy(row),
            "—" if paper is None else paper,
            "— (no attention)" if none else f"{row['support']:.2f}",
            "—" if none else tables.percent(row["support_share"]),
        ))  # fmt: skip
    return tables.markdown_table(header, rows)


def _settings_table(per_setting: list[dict]) -> list[str]:
    header = ("setting", "valid acc.", "test acc.", "support", "support / length", "training s")
    rows = [
        (
            row["setting"]
            + ("" if row["learnt_lam"] is None else f" (λ → {row['learnt_lam']:.2f})"),
            f"{row['valid_accuracy']:.2f}",
            _accuracy(row),
            f"{row['support']:.2f}",
            tables.percent(row["support_share"]),
            f"{row['seconds']:.0f}",
        )
        for row in per_setting
    ]
    return tables.markdown_table(header, rows)


def _against_no_attention(none: dict, chosen: list[dict], per_setting: list[dict]) -> str:
    """Each mapping at its chosen parameter against NoAttention on the test set, then the
    grid's other settings below it (a parameter chosen on validation can hide them)."""
    floor = none["test_accuracy"]
    picked = {r["setting"] for r in chosen}
    below = [r for r in per_setting if r["family"] != "NoAttention" and r["test_accuracy"] < floor]

    def listed(chosen_ones: bool) -> str:
        rows = [r for r in below if (r["setting"] in picked) == chosen_ones]
        return ", ".join(f"{r['setting']} ({r['test_accuracy']:.2f})" for r in rows)

    mappings, others = listed(True), listed(False)
    line = (
        f"- Below NoAttention ({floor:.2f}) at the parameter chosen on validation: {mappings}."
        if mappings
        else "- Every attention mapping, at its parameter chosen on validation, is at least as "
        "accurate as NoAttention on the test set."
    )
    return line + (f" Other settings below it ({floor:.2f}): {others}." if others else "")


def findings(
    chosen: list[dict], per_setting: list[dict], grid: Sequence[Setting] = ()
) -> list[str]:
    by_family = {row["family"]: row for row in chosen}
    out = []
    none = by_family.get("NoAttention")
    if none:
        out.append(_against_no_attention(none, chosen, per_setting))
    if "softmax" in by_family and "sparsemax" in by_family:
        soft, sparse = by_family["softmax"], by_family["sparsemax"]
        gap = sparse["test_accuracy"] - soft["test_accuracy"]
        ratio = sparse["support"] / soft["support"] if soft["support"] else math.nan
        out.append(
            f"- sparsemax − softmax: {gap:+.2f} points of test accuracy "
            f"({'within' if abs(gap) <= 1 else 'outside'} 1 point); sparsemax attends to "
            f"{sparse['support']:.2f} premise tokens, {ratio:.2f}× softmax's "
            f"{soft['support']:.2f} (every token)."
        )
        sparser = [
            r
            for r in per_setting
            if r["family"] not in ("NoAttention", "softmax") and r["support"] <= soft["support"] / 3
        ]
        out.append(
            "- Attending to at most a third of softmax's tokens: "
            + (
                ", ".join(
                    f"{r['setting']} ({r['support'] / soft['support']:.2f}×, "
                    f"{r['test_accuracy'] - soft['test_accuracy']:+.2f} points)"
                    for r in sparser
                )
                if sparser
                else "none"
            )
            + "."
        )
    return out + tables.lin_support_finding(per_setting, grid)


def plot_examples(
    rows: Sequence[NLIRun],
    chosen: list[dict],
    prepared: Prepared,
    tokenizer: SubwordTokenizer,
    path: Path,
) -> None:
    """The slides' four pairs: premise pieces shaded by each chosen mapping's weights."""
    plt = tables.pyplot()
    shown = [r for r in chosen if r["family"] != "NoAttention"]
    shown += [  # every fixed λ too: the sparsity control at work
        {"setting": r.setting}
        for r in rows
        if r.family == "sparsegen-lin"
        and r.learnt_lam is None
        and r.seed == min(x.seed for x in rows)
        and all(r.setting != c["setting"] for c in shown)
    ]
    first = {r.setting: r for r in sorted(rows, key=lambda r: r.seed, reverse=True)}
    ex = prepared.examples
    fig, axes = plt.subplots(len(ex.labels), 1, figsize=(13, 1.2 + 0.5 * len(shown) * 4))
    for k, ax in enumerate(np.atleast_1d(axes)):
        pieces = [tokenizer.id_to_piece(i) for i in ex.premises[k]]
        ax.set_axis_off()
        ax.set_xlim(0, 1)
        ax.set_ylim(-len(shown) - 0.3, 1.2)
        ax.text(
            0,
            0.9,
            f"Hypothesis: {ex.hypothesis_text[k]}  [{NLI_LABELS[ex.labels[k]]}]",
            fontsize=9,
            style="italic",
        )
        for j, row in enumerate(shown):
            weights = first[row["setting"]].extra["example_weights"][k]
            ax.text(0, -j, row["setting"], fontsize=8, ha="left", va="center")
            x = 0.17
            for piece, w in zip(pieces, weights, strict=False):
                text = piece.replace("▁", " ")
                colour = (1, 1 - 0.8 * min(w / max(max(weights), 1e-9), 1), 1 - min(w * 2, 1))
                box = {"facecolor": colour if w > 0 else "white", "edgecolor": "none", "pad": 1}
                ax.text(x, -j, text, fontsize=8, va="center", bbox=box, family="monospace")
                x += 0.0075 * (len(text) + 0.3)
    fig.suptitle(
        "Attention over the premise: shade relative to the row's largest weight; "
        "exact zeros unshaded"
    )
    tables.save_figure(fig, path)


def plot_curves(rows: Sequence[NLIRun], grid: Sequence[Setting], path: Path) -> None:
    """Each setting's validation accuracy per epoch, in its first seed's run."""
    fig, ax = tables.pyplot().subplots(figsize=(7, 4))
    first = [min((r for r in rows if r.setting == s.name), key=lambda r: r.seed) for s in grid]
    tables.epoch_curves(ax, [(run.setting, run.curves["valid"], {}) for run in first])
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("NLI: validation accuracy per epoch (first seed)")
    tables.save_figure(fig, path)
