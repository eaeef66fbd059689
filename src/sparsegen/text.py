"""Text to tensors for the attention models: subword tokenisation and length-bucketed batches.

Tokenisation is SentencePiece (Kudo & Richardson 2018), trained offline on the
training split; the trained model travels inside checkpoints as bytes, so a
saved model decodes without the corpus it was trained on.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from types import ModuleType

import numpy as np
import torch

from sparsegen._extras import needs_extra

__all__ = ["PAD", "SubwordTokenizer", "bucket_batches", "length_mask", "pad_sequences"]

PAD = 0
"""The padding token's id in every :class:`SubwordTokenizer` (then unknown 1, begin 2 and
end of sentence 3)."""
UNK, BOS, EOS = 1, 2, 3


def _sentencepiece() -> ModuleType:
    """SentencePiece, imported on first use (an extra: ``sparsegen[experiments]``)."""
    with needs_extra("experiments", "sparsegen.text.SubwordTokenizer"):
        import sentencepiece

    return sentencepiece


class SubwordTokenizer:
    """A SentencePiece subword model with fixed special ids (pad 0, unk 1, bos 2, eos 3).

    Build one with :meth:`train` on raw sentences, or :meth:`from_bytes` from
    :meth:`to_bytes`. Characters never seen in training fall back to their
    UTF-8 bytes, so no input is unknown.
    """

    def __init__(self, model: bytes) -> None:
        sentencepiece = _sentencepiece()

        self._model = model
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_proto=model)
        except RuntimeError as error:
            raise ValueError(f"not a SentencePiece model ({error})") from None
        if self._sp.get_piece_size() == 0:  # (empty bytes load as a model of no piece)
            raise ValueError("not a SentencePiece model: it holds no piece")

    @classmethod
    def train(
        cls,
        sentences: Iterable[str],
        vocab_size: int = 4000,
        *,
        model_type: str = "unigram",
    ) -> SubwordTokenizer:
        """Train on ``sentences`` (vocabulary of at most ``vocab_size`` pieces).

        A corpus too small for the requested size gets a smaller vocabulary;
        one with no text at all raises ``ValueError``. The 256 byte pieces and
        every character seen are always in the vocabulary, whatever
        ``vocab_size`` says. Every sentence counts, however long.
        """
        sentencepiece = _sentencepiece()

        if isinstance(sentences, str):  # (one sentence per character, as encode would read it)
            raise TypeError("train takes a list of sentences; for one, pass [sentence]")
        text = [s for s in sentences if s.strip()]
        if not text:
            raise ValueError("cannot train a tokenizer on an empty corpus (no non-empty line)")
        model = io.BytesIO()
        vocab_size = max(vocab_size, 4 + 256 + len(set("".join(text))) + 1)
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=iter(text),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=1.0,
                # SentencePiece silently skips sentences over this many bytes (default 4192)
                max_sentence_length=max(4192, *(len(s.encode("utf-8")) for s in text)),
                byte_fallback=True,
                hard_vocab_limit=False,
                pad_id=PAD,
                unk_id=UNK,
                bos_id=BOS,
                eos_id=EOS,
                num_threads=1,
                minloglevel=2,
            )
        except RuntimeError as error:
            raise ValueError(
                f"could not train a {vocab_size}-piece tokenizer on {len(text)} sentences "
                f"(SentencePiece: {error}); give more text or a smaller vocab_size"
            ) from None
        return cls(model.getvalue())

    @classmethod
    def from_bytes(cls, model: bytes) -> SubwordTokenizer:
        return cls(model)

    def to_bytes(self) -> bytes:
        return self._model

    def __len__(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, sentences: Sequence[str]) -> list[list[int]]:
        """Piece ids per sentence, without bos/eos (a list of sentences: a string alone would
        be read as one sentence per character, so it is a ``TypeError``)."""
        if isinstance(sentences, str):
            raise TypeError("encode takes a list of sentences; for one, pass [sentence]")
        return self._sp.encode(list(sentences))

    def pieces(self, sentence: str) -> list[str]:
        """The subword pieces of one sentence (``▁`` marks a word start)."""
        return self._sp.encode(sentence, out_type=str)

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Detokenised text per id sequence; special ids are skipped. SentencePiece's word
        mark ``▁`` (U+2581) in a text comes back as a space."""
        if len(ids) == 0:  # (SentencePiece's decode of [] is one empty string)
            return []
        return self._sp.decode([[int(i) for i in seq if int(i) > EOS] for seq in ids])


def pad_sequences(
    sequences: Sequence[Sequence[int]], *, bos: bool = False, eos: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``(N, L)`` int64 tensor padded with ``PAD`` and the lengths ``(N,)``."""
    rows = [([BOS] if bos else []) + list(seq) + ([EOS] if eos else []) for seq in sequences]
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.int64)
    out = torch.full((len(rows), max((len(row) for row in rows), default=0)), PAD)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
    return out, lengths


def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``(N, width)`` boolean, True at the first ``lengths[i]`` positions of row ``i``."""
    return torch.arange(width, device=lengths.device) < lengths.unsqueeze(1)


def bucket_batches(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    bucket: int = 50,
) -> Iterator[np.ndarray]:
    """Indices in batches of similar length (little padding), in shuffled order.

    The examples are shuffled, cut into chunks of ``bucket`` batches, sorted by
    length within each chunk and cut into batches, whose order is shuffled
    again; ``shuffle=False`` sorts everything by length (for evaluation).
    """
    if batch_size < 1 or bucket < 1:
        raise ValueError(
            f"bucket_batches: batch_size and bucket must be at least 1; got {batch_size}, {bucket}"
        )
    lengths = np.asarray(lengths)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths)) if shuffle else np.arange(len(lengths))
    chunk = batch_size * bucket if shuffle else max(len(lengths), 1)
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    yield from batches
