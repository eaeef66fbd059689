"""Running an LSTM over right-padded batches, shared by the models."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def run_lstm(lstm: nn.LSTM, embedded: torch.Tensor, lengths: torch.Tensor, state=None):
    """States ``(B, L, H)`` (zeros past each length) and the final ``(h, c)`` at each
    sequence's true end, for a ``batch_first`` LSTM over right-padded ``embedded``."""
    packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
    outputs, final = lstm(packed, state)
    states, _ = pad_packed_sequence(outputs, batch_first=True, total_length=embedded.shape[1])
    return states, final
