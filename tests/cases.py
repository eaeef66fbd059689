"""The public tensor callables that the PyTorch-integration tests run under compile, export
and functorch: every mapping (with its parameter fixed or per slice, masked, along another
dim), every loss, every module."""

import functools

import torch

import sparsegen as sg
from sparsegen import losses
from sparsegen import nn as snn


def scores(shape=(4, 6), positive=False, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=dtype)
    return x.abs() + 0.1 if positive else x


def _lam(x):
    return torch.linspace(-0.5, 0.8, x.shape[0], dtype=x.dtype)[:, None]


def _q(x):
    return torch.linspace(0.2, 2.0, x.shape[0], dtype=x.dtype)[:, None]


def _mask(x):
    keep = torch.ones_like(x, dtype=torch.bool)
    keep[:, 1:2] = False  # (slices, not indices: any shape, empty ones too)
    keep[:1, :] = False  # a fully masked row: zeros
    return keep


# name -> (f(x), needs positive scores, differentiable)
MAPPINGS = {
    "softmax": (sg.softmax, False, True),
    "hardmax": (sg.hardmax, False, False),
    "sparsemax": (sg.sparsemax, False, True),
    "sparsemax_dim0": (functools.partial(sg.sparsemax, dim=0), False, True),
    "sparsemax_masked": (lambda x: sg.sparsemax(x, mask=_mask(x)), False, True),
    "sparsemax_sort": (functools.partial(sg.sparsemax, algorithm="sort"), False, True),
    "sparsemax_michelot": (functools.partial(sg.sparsemax, algorithm="michelot"), False, True),
    "sparsegen_tanh": (lambda x: sg.sparsegen(x, torch.tanh, lam=0.5), False, True),
    "sparsegen_lin": (lambda x: sg.sparsegen_lin(x, lam=0.6), False, True),
    "sparsegen_lin_per_row": (lambda x: sg.sparsegen_lin(x, lam=_lam(x)), False, True),
    "sparsegen_lin_masked": (lambda x: sg.sparsegen_lin(x, lam=0.3, mask=_mask(x)), False, True),
    "sparsegen_exp": (lambda x: sg.sparsegen_exp(x, lam=0.3), False, True),
    "sparsegen_sq": (lambda x: sg.sparsegen_sq(x, lam=-0.5), False, True),
    "sparsecone": (lambda x: sg.sparsecone(x, q=2.0), True, True),
    "sparsecone_per_row": (lambda x: sg.sparsecone(x, q=_q(x)), True, True),
    "sparsehourglass": (lambda x: sg.sparsehourglass(x, q=0.5), False, True),
    "sparsehourglass_dim0": (lambda x: sg.sparsehourglass(x, q=0.5, dim=0), False, True),
    "sparsehourglass_per_row": (lambda x: sg.sparsehourglass(x, q=_q(x)), False, True),
    "sparsehourglass_masked": (lambda x: sg.sparsehourglass(x, q=1.0, mask=_mask(x)), False, True),
    "sum_normalization_pp": (sg.sum_normalization_pp, False, True),
    "spherical_softmax": (sg.spherical_softmax, False, True),
    "sum_normalization": (sg.sum_normalization, True, True),
}


def _targets(x):
    return torch.arange(x.shape[0]) % x.shape[-1]


def _labels(x):
    y = torch.zeros_like(x)
    y[:, 0] = 1.0
    y[::2, 2] = 1.0
    return y


# name -> f(x): every loss, with index and label targets
LOSSES = {
    "sparsemax_loss_index": lambda x: losses.sparsemax_loss(x, _targets(x)),
    "sparsemax_loss_labels": lambda x: losses.sparsemax_loss(x, _labels(x)),
    "softmax_loss": lambda x: losses.softmax_loss(x, _targets(x)),
    "logistic_loss": lambda x: losses.logistic_loss(x, _labels(x)),
    "sparsegen_lin_hinge_loss": lambda x: losses.sparsegen_lin_hinge_loss(x, _labels(x), lam=0.3),
    "sparsehourglass_hinge_loss": lambda x: losses.sparsehourglass_hinge_loss(x, _labels(x), q=1.0),
    "SparsemaxLoss": lambda x: snn.SparsemaxLoss()(x, _targets(x)),
}


class Attention(torch.nn.Module):
    """Self-attention with padding: MultiheadAttention as models use it."""

    def __init__(self, mapping="sparsemax", **kwargs):
        super().__init__()
        self.attention = snn.MultiheadAttention(8, 2, batch_first=True, mapping=mapping, **kwargs)

    def forward(self, x):
        padding = torch.zeros(x.shape[:2], dtype=torch.bool)
        padding[0, -1] = True
        return self.attention(x, x, x, key_padding_mask=padding, need_weights=True)


def attention_input(seed=0):
    return torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(seed))
