r"""Natural language inference with sparse attention (Martins & Astudillo 2016, §4.3).

Rocktäschel et al.'s (2016) conditional encoding: an LSTM reads the premise
(states :math:`h_1 … h_L`), a second LSTM reads the hypothesis starting from the
premise's final state (last state :math:`h_N`), and the hypothesis attends over
the premise:

$$
z_t = v^\top \tanh(W^{pm} h_t + W^{hm} h_N + b^m), \quad p = \rho(z), \quad
r = \sum_t p_t h_t, \quad u = \tanh(W^{pu} r + W^{hu} h_N + b^u)
$$

with :math:`\rho` softmax, sparsemax or any mapping of the library, and a 3-way
classifier on :math:`u`. Without attention (NoAttention) :math:`r` is the
premise's last state :math:`h_L`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from sparsegen._validation import Parameter
from sparsegen.models._rnn import run_lstm
from sparsegen.nn import AdditiveAttention
from sparsegen.nn.attention import MappingSpec
from sparsegen.text import length_mask

__all__ = ["NLIClassifier", "NLIOutput", "glove_embeddings"]


class NLIOutput(NamedTuple):
    """Class scores ``(B, 3)`` and the attention over the premise ``(B, L)`` (None without)."""

    logits: torch.Tensor
    weights: torch.Tensor | None


class NLIClassifier(nn.Module):
    """Premise/hypothesis LSTMs with attention of the hypothesis over the premise.

    Parameters
    ----------
    vocab_size : int
        Token ids are ``0 … vocab_size − 1``; ``padding_idx`` is padding.
    embed_dim, hidden_dim : int
        Sizes of the embeddings and of both LSTMs' states.
    attention : mapping name, callable, module or None
        The attention mapping (any of :data:`sparsegen.nn.MAPPINGS`, e.g.
        ``"softmax"``, ``"sparsemax"``, ``"sparsegen_lin"``); ``None`` is
        NoAttention.
    lam, q, learnable
        The mapping's parameter (as in :class:`sparsegen.nn.AdditiveAttention`).
    dropout : float
        On the embeddings and on :math:`u`.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        embed_dim: int = 100,
        hidden_dim: int = 100,
        attention: MappingSpec | None = "sparsemax",
        lam: Parameter | None = None,
        q: Parameter | None = None,
        learnable: bool = False,
        dropout: float = 0.1,
        num_classes: int = 3,
        padding_idx: int = 0,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.premise_lstm = nn.LSTM(embed_dim, hidden_dim, batch_first=True)
        self.hypothesis_lstm = nn.LSTM(embed_dim, hidden_dim, batch_first=True)
        self.attention = (
            None
            if attention is None
            else AdditiveAttention(hidden_dim, mapping=attention, lam=lam, q=q, learnable=learnable)
        )
        self.premise_out = nn.Linear(hidden_dim, hidden_dim, bias=True)  # W^pu, b^u
        self.hypothesis_out = nn.Linear(hidden_dim, hidden_dim, bias=False)  # W^hu
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_dim, num_classes)

    def forward(
        self,
        premise: torch.Tensor,
        premise_lengths: torch.Tensor,
        hypothesis: torch.Tensor,
        hypothesis_lengths: torch.Tensor,
    ) -> NLIOutput:
        """Token ids ``(B, L)``/``(B, N)`` padded on the right, lengths ``(B,)`` ≥ 1."""
        if (premise_lengths < 1).any() or (hypothesis_lengths < 1).any():
            raise ValueError("every premise and hypothesis needs at least one token")
        states, final = run_lstm(
            self.premise_lstm, self.dropout(self.embedding(premise)), premise_lengths
        )
        _, (h_n, _) = run_lstm(
            self.hypothesis_lstm,
            self.dropout(self.embedding(hypothesis)),
            hypothesis_lengths,
            final,
        )
        h_n = h_n[-1]
        if self.attention is None:
            summary, weights = final[0][-1], None
        else:
            keep = length_mask(premise_lengths.to(premise.device), premise.shape[1])
            summary, weights, _ = self.attention(states, h_n, keep)
        u = torch.tanh(self.premise_out(summary) + self.hypothesis_out(h_n))
        return NLIOutput(self.classifier(self.dropout(u)), weights)


def glove_embeddings(
    path: str | os.PathLike, vocabulary: list[str], dim: int
) -> tuple[torch.Tensor, int]:
    """An embedding matrix for ``vocabulary`` from a GloVe-format text file (``word v1 … vd``
    a line; plain or gzipped; a word2vec-style first line, ``count size``, is skipped).

    Subword pieces are looked up without SentencePiece's word-start mark
    ``▁`` and in lower case as a fallback; pieces not found keep a small random
    vector. Returns the ``(len(vocabulary), dim)`` matrix and how many were found.
    """
    wanted: dict[str, list[int]] = {}
    for i, piece in enumerate(vocabulary):
        word = piece.removeprefix("▁")
        for key in dict.fromkeys((word, word.lower())):
            wanted.setdefault(key, []).append(i)
    matrix = np.random.default_rng(0).normal(0, 0.1, (len(vocabulary), dim)).astype(np.float32)
    found = np.zeros(len(vocabulary), dtype=bool)
    first = True
    for number, word, rest in _glove_lines(path):
        if word not in wanted and not first:  # (the first line is read: is it GloVe?)
            continue
        first = False
        values = np.array(rest.split(), dtype=np.float32)
        if values.shape != (dim,):
            raise ValueError(f"{path}, line {number}: {values.size} values, expected {dim}")
        if not np.isfinite(values).all():  # (NaN trains every model into NaN at once)
            raise ValueError(f"{path}, line {number}: a value that is not a finite float32 number")
        for i in wanted.get(word, ()):
            if not found[i] or vocabulary[i].removeprefix("▁") == word:
                matrix[i], found[i] = values, True
    return torch.from_numpy(matrix), int(found.sum())


def glove_size(path: str | os.PathLike) -> int | None:
    """The number of values of a GloVe-format file's first vector; None where the file is
    empty or its first line is not a word and numbers."""
    for _, _, rest in _glove_lines(path):
        try:
            return np.array(rest.split(), dtype=np.float32).size or None
        except ValueError:
            return None
    return None


def _glove_lines(path: str | os.PathLike) -> Iterator[tuple[int, str, str]]:
    """``(line number, word, its values' text)`` of a GloVe-format file, without a
    word2vec-style first line (two integers: the count of vectors and their size)."""
    from sparsegen.datasets.text import text_lines  # (here: the models need no data reader)

    for number, line in text_lines(Path(path)):
        word, _, rest = line.partition(" ")
        if number == 1 and word.isdigit() and rest.strip().isdigit():
            continue
        yield number, word, rest
