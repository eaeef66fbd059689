"""Models with sparse attention, and the training loop they share.

- :class:`Seq2Seq`: the attentional encoder–decoder of Laha et al.'s translation
  experiment (bidirectional LSTM, input feeding, Luong attention, beam search).
- :class:`NLIClassifier`: Rocktäschel et al.'s entailment model with the
  attention of Martins & Astudillo's SNLI experiment (or none).
- :func:`fit`: AdamW, plateau decay, early stopping, checkpoint/resume, DDP.

The multi-label estimator lives in :mod:`sparsegen.linear_model`.
"""

from sparsegen.models.nli import NLIClassifier, NLIOutput, glove_embeddings, glove_size
from sparsegen.models.seq2seq import Memory, Seq2Seq
from sparsegen.models.training import History, TrainingConfig, fit, resolve_device

__all__ = [
    "History",
    "Memory",
    "NLIClassifier",
    "NLIOutput",
    "Seq2Seq",
    "TrainingConfig",
    "fit",
    "glove_embeddings",
    "glove_size",
    "resolve_device",
]
