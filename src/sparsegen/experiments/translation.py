"""Laha et al.'s (2018, §5.2) translation experiment: sparse attention in an RNN encoder–decoder.

:class:`sparsegen.models.Seq2Seq` (bidirectional LSTM encoder, input-feeding
LSTM decoder, Luong "general" attention) trained with softmax, softmax with a
temperature, sparsemax, sparsegen-lin (λ grid and λ learnt) and sparsehourglass
(q grid) attention, on Multi30k French↔English (shipped; Laha et al.'s
NMT-Benchmark corpus is not obtainable offline) or on any parallel files.

Selection. Each run keeps its best epoch by validation BLEU (greedy decoding;
Laha et al. select by validation accuracy), and each mapping's control
parameter is the one with the best validation BLEU. Test BLEU comes from beam
search (beam 5, length-normalised) with sacreBLEU on detokenised text; its
signature is in the report. ``metric="rouge"`` scores with ROUGE-1/2/L F1
instead (selection on ROUGE-L), for summarisation pairs such as Gigaword.

Attention support. The average number of source pieces with nonzero weight per
target token, on the model's own greedy translations of the first test set,
absolute and as a fraction of the source length.

Training runs unchanged under torchrun (DistributedDataParallel), one run per
command::

    torchrun --nproc_per_node=2 -m sparsegen.experiments.translation --mapping sparsemax
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from sparsegen.datasets import ParallelData, load_multi30k, read_parallel
from sparsegen.experiments.flags import (
    CONFIG_READERS,
    add_config_flags,
    config_from_args,
    count,
    even_positive_int,
    finite_number,
    output_file,
)
from sparsegen.experiments.runner import (
    RunResult,
    SettingSummary,
    check_plan,
    run_all,
    summarise_grid,
    untrained_note,
    without_diverged,
)
from sparsegen.experiments.settings import Setting
from sparsegen.experiments.tables import (
    epoch_curves,
    lin_support_finding,
    markdown_table,
    percent,
    pyplot,
    save_figure,
    write_csv,
)
from sparsegen.experiments.text import encode
from sparsegen.models import History, Seq2Seq, TrainingConfig, fit, resolve_device
from sparsegen.models.training import distributed
from sparsegen.nn import LuongAttention
from sparsegen.text import PAD, SubwordTokenizer, bucket_batches, length_mask, pad_sequences

__all__ = [
    "FULL_GRID",
    "QUICK_GRID",
    "Corpus",
    "TranslationConfig",
    "TranslationRun",
    "multi30k",
    "prepare",
    "run_translation",
    "score",
    "train_one",
    "with_lams",
]

# Laha et al. (2018), Table 2: test BLEU on NMT-Benchmark FR→EN, EN→FR (another corpus).
LAHA = {
    "softmax": (36.38, 36.00),
    "softmax (temperature)": (36.63, 36.08),
    "sparsemax": (36.73, 35.78),
    "sparsegen-lin": (37.27, 35.78),
    "sparsehourglass": (36.63, 35.69),
}

# Laha et al.'s grid, plus the scale of scaled dot-product attention: T = √256 = 16 divides
# the scores, and sparsegen-lin λ = −15 is sparsemax of the scores divided by 16 (1 − λ = 16).
FULL_GRID = (
    Setting("softmax", "softmax"),
    *(Setting("softmax (temperature)", "softmax", temperature=t) for t in (0.5, 2.0, 16.0)),
    Setting("sparsemax", "sparsemax"),
    *(
        Setting("sparsegen-lin", "sparsegen_lin", lam=v)
        for v in (-15.0, -1.0, -0.5, 0.25, 0.5, 0.75)
    ),
    Setting("sparsegen-lin", "sparsegen_lin", lam=0.0, learnable=True),
    *(Setting("sparsehourglass", "sparsehourglass", q=v) for v in (0.5, 1.0, 2.0)),
)
# The committed run: what fits two CPU cores in about an hour (see the report).
REDUCED_GRID = (
    Setting("softmax", "softmax"),
    Setting("sparsemax", "sparsemax"),
    *(Setting("sparsegen-lin", "sparsegen_lin", lam=v) for v in (0.25, 0.75)),
)
# The full run's finding in small: each mapping on Luong's unscaled scores and on the
# scores divided by 16 (sparsegen-lin λ = −15 is sparsemax of z/16).
QUICK_GRID = (
    Setting("softmax", "softmax"),
    Setting("sparsemax", "sparsemax"),
    Setting("softmax (temperature)", "softmax", temperature=16.0),
    Setting("sparsegen-lin", "sparsegen_lin", lam=-15.0),
)


def with_lams(grid: Sequence[Setting], lams: Sequence[float]) -> tuple[Setting, ...]:
    """``grid`` with sparsegen-lin's fixed-λ settings replaced by ``lams`` (in their place)."""
    fixed = [s for s in grid if s.family == "sparsegen-lin" and not s.learnable]
    where = grid.index(fixed[0]) if fixed else len(grid)
    others = [s for s in grid if s not in fixed]
    lins = [Setting("sparsegen-lin", "sparsegen_lin", lam=lam) for lam in lams]
    return (*others[:where], *lins, *others[where:])


@dataclass(frozen=True)
class TranslationConfig:
    """Model, data and training sizes (the defaults are the full run's).

    Each field's ``help`` is its command-line flag's (:func:`add_config_flags`).
    """

    vocab_size: int = field(default=4000, metadata={"help": "SentencePiece pieces per language"})
    embed_dim: int = field(default=128, metadata={"help": "embedding size"})
    hidden_dim: int = field(
        default=256,
        metadata={"help": "LSTM units, an even number: the encoder's two directions share them"},
    )
    layers: int = field(default=1, metadata={"help": "LSTM layers of the encoder and decoder"})
    dropout: float = field(default=0.3, metadata={"help": "dropout rate"})
    batch_size: int = field(default=64, metadata={"help": "sentence pairs per batch"})
    max_tokens: int = field(
        default=60, metadata={"help": "cut longer sentences to this many pieces, with a warning"}
    )
    epochs: int = field(default=6, metadata={"help": "at most this many epochs per run"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW's learning rate"})
    patience: int = field(
        default=2,
        metadata={"help": "stop after this many epochs without a better validation score"},
    )
    beam: int = field(default=5, metadata={"help": "beam size of the test translations"})
    length_penalty: float = field(
        default=1.0,
        metadata={
            "help": "test scores (log-probabilities) are divided by length to this power: 0 "
            "leaves them, higher favours longer translations, a negative one shorter"
        },
    )
    metric: str = field(
        default="bleu",
        metadata={
            "help": "score with sacreBLEU, or with ROUGE-1/2/L F1 (selecting on ROUGE-L)",
            "choices": ("bleu", "rouge"),
        },
    )
    train_limit: int | None = field(
        default=None, metadata={"help": "train on the first N pairs only"}
    )
    valid_limit: int | None = field(
        default=None, metadata={"help": "validate on the first N pairs only"}
    )
    test_limit: int | None = field(
        default=None, metadata={"help": "test on the first N pairs only"}
    )


QUICK = TranslationConfig(
    vocab_size=2000,
    embed_dim=96,
    hidden_dim=192,
    epochs=3,
    train_limit=10000,
    valid_limit=300,
    test_limit=500,
)


@dataclass
class Corpus:
    """Training, validation and named test pairs, with a line saying where they come from."""

    train: ParallelData
    valid: ParallelData
    tests: dict[str, ParallelData]
    description: str
    direction: str = "source→target"


def multi30k(source: str = "fr", target: str = "en", data_home=None) -> Corpus:
    """The shipped Multi30k task 1 in one direction (tests: test_2016_flickr, test_2017_flickr)."""

    def split(name: str) -> ParallelData:
        return load_multi30k(name, source=source, target=target, data_home=data_home)

    return Corpus(
        split("train"),
        split("val"),
        {name: split(name) for name in ("test_2016_flickr", "test_2017_flickr")},
        "Multi30k task 1 (Elliott et al. 2016, 2017): 29,000 training, 1,014 validation and "
        "two 1,000-pair test sets of image captions",
        f"{source.upper()}→{target.upper()}",
    )


def files_corpus(train: Sequence[str], valid: Sequence[str], test: Sequence[str]) -> Corpus:
    """A corpus from user files (``[source, target]`` each)."""
    return Corpus(
        read_parallel(*train),
        read_parallel(*valid),
        {Path(test[0]).name: read_parallel(*test)},
        f"user files: train {train[0]} / {train[1]}, validation {valid[0]} / {valid[1]}, "
        f"test {test[0]} / {test[1]}",
        "source→target",
    )


@dataclass
class Encoded:
    source: list[list[int]]
    target: list[list[int]]
    references: list[str]
    source_text: list[str]

    def tensors(self, index: np.ndarray, device: torch.device):
        src, src_len = pad_sequences([self.source[i] for i in index])
        tgt, _ = pad_sequences([self.target[i] for i in index], bos=True, eos=True)
        return src.to(device), src_len.to(device), tgt.to(device)


@dataclass
class Prepared:
    source_tokenizer: bytes
    target_tokenizer: bytes
    train: Encoded
    valid: Encoded
    tests: dict[str, Encoded]
    description: str
    direction: str
    truncated: dict[str, int] = field(default_factory=dict)


def _limit(data: ParallelData, n: int | None) -> ParallelData:
    return data if n is None else ParallelData(data.source[:n], data.target[:n])


def prepare(config: TranslationConfig, corpus: Corpus) -> Prepared:
    """Train a SentencePiece model per side on the training split and encode every split."""
    train = _limit(corpus.train, config.train_limit)
    source_tok = SubwordTokenizer.train(train.source, config.vocab_size)
    target_tok = SubwordTokenizer.train(train.target, config.vocab_size)

    def encoded(data: ParallelData, what: str) -> Encoded:
        return Encoded(
            encode(source_tok, data.source, config.max_tokens, f"{what} source"),
            encode(target_tok, data.target, config.max_tokens, f"{what} target"),
            data.target,
            data.source,
        )

    description = corpus.description
    if config.train_limit is not None:
        description += f"; the first {len(train.source):,} training pairs only"
    return Prepared(
        source_tok.to_bytes(),
        target_tok.to_bytes(),
        encoded(train, "training"),
        encoded(_limit(corpus.valid, config.valid_limit), "validation"),
        {name: encoded(_limit(d, config.test_limit), name) for name, d in corpus.tests.items()},
        description,
        corpus.direction,
    )


def score(hypotheses: Sequence[str], references: Sequence[str], metric: str) -> dict:
    """``{"score": ..., "signature": ...}``: sacreBLEU's BLEU, or ROUGE-1/2/L F1 (score = L)."""
    if metric == "bleu":
        import sacrebleu

        bleu = sacrebleu.metrics.BLEU()
        result = bleu.corpus_score(list(hypotheses), [list(references)])
        return {"score": result.score, "signature": str(bleu.get_signature())}
    if metric == "rouge":
        try:
            from rouge_score import rouge_scorer
        except ImportError:
            raise ImportError(
                "metric='rouge' needs rouge-score: pip install 'sparsegen[rouge]'"
            ) from None
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
        for hypothesis, reference in zip(hypotheses, references, strict=True):
            for key, value in scorer.score(reference, hypothesis).items():
                totals[key] += value.fmeasure
        n = max(len(references), 1)
        means = {key: 100 * value / n for key, value in totals.items()}
        return {"score": means["rougeL"], **means, "signature": "rouge-score F1, stemmed"}
    raise ValueError(f"metric must be 'bleu' or 'rouge'; got {metric!r}")


def translate_ids(
    model: Seq2Seq, data: Encoded, device, *, beam: int, alpha: float
) -> list[list[int]]:
    """Target ids of every source sentence's translation, in the data's order."""
    out: list[list[int]] = [[] for _ in data.source]
    for index in bucket_batches([len(s) for s in data.source], 64, shuffle=False):
        src, src_len, _ = data.tensors(index, device)
        for i, ids in zip(index, model.translate(src, src_len, beam=beam, length_penalty=alpha),
                          strict=True):  # fmt: skip
            out[i] = ids
    return out


def translate(
    model: Seq2Seq, data: Encoded, tokenizer: SubwordTokenizer, device, *, beam: int, alpha: float
) -> list[str]:
    """Detokenised translations of every source sentence, in order."""
    return tokenizer.decode(translate_ids(model, data, device, beam=beam, alpha=alpha))


_ATTENTION = ("support", "support_share", "one_piece", "on_last")


def attention_support(model: Seq2Seq, data: Encoded, outputs: list[list[int]], device) -> dict:
    """Where the attention goes while the model produces ``outputs``, per target token:
    ``support``, the mean number of source pieces with a nonzero weight (and, as
    ``support_share``, that number over the source length); ``one_piece``, the share of
    tokens whose whole weight is on one piece (where sparsemax's Jacobian, and so the
    gradient to the scores, is zero); ``on_last``, the share whose largest weight is on the
    source's last piece (a model that has not found the alignment parks its attention there,
    usually on the full stop)."""
    totals = dict.fromkeys(_ATTENTION, 0.0)
    tokens = 0.0
    for index in bucket_batches([len(s) for s in data.source], 64, shuffle=False):
        src, src_len = pad_sequences([data.source[i] for i in index])
        tgt, tgt_len = pad_sequences([outputs[i] for i in index], bos=True)
        src_len = src_len.to(device)
        _, weights = model(src.to(device), src_len, tgt.to(device))
        real = length_mask(tgt_len, tgt.shape[1]).to(device)
        nonzero = (weights > 0).sum(-1).double()
        length = src_len.unsqueeze(1)  # (B, 1): per target token
        per_token = {
            "support": nonzero,
            "support_share": nonzero / length,
            "one_piece": (nonzero == 1).double(),
            "on_last": (weights.argmax(-1) == length - 1).double(),
        }
        for key, values in per_token.items():
            totals[key] += float(values[real].sum())
        tokens += float(real.sum())
    return {key: total / tokens for key, total in totals.items()}


def train_model(
    setting: Setting,
    seed: int,
    prepared: Prepared,
    config: TranslationConfig,
    device: str | None = None,
    *,
    checkpoint: Path | None = None,
    progress: bool = False,
) -> tuple[Seq2Seq, History]:
    """Train one model (resuming from ``checkpoint``), selected on validation; under
    torchrun, with DistributedDataParallel."""
    device = resolve_device(device)
    target_tok = SubwordTokenizer.from_bytes(prepared.target_tokenizer)
    torch.manual_seed(seed)
    model = Seq2Seq(
        len(SubwordTokenizer.from_bytes(prepared.source_tokenizer)),
        len(target_tok),
        embed_dim=config.embed_dim,
        hidden_dim=config.hidden_dim,
        layers=config.layers,
        dropout=config.dropout,
        attention=setting.mapping,
        temperature=setting.temperature,
        **setting.mapping_options(),
    ).to(device)
    train = prepared.train
    lengths = [max(len(s), len(t)) for s, t in zip(train.source, train.target, strict=True)]

    def loss(module: nn.Module, index: np.ndarray) -> tuple[torch.Tensor, int]:
        src, src_len, tgt = train.tensors(index, device)
        logits, _ = module(src, src_len, tgt[:, :-1])
        gold = tgt[:, 1:]
        summed = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            gold.reshape(-1),
            ignore_index=PAD,
            reduction="sum",
        )
        return summed, int((gold != PAD).sum())

    def validate(m: Seq2Seq) -> dict[str, float]:
        # the attention statistics each epoch show when a model finds the alignment
        ids = translate_ids(m, prepared.valid, device, beam=1, alpha=0.0)
        scored = score(target_tok.decode(ids), prepared.valid.references, config.metric)
        return {"score": scored["score"], **attention_support(m, prepared.valid, ids, device)}

    history = fit(
        model,
        lambda epoch: bucket_batches(lengths, config.batch_size, seed=seed * 1000 + epoch),
        loss,
        validate,
        TrainingConfig(epochs=config.epochs, lr=config.lr, patience=config.patience, seed=seed),
        checkpoint=checkpoint,
        progress=progress,
        description=setting.name,
    )
    return model, history


def _present(values: dict, *keys: str) -> dict:
    return {key: values[key] for key in keys if key in values}


@dataclass
class TranslationRun(RunResult):
    """One translation run. Its files name a test set's score ``test:NAME`` and a curve
    ``curve_KEY``; ``extra`` holds the setting's ``parameter`` label, the metric's
    ``signature``, the ``first_test`` set, one sentence's attention (``example``) and,
    once the runner knows it, the ``direction``."""

    def to_row(self) -> dict:
        row = {
            "setting": self.setting,
            "family": self.family,
            **_present(self.extra, "parameter"),
            "seed": self.seed,
            "valid": self.valid,
            "best_epoch": self.best_epoch,
            "epochs": self.epochs,
            "seconds": self.seconds,
            **{f"curve_{key}": curve for key, curve in self.curves.items()},
            "learnt_lam": self.learnt_lam,
        }
        for i, (name, value) in enumerate(self.tests.items()):
            row[f"test:{name}"] = value
            if i == 0:  # the column order of the files written so far
                row.update(_present(self.extra, "signature", "first_test"))
        return {**row, **self.stats, **_present(self.extra, "example", "direction")}

    def csv_row(self) -> dict:
        """The run's translation_runs.csv row: no curves, no example."""
        return {
            k: v for k, v in self.to_row().items() if not k.startswith("curve") and k != "example"
        }

    @classmethod
    def from_row(cls, row: dict) -> TranslationRun:
        return cls(
            setting=row["setting"],
            family=row.get("family", ""),
            seed=row["seed"],
            valid=row["valid"],
            tests={k.removeprefix("test:"): v for k, v in row.items() if k.startswith("test:")},
            stats=_present(row, *_ATTENTION),
            seconds=row["seconds"],
            best_epoch=row.get("best_epoch", 0),
            epochs=row.get("epochs", 0),
            learnt_lam=row.get("learnt_lam"),
            curves={k.removeprefix("curve_"): v for k, v in row.items() if k.startswith("curve_")},
            extra=_present(row, "parameter", "signature", "first_test", "example", "direction"),
        )


def train_one(
    setting: Setting,
    seed: int,
    prepared: Prepared,
    config: TranslationConfig,
    device: str | None = None,
    *,
    checkpoint: Path | None = None,
    progress: bool = False,
) -> TranslationRun:
    """Train one model; its test scores, attention support and one sentence's weights."""
    model, history = train_model(
        setting, seed, prepared, config, device, checkpoint=checkpoint, progress=progress
    )
    device = next(model.parameters()).device
    run = TranslationRun(
        setting=setting.name,
        family=setting.family,
        seed=seed,
        valid=history.best_score,
        tests={},
        stats={},
        seconds=history.seconds,
        best_epoch=history.best_epoch,
        epochs=len(history.epochs),
        learnt_lam=float(model.attention.mapping.lam.detach()) if setting.learnable else None,
        curves={
            "loss": [row["train_loss"] for row in history.epochs],
            "valid": [row["valid"] for row in history.epochs],
            **{
                key: [row[key] for row in history.epochs]
                for key in _ATTENTION
                if all(key in row for row in history.epochs)  # a checkpoint may lack them
            },
        },
        extra={"parameter": setting.parameter},
    )
    with torch.no_grad():
        _test(run, model, prepared, config, device)
    return run


def _test(
    run: TranslationRun, model: Seq2Seq, prepared: Prepared, config: TranslationConfig, device
) -> None:
    """``run``'s test scores, its attention statistics and one sentence's weights."""
    source_tok = SubwordTokenizer.from_bytes(prepared.source_tokenizer)
    target_tok = SubwordTokenizer.from_bytes(prepared.target_tokenizer)
    for name, data in prepared.tests.items():
        hyps = translate(
            model, data, target_tok, device, beam=config.beam, alpha=config.length_penalty
        )
        scored = score(hyps, data.references, config.metric)
        run.tests[name] = scored["score"]
        run.extra["signature"] = scored["signature"]
        run.extra.setdefault("first_test", name)
    first = next(iter(prepared.tests.values()))
    outputs = translate_ids(model, first, device, beam=1, alpha=0.0)
    run.stats.update(attention_support(model, first, outputs, device))
    src, src_len = pad_sequences([first.source[0]])
    tgt, _ = pad_sequences([outputs[0]], bos=True)
    _, weights = model(src.to(device), src_len.to(device), tgt.to(device))
    run.extra["example"] = {
        "source": [source_tok.id_to_piece(i) for i in first.source[0]],
        "target": [target_tok.id_to_piece(i) for i in outputs[0]] + ["</s>"],
        "weights": weights[0].cpu().tolist(),
    }


def _setting_row(summary: SettingSummary) -> dict:
    """A setting's translation.csv row, with each test set's per-seed scores (``each:``)."""
    setting = summary.setting
    row = {
        "setting": setting.name,
        "family": setting.family,
        "seeds": summary.seeds,
        "valid": summary.valid,
        "seconds": summary.mean([r.seconds for r in summary.runs]),
    }
    for name in summary.tests:
        mean, sd, each = summary.test(name)
        row |= {f"test:{name}": mean, f"sd:test:{name}": sd, f"each:test:{name}": each}
    row |= summary.stats
    row["parameter"] = setting.parameter
    if setting.learnable:
        row["parameter"] = f"learnt (λ → {summary.learnt_lam:.2f})"
    row["signature"] = summary.runs[0].extra.get("signature", "")
    return row


def summarise(
    rows: Sequence[TranslationRun | dict], grid: Sequence[Setting]
) -> tuple[list[dict], list[dict]]:
    """Per setting (means over seeds) and per family (the best validation score)."""
    return summarise_grid(rows, grid, TranslationRun, _setting_row, "valid")


def copy_baseline(prepared: Prepared, metric: str) -> dict[str, float]:
    """The score of copying the source sentence as the translation."""
    return {
        name: score(data.source_text, data.references, metric)["score"]
        for name, data in prepared.tests.items()
    }


def run_translation(
    out: Path,
    *,
    quick: bool = False,
    directions: Sequence[tuple[str, str]] = (("fr", "en"), ("en", "fr")),
    grid: Sequence[Setting] | None = None,
    config: TranslationConfig | None = None,
    corpus: Corpus | None = None,
    seeds: Sequence[int] = (0,),
    data_home: str | Path | None = None,
    n_jobs: int = 2,
    device: str | None = None,
    finished_only: bool = False,
) -> list[dict]:
    """Train every setting in every direction; write translation.md/.csv and the figures.

    ``corpus`` (user files) replaces Multi30k and its directions. Finished runs
    in ``out/runs/translation*`` are read back; interrupted ones resume.
    ``finished_only`` trains nothing and reports the runs that have finished
    (the report lists the settings missing).
    """
    config = config or (QUICK if quick else TranslationConfig())
    grid = tuple((QUICK_GRID if quick else REDUCED_GRID) if grid is None else grid)
    check_plan("run_translation", grid=grid, seeds=seeds)
    out.mkdir(parents=True, exist_ok=True)
    corpora = [corpus] if corpus else [multi30k(s, t, data_home) for s, t in directions]
    rows, sections, baselines = [], [], {}
    for data in corpora:
        prepared = prepare(config, data)
        baselines[data.direction] = copy_baseline(prepared, config.metric)
        tag = data.direction.replace("→", "-").lower()
        tasks = [
            (f"{tag}-{s.slug}-seed{seed}", (s, seed, prepared, config, device))
            for s in grid
            for seed in seeds
        ]
        folder = out / "runs" / ("translation-quick" if quick else "translation")
        found = run_all(
            train_one,
            tasks,
            folder,
            n_jobs=n_jobs,
            description=f"{data.direction} settings",
            finished_only=finished_only,
        )
        if not found:
            continue
        runs = [TranslationRun.from_row(row) for row in found]
        for run in runs:
            run.extra["direction"] = data.direction
        rows += runs
        ran = [s for s in grid if any(run.setting == s.name for run in runs)]
        missing = [s.name for s in grid if s not in ran]
        sections.append(Section(data, prepared, *summarise(runs, ran), missing, ran))
    if sections:
        _write(out, rows, sections, baselines, config, quick)
    return [row.to_row() for row in rows]


@dataclass
class Section:
    """A direction's part of the report: its corpus, settings and what was not run."""

    data: Corpus
    prepared: Prepared
    per_setting: list[dict]
    chosen: list[dict]
    missing: list[str]
    grid: list[Setting]


def _write(out: Path, rows: list[TranslationRun], sections: list[Section], baselines: dict,
           config: TranslationConfig, quick: bool) -> None:  # fmt: skip
    """The CSVs, figures and report of the runs."""
    write_csv([row.csv_row() for row in rows], out / "translation_runs.csv")
    write_csv(
        [
            {"direction": section.data.direction, **_without_lists(row)}
            for section in sections
            for row in section.per_setting
        ],
        out / "translation.csv",
    )
    plot_heatmaps(rows, out / "translation_heatmaps.png")
    plot_curves(rows, out / "translation_curves.png")
    (out / "translation.md").write_text(markdown(sections, baselines, config, quick, rows))


def _vocabulary_sizes(prepared: Prepared, asked: int) -> str:
    """The pieces the tokenizers hold, which SentencePiece may make more than asked (every
    character and byte has one) or fewer (a small corpus has no more)."""
    sizes = [
        len(SubwordTokenizer.from_bytes(tokenizer))
        for tokenizer in (prepared.source_tokenizer, prepared.target_tokenizer)
    ]
    told = "" if sizes == [asked, asked] else f", for {asked:,} asked"
    return f"{sizes[0]:,} (source) and {sizes[1]:,} (target) pieces{told}"


def markdown(
    sections: Sequence[Section],
    baselines: dict,
    config: TranslationConfig,
    quick: bool,
    runs: Sequence[TranslationRun] = (),
) -> str:
    metric = "BLEU" if config.metric == "bleu" else "ROUGE-L"
    label = "quick run: a subset, a small model, 3 epochs" if quick else "reduced grid"
    first = sections[0].prepared
    lines = [
        f"# Sparse attention in translation: Laha et al.'s NMT experiment ({label})",
        "",
        *untrained_note(runs),
        f"Data: {first.description}. Laha et al. trained on OpenNMT's NMT-Benchmark FR–EN "
        "corpus (about 1M pairs), which is not obtainable offline: their numbers are shown for "
        "orientation only, not as a target.",
        "",
        f"Model: bidirectional LSTM encoder and input-feeding LSTM decoder ({config.layers} "
        f"layer(s), {config.hidden_dim} units, {config.embed_dim}-d embeddings, dropout "
        f"{config.dropout}), Luong general attention; SentencePiece (unigram) vocabularies of "
        f"{_vocabulary_sizes(first, config.vocab_size)} trained on the training split; AdamW (lr "
        f"{config.lr}), length-bucketed batches of {config.batch_size}, learning rate halved on "
        f"a validation plateau, at most {config.epochs} epochs, early stopping after "
        f"{config.patience} epochs without a better validation {metric} (greedy decoding). "
        f"Test: beam {config.beam}, scores divided by length^{config.length_penalty}. "
        + _seeds_line(sections),
        "",
    ]
    if quick:
        lines += [
            "The quick grid pairs each mapping on Luong's unscaled scores (softmax, sparsemax) "
            "with the same on the scores divided by 16, as scaled dot-product attention divides "
            "them (softmax T = 16; sparsegen-lin λ = −15, which is sparsemax of z/16): the full "
            "run finds that the scale closes sparsemax's gap to softmax.",
            "",
        ]
    for section in sections:
        lines += _direction(section, baselines[section.data.direction], metric)
    sig = sections[0].per_setting[0].get("signature", "")
    signature = f" (sacreBLEU signature `{sig}`)" if config.metric == "bleu" else ""
    lines += [
        f"Scores: {metric} on detokenised output{signature}.",
        "",
        "![attention heatmaps](translation_heatmaps.png)",
        "",
        "Attention of one test sentence (the first of the first test set, first seed) under each "
        "setting: source pieces across, the model's own greedy output down; exact zeros white.",
        "",
        "![training curves](translation_curves.png)",
        "",
        "Per epoch, each setting's first seed: the training loss, the validation score and, for "
        "the runs that recorded it, the share of validation tokens whose whole attention is on "
        "one source piece.",
        "",
    ]
    return "\n".join(lines)


def _direction(section: Section, baseline: dict[str, float], metric: str) -> list[str]:
    """A direction's tables and findings."""
    tests = list(section.prepared.tests)
    lines = [
        f"## {section.data.direction}",
        "",
        *_chosen_table(section, baseline, metric),
        "",
        "Every setting (sparsegen-lin's support should fall as λ grows):",
        "",
        *_settings_table(section.per_setting, tests, metric),
        "",
        "Support, per target token of the model's greedy output on the first test set: the "
        "source pieces with a nonzero weight; on one piece: the tokens whose whole weight is "
        "on one source piece (sparsemax's Jacobian is zero there, so such a token sends no "
        "gradient to the attention scores); largest on the last piece: the tokens whose "
        "largest weight is on the source's last piece (usually the full stop, where a model "
        "that has not found the alignment parks its attention).",
        "",
        *_findings(section),
        "",
    ]
    if section.missing:
        lines += [f"Not run in this direction: {', '.join(section.missing)}.", ""]
    return lines


def _chosen_table(section: Section, baseline: dict[str, float], metric: str) -> list[str]:
    tests = list(section.prepared.tests)
    header = ("attention", "chosen", f"valid {metric}", *(f"test {t}" for t in tests),
              "support / target token", "support / source length", "Laha et al.")  # fmt: skip
    column = {"FR→EN": 0, "EN→FR": 1}.get(section.data.direction)
    rows = []
    for row in section.chosen:
        paper = LAHA.get(row["family"])
        rows.append((
            row["family"], row["parameter"] or "—", f"{row['valid']:.2f}",
            *(_score(row, t) for t in tests), f"{row['support']:.2f}",
            percent(row["support_share"]),
            "—" if paper is None or column is None else f"{paper[column]:.2f}",
        ))  # fmt: skip
    copy = ("copy the source (trivial baseline)", "—", "—",
            *(f"{baseline[t]:.2f}" for t in tests), "—", "—", "—")  # fmt: skip
    return markdown_table(header, [*rows, copy])


def _settings_table(per_setting: list[dict], tests: list[str], metric: str) -> list[str]:
    header = ("setting", "seeds", f"valid {metric}", *(f"test {t}" for t in tests), "support",
              "support / length", "on one piece", "largest on the last piece",
              "training min (per run)")  # fmt: skip
    rows = [
        (
            row["setting"],
            row["seeds"],
            f"{row['valid']:.2f}",
            *(_score(row, t) for t in tests),
            f"{row['support']:.2f}",
            *(percent(row.get(k)) for k in ("support_share", "one_piece", "on_last")),
            f"{row['seconds'] / 60:.1f}",
        )
        for row in per_setting
    ]
    return markdown_table(header, rows)


def _without_lists(row: dict) -> dict:
    """A per-setting row for the CSV: the per-seed scores are in translation_runs.csv."""
    return {k: v for k, v in row.items() if not k.startswith("each:")}


def _score(row: dict, test: str) -> str:
    """A test score: the mean, ± the sd over seeds when there are several."""
    mean = f"{row[f'test:{test}']:.2f}"
    return mean if row["seeds"] < 2 else f"{mean} ± {row[f'sd:test:{test}']:.2f}"


def _seeds_line(sections: Sequence[Section]) -> str:
    counts = {row["seeds"] for section in sections for row in section.per_setting}
    if counts == {1}:
        return "One seed per setting."
    span = f"{min(counts)} to {max(counts)}" if len(counts) > 1 else f"{max(counts)}"
    return (
        f"Seeds per setting: {span} (each table's seeds column); a setting's scores are "
        "means over its seeds, ± their sd."
    )


def _findings(section: Section) -> list[str]:
    """A direction's findings, from the settings whose runs all trained."""
    chosen, per_setting, left_out = without_diverged(section.chosen, section.per_setting, "valid")
    return left_out + (findings(per_setting, chosen, section.grid) if chosen else [])


def findings(
    per_setting: list[dict], chosen: list[dict], grid: Sequence[Setting] = ()
) -> list[str]:
    out = []
    soft = next((r for r in chosen if r["family"] == "softmax"), None)
    test = next((k for k in chosen[0] if k.startswith("test:")), None)
    for row in per_setting:
        if row["seeds"] > 1 and test:
            each = ", ".join(f"{v:.2f}" for v in row[f"each:{test}"])
            out.append(f"- {row['setting']}, {test[5:]} per seed: {each}.")
    softs = [r for r in chosen if r["family"].startswith("softmax")]
    # softmax, and the softmax with a temperature when that is better on validation
    against = [soft] if soft else []
    if soft and (best := max(softs, key=lambda r: r["valid"])) is not soft:
        against.append(best)
    for base in against if test else []:
        name = f"{base['family']} {base['parameter'] or ''}".strip()
        for row in chosen:
            if row["family"].startswith("softmax"):
                continue
            gap = row[test] - base[test]
            out.append(
                f"- {row['family']} ({row['parameter'] or 'no parameter'}): {gap:+.2f} vs "
                f"{name} on {test[5:]} ({'not' if gap >= -1 else 'more than'} 1 point below "
                f"it), support {row['support']:.2f} vs {base['support']:.2f}."
            )
    for row in per_setting:
        if row["family"].startswith("softmax") and row["support_share"] < 0.999:
            out.append(
                f"- {row['setting']}'s weights are not all positive ({row['support']:.2f} per "
                "target token): its scores spread so far that exp underflows to exactly 0 in "
                "float32 (below about 1e-45 of the largest weight)."
            )
    return out + lin_support_finding(per_setting, grid)


def plot_heatmaps(rows: Sequence[TranslationRun], path: Path) -> None:
    """Fig. 8's analogue: one sentence's attention under every setting (first seed)."""
    plt = pyplot()
    shown = {}
    for row in sorted(rows, key=lambda r: r.seed, reverse=True):
        shown[(row.extra["direction"], row.setting)] = row
    panels = list(shown.values())
    cols = min(len(panels), 4)
    fig_rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(fig_rows, cols, figsize=(4.2 * cols, 4.2 * fig_rows), squeeze=False)
    cmap = plt.get_cmap("Blues").with_extremes(bad="white")
    for ax, row in zip(axes.flat, panels, strict=False):
        ex = row.extra["example"]
        weights = np.ma.masked_equal(np.asarray(ex["weights"]), 0.0)
        ax.imshow(weights, cmap=cmap, vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(ex["source"])), ex["source"], rotation=90, fontsize=6)
        ax.set_yticks(range(len(ex["target"])), ex["target"], fontsize=6)
        ax.set_title(f"{row.extra['direction']} {row.setting}", fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    fig.suptitle("Attention on one test sentence (white = exactly 0)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_curves(rows: Sequence[TranslationRun], path: Path) -> None:
    """Per epoch, each setting's first-seed run: training loss, validation score and, where
    recorded, the share of tokens attending to one piece; a colour per setting and a line
    style per direction."""
    plt = pyplot()
    first_seed = min(row.seed for row in rows)
    shown = [row for row in rows if row.seed == first_seed]
    # the share of tokens on one piece, where runs recorded it each epoch
    tracked = any("one_piece" in row.curves for row in shown)
    fig, axes = plt.subplots(1, 3 if tracked else 2, figsize=(16 if tracked else 11, 4))
    curves = {
        "loss": "training loss per token",
        "valid": "validation score (greedy)",
        "one_piece": "validation tokens with all attention on one piece",
    }
    # a colour per setting, a line style per direction: up to 20 settings stay apart
    settings = list(dict.fromkeys(row.setting for row in shown))
    directions = list(dict.fromkeys(row.extra["direction"] for row in shown))
    colours = plt.get_cmap("tab20").colors

    def line(row: TranslationRun, key: str) -> tuple[str, list[float], dict]:
        direction = row.extra["direction"]
        options = {
            "markersize": 3,
            "color": colours[settings.index(row.setting) % len(colours)],
            "linestyle": ("-", "--", ":")[directions.index(direction) % 3],
        }
        return f"{direction} {row.setting}", row.curves[key], options

    for ax, (key, ylabel) in zip(axes, curves.items(), strict=False):
        epoch_curves(ax, [line(row, key) for row in shown if key in row.curves])
        ax.set(xlabel="epoch", ylabel=ylabel)
    axes[-1].legend(*axes[1].get_legend_handles_labels(), fontsize=6, loc="upper left",
                    bbox_to_anchor=(1.02, 1.0))  # fmt: skip
    fig.tight_layout()
    save_figure(fig, path)


# main only trains (test scores come from run_translation): test-time fields would do nothing.
_TEST_TIME = ("beam", "length_penalty", "test_limit")


def build_parser() -> argparse.ArgumentParser:
    """The flags of :func:`main`: one run's attention, seed, corpus and config."""
    parser = argparse.ArgumentParser(
        prog="python -m sparsegen.experiments.translation", description=main.__doc__
    )
    parser.add_argument(
        "--mapping",
        default="softmax",
        help="the attention's mapping: softmax, sparsemax, sparsegen_lin, sparsehourglass, ... "
        "(default softmax)",
    )
    parser.add_argument("--lam", type=finite_number, help="sparsegen-lin's λ")
    parser.add_argument("--q", type=finite_number, help="sparsehourglass's q")
    parser.add_argument(
        "--temperature",
        type=finite_number,
        default=1.0,
        help="divide the scores by this (default 1)",
    )
    parser.add_argument("--seed", type=count, default=0, help="the run's seed (default 0)")
    parser.add_argument(
        "--direction",
        default="fr-en",
        choices=["fr-en", "en-fr"],
        help="the Multi30k direction (default fr-en)",
    )
    for split, instead in (("train", "Multi30k"), ("valid", "--train"), ("test", "--train")):
        parser.add_argument(
            f"--{split}",
            nargs=2,
            metavar=("SRC", "TGT"),
            help=f"your own {split} files (aligned lines) instead of {instead}'s",
        )
    parser.add_argument("--quick", action="store_true", help="the quick run's config")
    readers = {**CONFIG_READERS, "hidden_dim": even_positive_int}
    add_config_flags(
        parser, TranslationConfig, skip=_TEST_TIME, presets={"--quick": QUICK}, types=readers
    )
    parser.add_argument(
        "--save", type=output_file, help="write the trained state_dict here (rank 0)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """One training run on a corpus; under torchrun, distributed. Prints its scores (rank 0)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # an unknown mapping or a parameter out of its range, named before any training
        LuongAttention(
            1, mapping=args.mapping, lam=args.lam, q=args.q, temperature=args.temperature
        )
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    if (args.valid or args.test) and not args.train:
        parser.error("--valid and --test take the place of --train's: give --train too")
    try:  # the corpus is read before anything trains: a bad file is one line
        corpus = (
            files_corpus(args.train, args.valid or args.train, args.test or args.train)
            if args.train
            else multi30k(*args.direction.split("-"))
        )
    except (OSError, ValueError) as error:
        parser.error(str(error))
    rank, world = distributed()
    config = config_from_args(TranslationConfig, args, QUICK if args.quick else None)
    setting = Setting(args.mapping, args.mapping, args.lam, args.q, temperature=args.temperature)
    model, history = train_model(
        setting, args.seed, prepare(config, corpus), config, progress=rank == 0
    )
    if rank == 0:
        last = history.epochs[-1]["train_loss"] if history.epochs else None
        print(
            {"world_size": world, "valid": history.best_score, "epochs": len(history.epochs),
             "train_loss": last}
        )  # fmt: skip
        if args.save:
            torch.save(model.state_dict(), args.save)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
