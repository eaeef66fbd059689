r"""An attentional encoder–decoder (Luong et al. 2015, as OpenNMT builds it) with any mapping.

The model Laha et al. (2018, §5.2) put sparsegen into: a bidirectional LSTM
encoder, an LSTM decoder with *input feeding* (the previous attentional state
:math:`\tilde h_{t-1}` joins the input embedding) and global attention with the
"general" score,

$$
a_t = \rho\big(h_t^\top W \bar h_s / T\big)_s, \qquad
\tilde h_t = \tanh\big(W_c [\textstyle\sum_s a_{ts} \bar h_s;\, h_t]\big), \qquad
p(y_t \mid y_{<t}, x) = \operatorname{softmax}(W_o \tilde h_t),
$$

where :math:`\rho` is softmax, sparsemax, sparsegen-lin, sparsehourglass or any
mapping of :data:`sparsegen.nn.MAPPINGS` (:class:`sparsegen.nn.LuongAttention`).
Token ids follow :mod:`sparsegen.text`: 0 pads, 2 starts and 3 ends a sentence.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from sparsegen._validation import Parameter
from sparsegen.models._rnn import run_lstm
from sparsegen.nn import LuongAttention
from sparsegen.nn.attention import MappingSpec
from sparsegen.text import BOS, EOS, PAD, length_mask

__all__ = ["Memory", "Seq2Seq"]


class Memory(NamedTuple):
    """The encoded source: states ``(B, S, H)``, their attention keys, the keep mask ``(B, S)``
    and the decoder's initial ``(h, c)``."""

    states: torch.Tensor
    keys: torch.Tensor
    keep: torch.Tensor
    initial: tuple[torch.Tensor, torch.Tensor]

    def repeat(self, k: int) -> Memory:
        """Each source ``k`` times in a row (for beam search)."""
        h, c = self.initial
        return Memory(
            self.states.repeat_interleave(k, 0),
            self.keys.repeat_interleave(k, 0),
            self.keep.repeat_interleave(k, 0),
            (h.repeat_interleave(k, 1), c.repeat_interleave(k, 1)),
        )


class Seq2Seq(nn.Module):
    """Bidirectional-LSTM encoder, input-feeding LSTM decoder, global attention.

    Parameters
    ----------
    source_vocab, target_vocab : int
        Vocabulary sizes (id 0 is padding).
    embed_dim, hidden_dim, layers : int
        Embedding size, the decoder's state size (each encoder direction has
        half of it) and the number of LSTM layers of each side.
    dropout : float
        On embeddings, between layers and on :math:`\\tilde h_t`.
    attention, lam, q, learnable, temperature
        The attention mapping and its parameter (see
        :class:`sparsegen.nn.LuongAttention`).
    """

    def __init__(
        self,
        source_vocab: int,
        target_vocab: int,
        *,
        embed_dim: int = 256,
        hidden_dim: int = 256,
        layers: int = 1,
        dropout: float = 0.3,
        attention: MappingSpec = "softmax",
        lam: Parameter | None = None,
        q: Parameter | None = None,
        learnable: bool = False,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (two encoder directions); got {hidden_dim}")
        self.source_embedding = nn.Embedding(source_vocab, embed_dim, padding_idx=PAD)
        self.target_embedding = nn.Embedding(target_vocab, embed_dim, padding_idx=PAD)
        between = dropout if layers > 1 else 0.0
        self.encoder = nn.LSTM(
            embed_dim,
            hidden_dim // 2,
            layers,
            batch_first=True,
            bidirectional=True,
            dropout=between,
        )
        # cells, not nn.LSTM: input feeding runs the decoder one step at a time, where a cell
        # call is cheaper per step, forward and backward, on the CPU
        self.decoder = nn.ModuleList(
            nn.LSTMCell(embed_dim + hidden_dim if i == 0 else hidden_dim, hidden_dim)
            for i in range(layers)
        )
        self.between = nn.Dropout(between)
        self.attention = LuongAttention(
            hidden_dim,
            mapping=attention,
            lam=lam,
            q=q,
            learnable=learnable,
            temperature=temperature,
        )
        self.dropout = nn.Dropout(dropout)
        self.generator = nn.Linear(hidden_dim, target_vocab)
        self.hidden_dim = hidden_dim

    def encode(self, source: torch.Tensor, lengths: torch.Tensor) -> Memory:
        """Source ids ``(B, S)`` padded on the right, lengths ``(B,)`` ≥ 1."""
        if (lengths < 1).any():
            raise ValueError("every source sentence needs at least one token")
        embedded = self.dropout(self.source_embedding(source))
        states, (h, c) = run_lstm(self.encoder, embedded, lengths)
        keep = length_mask(lengths.to(source.device), source.shape[1])

        def joined(x: torch.Tensor) -> torch.Tensor:  # (layers·2, B, H/2) -> (layers, B, H)
            return torch.cat([x[0::2], x[1::2]], dim=-1)

        return Memory(states, self.attention.keys(states), keep, (joined(h), joined(c)))

    def step(
        self,
        tokens: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor],
        feed: torch.Tensor,
        memory: Memory,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """One decoding step: the attentional state :math:`\\tilde h_t` ``(B, H)`` (the
        next step's feed; :attr:`generator` turns it into logits), the new ``(h, c)``
        ``(layers, B, H)`` and the attention weights ``(B, S)``."""
        inputs = torch.cat([self.dropout(self.target_embedding(tokens)), feed], -1)
        hs, cs = [], []
        for i, cell in enumerate(self.decoder):
            h, c = cell(inputs if i == 0 else self.between(hs[-1]), (state[0][i], state[1][i]))
            hs.append(h)
            cs.append(c)
        attended, weights, _ = self.attention(hs[-1], memory.states, memory.keep, memory.keys)
        return self.dropout(attended), (torch.stack(hs), torch.stack(cs)), weights

    def forward(
        self, source: torch.Tensor, source_lengths: torch.Tensor, target_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: logits ``(B, T, V)`` for target inputs ``(B, T)`` (starting with
        BOS), and the attention weights ``(B, T, S)``."""
        memory = self.encode(source, source_lengths)
        state = memory.initial
        feed = memory.states.new_zeros(source.shape[0], self.hidden_dim)
        feeds, weights = [], []
        for t in range(target_in.shape[1]):
            feed, state, step_weights = self.step(target_in[:, t], state, feed, memory)
            feeds.append(feed)
            weights.append(step_weights)
        # one product with the output layer for all steps: cheaper than one per step
        return self.generator(torch.stack(feeds, 1)), torch.stack(weights, 1)

    @torch.no_grad()
    def translate(
        self,
        source: torch.Tensor,
        source_lengths: torch.Tensor,
        *,
        beam: int = 5,
        max_length: int | None = None,
        length_penalty: float = 1.0,
    ) -> list[list[int]]:
        """Beam search (``beam=1``: greedy); the target ids of each sentence, without BOS/EOS.

        Hypotheses are ranked by their log-probability divided by
        ``length ** length_penalty`` (``0``: raw log-probability). They never hold
        padding or BOS (the search does not extend a live hypothesis with either).
        ``max_length``: at most this many steps (default: twice the longest source, plus
        10; 0 gives empty translations).
        """
        if beam < 1:
            raise ValueError(f"beam must be at least 1; got {beam}")
        if max_length is not None and max_length < 0:
            raise ValueError(f"max_length must be at least 0; got {max_length}")
        if not math.isfinite(length_penalty):  # (NaN ranks every hypothesis alike)
            raise ValueError(f"length_penalty must be a finite number; got {length_penalty}")
        batch = source.shape[0]
        if batch == 0:  # (no sentence: nothing to search, and no longest source)
            return []
        if max_length is None:
            max_length = int(source_lengths.max()) * 2 + 10
        memory = self.encode(source, source_lengths).repeat(beam)
        state = memory.initial
        feed = memory.states.new_zeros(batch * beam, self.hidden_dim)
        tokens = torch.full((batch * beam,), BOS, dtype=torch.long, device=source.device)
        scores = torch.full((batch, beam), -torch.inf, device=source.device)
        scores[:, 0] = 0.0  # one live hypothesis per sentence at the start
        history = torch.empty(batch, beam, 0, dtype=torch.long, device=source.device)
        lengths = torch.zeros(batch, beam, device=source.device)
        done = torch.zeros(batch, beam, dtype=torch.bool, device=source.device)
        rows = torch.arange(batch, device=source.device).unsqueeze(1)
        for _ in range(max_length):
            feed, state, _ = self.step(tokens, state, feed, memory)
            log_probs = self.generator(feed).float().log_softmax(-1).view(batch, beam, -1)
            log_probs[..., [PAD, BOS]] = -torch.inf  # no live hypothesis extends with them
            # a finished hypothesis only extends with padding, at no cost
            ended = torch.full_like(log_probs[0, 0], -torch.inf)
            ended[PAD] = 0.0
            log_probs = torch.where(done.unsqueeze(-1), ended, log_probs)
            total = (scores.unsqueeze(-1) + log_probs).view(batch, -1)
            scores, flat = total.topk(beam, dim=1)
            origin, tokens_2d = flat // log_probs.shape[-1], flat % log_probs.shape[-1]
            done = done[rows, origin]
            lengths = lengths[rows, origin] + (~done).float()
            history = torch.cat([history[rows, origin], tokens_2d.unsqueeze(-1)], -1)
            done = done | (tokens_2d == EOS)
            pick = (rows * beam + origin).view(-1)
            state = (state[0][:, pick], state[1][:, pick])
            feed, tokens = feed[pick], tokens_2d.view(-1)
            if bool(done.all()):
                break
        ranked = scores / lengths.clamp(min=1) ** length_penalty
        ranked = torch.where(torch.isfinite(scores), ranked, -torch.inf)
        best = history[torch.arange(batch), ranked.argmax(1)]
        out = []
        for row in best.tolist():
            kept = row[: row.index(EOS)] if EOS in row else row
            out.append([t for t in kept if t != PAD])
        return out
