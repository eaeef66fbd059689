r"""Attention modules whose mapping is any of the library's: multi-head and additive.

:class:`MultiheadAttention` is a drop-in for :class:`torch.nn.MultiheadAttention`
(same constructor, forward, masks and parameter names; it loads that module's
``state_dict``), with the mapping chosen by ``mapping=``. :class:`AdditiveAttention`
is the attention of Martins & Astudillo's NLI model.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as torch_functional
from torch import nn
from torch.utils.checkpoint import checkpoint

from sparsegen._ops import exporting
from sparsegen._validation import ParameterLike, check_int
from sparsegen.attention import (
    AttentionResult,
    attend,
    attend_fast,
    causal_keep,
    check_implementation,
    combine_masks,
    split_mask,
)
from sparsegen.nn._scripting import NotScriptable
from sparsegen.nn.mappings import mapping_module

__all__ = [
    "AdditiveAttention",
    "LuongAttention",
    "MultiheadAttention",
    "attend_in_blocks",
    "sparsify_attention",
]

MappingSpec = str | Callable[..., torch.Tensor] | nn.Module | type[nn.Module]


def _check_sizes(embed_dim: int, num_heads: int, dropout: float, **dims: int | None) -> None:
    check_int(embed_dim, "embed_dim")
    check_int(num_heads, "num_heads")
    if embed_dim <= 0 or num_heads <= 0:
        raise ValueError(f"embed_dim and num_heads must be > 0; got {embed_dim} and {num_heads}")
    for name, size in dims.items():  # kdim, vdim
        if size is not None and check_int(size, name) <= 0:
            raise ValueError(f"{name} must be > 0; got {size}")
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must be in [0, 1]; got {dropout}")


def _check_per_slice(per_head: bool, **parameters: ParameterLike | None) -> None:
    """A tensor (or list) ``lam`` or ``q`` must give one value a slice of the scores
    ``(N, H, L, S)``: a last dimension of 1, or one value a head with ``per_head``, which
    shapes it so (a list of H values would otherwise meet the keys' dimension)."""
    for name, value in parameters.items():
        if per_head or value is None or isinstance(value, numbers.Real):
            continue
        shape = tuple(torch.as_tensor(value).shape)
        if shape and shape[-1] != 1:
            raise ValueError(
                f"MultiheadAttention: {name} of shape {shape} does not give one value a slice "
                f"of the scores (N, num_heads, L, S): pass per_head=True for one a head"
            )


class MultiheadAttention(NotScriptable, nn.Module):
    r"""Multi-head attention with a sparse (or any) mapping; a drop-in for torch's.

    $$
    \mathrm{head}_h = \rho\big(Q W^Q_h (K W^K_h)^\top/\sqrt{d} + M\big)\, V W^V_h,
    \qquad \mathrm{out} = [\mathrm{head}_1, …, \mathrm{head}_H]\, W^O
    $$

    Constructor, ``forward`` and parameter names (``in_proj_weight``,
    ``in_proj_bias``, ``q/k/v_proj_weight``, ``bias_k``, ``bias_v``,
    ``out_proj``) are those of :class:`torch.nn.MultiheadAttention`, so a
    state_dict of that module loads unchanged (the mapping's own parameter,
    absent there, keeps its initial value). With ``mapping="softmax"`` the two
    compute the same function, but for float masks holding finite values at most
    ``-1e4``, which exclude their keys here (see Notes) and are numbers to torch.

    Parameters
    ----------
    embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first
        As in :class:`torch.nn.MultiheadAttention`; ``embed_dim`` must be
        divisible by ``num_heads``.
    mapping : str, callable or nn.Module
        ``"sparsemax"`` (default), ``"softmax"``, ``"sparsegen_lin"``,
        ``"sparsehourglass"``, any name of :data:`sparsegen.nn.MAPPINGS`, a
        function of the library, or a module (see
        :func:`sparsegen.nn.mapping_module`).
    lam, q : float or Tensor, optional
        The mapping's parameter (``lam < 1`` for sparsegen-lin/-exp/-sq,
        ``q ≥ 0`` for sparsecone/sparsehourglass).
    learnable : bool
        Make ``lam`` / ``q`` an ``nn.Parameter`` (``mapping.log_one_minus_lam``
        or ``mapping.log_q``), trained in an unconstrained form.
    per_head : bool
        One value of ``lam`` / ``q`` per head (a ``(num_heads, 1, 1)`` tensor)
        instead of one shared by all heads.
    implementation : {"auto", "fused", "unfused"}
        Without ``need_weights``, softmax runs in torch's fused SDPA and the
        sparse mappings in the fused kernel where it applies (``"auto"``, see
        :func:`sparsegen.attention.scaled_dot_product_attention`); ``"unfused"``
        builds the scores in blocks of queries instead.
    device, dtype : optional
        Where the weights (and a parameter the mapping holds) are made, as torch
        modules' factory arguments.

    Notes
    -----
    Masks follow torch's module: a boolean ``key_padding_mask`` (``(N, S)``,
    or ``(S,)`` unbatched) or ``attn_mask`` (``(L, S)`` or ``(N·num_heads, L,
    S)``) is True where a position is *ignored*; a float mask is added to the
    scores (``-inf``, and values at most ``-1e4``, such as ``-1e9`` or ``finfo.min``,
    ignore). Boolean and float masks may be mixed. A query
    that ignores every key gets zero weights and a zero attention output (the
    output is then ``out_proj``'s bias), where torch gives NaN. ``is_causal``
    without an ``attn_mask`` builds the causal mask (torch requires one).

    Inside torch's Transformer layers (``self_attn`` / ``multihead_attn`` of
    :class:`torch.nn.TransformerEncoderLayer`, ``TransformerDecoderLayer``,
    ``nn.Transformer``) it is the mapping chosen here that runs, in training and
    in eval, with or without grad; :func:`sparsify_attention` swaps it into an
    existing model.
    """

    # torch's Transformer layers read this flag of their attention module to
    # choose their fused inference kernels, which run softmax attention on the
    # module's weights. False keeps them on the path that calls this forward.
    _qkv_same_embed_dim = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        mapping: MappingSpec = "sparsemax",
        lam: ParameterLike | None = None,
        q: ParameterLike | None = None,
        learnable: bool = False,
        per_head: bool = False,
        implementation: str = "auto",
    ) -> None:
        super().__init__()
        _check_sizes(embed_dim, num_heads, dropout, kdim=kdim, vdim=vdim)
        _check_per_slice(lam=lam, q=q, per_head=per_head)
        check_implementation(implementation)
        self.implementation = implementation
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self._packed_in_proj = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        self._make_in_proj(bias, factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, embed_dim, **factory))
            self.bias_v = nn.Parameter(torch.empty(1, 1, embed_dim, **factory))
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = add_zero_attn
        self.mapping = mapping_module(
            mapping,
            lam=lam,
            q=q,
            learnable=learnable,
            parameter_shape=(num_heads, 1, 1) if per_head else (),
            **factory,
        )
        self._reset_parameters()
        self.register_load_state_dict_pre_hook(_keep_mapping_parameters)

    def _make_in_proj(self, bias: bool, factory: dict) -> None:
        """The input projections under torch's names: one packed weight when query, key and
        value share ``embed_dim``, else three; the others are registered as None."""
        embed_dim = self.embed_dim
        if self._packed_in_proj:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                self.register_parameter(name, None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, self.vdim, **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)

    def _reset_parameters(self) -> None:
        # torch.nn.MultiheadAttention's initialisation.
        if self._packed_in_proj:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            for weight in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                nn.init.xavier_uniform_(weight)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
        *,
        need_support: bool = False,
    ) -> (
        tuple[torch.Tensor, torch.Tensor | None]
        | tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]
    ):
        """Attend; returns ``(output, weights)`` as torch's module does.

        ``query`` is ``(L, N, E)`` (``(N, L, E)`` with ``batch_first``) or
        ``(L, E)`` unbatched; ``key`` and ``value`` likewise with length ``S``.
        ``weights`` (when ``need_weights``) are ``(N, L, S)`` averaged over
        heads, or ``(N, num_heads, L, S)`` with ``average_attn_weights=False``.
        ``need_support=True`` appends each head's support size, ``(N,
        num_heads, L)``: how many keys each query attends to.
        """
        for name, tensor in (("query", query), ("key", key), ("value", value)):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{name} must be a tensor; got {type(tensor).__name__}")
        if query.is_nested or key.is_nested or value.is_nested:
            if need_weights or need_support or key_padding_mask is not None:
                raise ValueError(
                    "nested-tensor inputs (which torch's TransformerEncoder packs in its fast "
                    "path) are taken without weights, support or a key_padding_mask: their "
                    "lengths are the padding"
                )
            return self._forward_nested(query, key, value, attn_mask, is_causal), None
        batched = query.dim() == 3
        self_attention = query is key and key is value
        query, key, value = self._batched_first(query, key, value)
        n, length, source_length = query.shape[0], query.shape[1], key.shape[1]
        self._check_shapes(query, key, value)
        q, k, v = self._project(query, key, value, self_attention)
        k, v = self._with_extra_keys(k, v)
        keep, bias = self._masks(
            key_padding_mask, attn_mask, is_causal, batched, n, length, source_length
        )
        dropout = self.dropout if self.training else 0.0
        if need_weights or need_support:
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            heads, weights, support = attend(
                scores, v, keep, bias, self.mapping, dropout, need_support
            )
        else:
            heads = self._attend_without_weights(q, k, v, keep, bias, dropout)
        output = self.out_proj(heads.transpose(1, 2).reshape(n, length, self.embed_dim))
        output = self._caller_layout(output, batched)
        if need_weights:
            weights = weights.mean(1) if average_attn_weights else weights
            weights = weights if batched else weights.squeeze(0)
        else:
            weights = None
        if not need_support:
            return output, weights
        return output, weights, support if batched else support.squeeze(0)

    def _forward_nested(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
    ) -> torch.Tensor:
        """The output for nested (batch-first, ragged) inputs, as nested as the query: the
        batch padded, its padding keys masked out. A :class:`torch.nn.TransformerEncoder`
        built around torch's attention packs its input so in eval without grad, and still
        does after its attention is replaced (:func:`sparsify_attention` turns that off)."""
        if not (query.is_nested and key.is_nested and value.is_nested and self.batch_first):
            raise ValueError(
                "nested-tensor inputs must be batch first (batch_first=True) and all nested; "
                f"got query, key, value nested: {query.is_nested}, {key.is_nested}, "
                f"{value.is_nested}, batch_first={self.batch_first}"
            )
        lengths, nested_layout = [t.shape[0] for t in query.unbind()], query.layout
        key_lengths = [t.shape[0] for t in key.unbind()]
        query, key, value = (torch.nested.to_padded_tensor(t, 0.0) for t in (query, key, value))
        positions = torch.arange(key.shape[1], device=key.device)
        padding = torch.stack([positions >= n for n in key_lengths])
        padded, _ = self.forward(query, key, value, padding, False, attn_mask, is_causal=is_causal)
        rows = [o[:n] for o, n in zip(padded, lengths, strict=True)]
        return torch.nested.as_nested_tensor(rows, layout=nested_layout)

    def _attend_without_weights(self, q, k, v, keep, bias, dropout):
        """The heads' outputs by a fused kernel where one applies, else in blocks of queries."""
        scale = self.head_dim**-0.5
        if self.implementation != "unfused":
            heads = attend_fast(
                q, k, v, keep, bias, self.mapping, dropout_p=dropout, is_causal=False,
                scale=scale, enable_gqa=False, implementation=self.implementation,
            )  # fmt: skip
            if heads is not None:
                return heads
        return attend_in_blocks(q * scale, k, v, keep, bias, self.mapping, dropout)

    def _batched_first(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The inputs as ``(N, length, features)``, whether given unbatched or sequence first."""
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                "query, key and value must all be 3-D (batched) or all 2-D (unbatched); got "
                f"shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
            )
        if query.dim() == 2:
            return query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        if not self.batch_first:
            return query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        return query, key, value

    def _caller_layout(self, output: torch.Tensor, batched: bool) -> torch.Tensor:
        """A batch-first ``(N, L, E)`` output back in the layout the inputs came in."""
        if not batched:
            return output.squeeze(0)
        if not self.batch_first:
            return output.transpose(0, 1)
        return output

    def _check_shapes(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        expected = (self.embed_dim, self.kdim, self.vdim)
        got = (query.shape[-1], key.shape[-1], value.shape[-1])
        if got != expected:
            raise ValueError(
                f"expected query, key, value feature sizes {expected} (embed_dim, kdim, vdim); "
                f"got {got}"
            )
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ValueError(
                "key and value must have the same batch size and length, and the query's "
                f"batch size; got query {tuple(query.shape)}, key {tuple(key.shape)}, "
                f"value {tuple(value.shape)} (batch first)"
            )

    def _project(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, self_attention: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three projections, split into heads: ``(N, H, length, head_dim)``; one
        packed product for self-attention, as torch's module computes it."""
        if self._packed_in_proj:
            weights = self.in_proj_weight.chunk(3)
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        biases = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        if self._packed_in_proj and self_attention:
            packed = torch_functional.linear(query, self.in_proj_weight, self.in_proj_bias)
            projected = list(packed.chunk(3, dim=-1))
        else:
            projected = [
                torch_functional.linear(x, w, b)
                for x, w, b in zip((query, key, value), weights, biases, strict=True)
            ]
        if self.bias_k is not None:
            n = query.shape[0]
            projected[1] = torch.cat([projected[1], self.bias_k.expand(n, 1, -1)], dim=1)
            projected[2] = torch.cat([projected[2], self.bias_v.expand(n, 1, -1)], dim=1)
        return tuple(
            x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2) for x in projected
        )

    def _with_extra_keys(
        self, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.add_zero_attn:
            return k, v
        zeros = k.new_zeros(*k.shape[:2], 1, self.head_dim)
        return torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)

    def _masks(
        self,
        key_padding_mask: torch.Tensor | None,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        batched: bool,
        n: int,
        length: int,
        source_length: int,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """torch's mask conventions as ``(keep, bias)`` broadcastable to ``(N, H, L, S')``."""
        for name, mask in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
            if mask is not None and not isinstance(mask, torch.Tensor):  # (before its shape)
                raise TypeError(f"{name} must be a tensor; got {type(mask).__name__}")
        parts = []
        if key_padding_mask is not None:
            expected = (n, source_length) if batched else (source_length,)
            if tuple(key_padding_mask.shape) != expected:
                raise ValueError(
                    f"key_padding_mask must have shape {expected} (batch, source length); "
                    f"got {tuple(key_padding_mask.shape)}"
                )
            keep, bias = split_mask(
                key_padding_mask, true_means_ignore=True, name="key_padding_mask"
            )
            parts.append(tuple(None if t is None else t.reshape(n, 1, 1, -1) for t in (keep, bias)))
        if attn_mask is not None:
            shapes = {2: (length, source_length), 3: (n * self.num_heads, length, source_length)}
            if tuple(attn_mask.shape) != shapes.get(attn_mask.dim()):
                raise ValueError(
                    f"attn_mask must have shape {shapes[2]} or {shapes[3]} "
                    f"((N·num_heads, L, S)); got {tuple(attn_mask.shape)}"
                )
            keep, bias = split_mask(attn_mask, true_means_ignore=True, name="attn_mask")
            parts.append(tuple(None if t is None else self._per_head(t) for t in (keep, bias)))
        elif is_causal:
            parts.append((causal_keep(length, source_length, self.out_proj.weight.device), None))
        keep, bias = combine_masks(parts)
        extra = int(self.bias_k is not None) + int(self.add_zero_attn)
        if extra:  # the appended keys take part everywhere
            keep = None if keep is None else torch_functional.pad(keep, (0, extra), value=True)
            bias = None if bias is None else torch_functional.pad(bias, (0, extra))
        return keep, bias

    def _per_head(self, mask: torch.Tensor) -> torch.Tensor:
        """An ``(L, S)`` mask as it is; an ``(N·H, L, S)`` one as ``(N, H, L, S)``."""
        return mask if mask.dim() == 2 else mask.unflatten(0, (-1, self.num_heads))

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
            f"batch_first={self.batch_first}"
        )


# Queries are attended in blocks of at most this many scores (64 MiB of float32):
# the whole (N, H, L, S) weight tensor never exists when no one asks for it.
BLOCK_SCORES = 1 << 24


def attend_in_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor | None,
    bias: torch.Tensor | None,
    mapping: Callable[..., torch.Tensor],
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``mapping(q kᵀ + bias, mask=keep) v`` for ``(N, H, L, ·)`` inputs, ``L`` in blocks.

    Each block of queries holds at most :data:`BLOCK_SCORES` scores. With
    autograd recording, each block is checkpointed (its weights recomputed in
    the backward, dropout's random state included), so training memory is
    bounded by a block too, at the cost of computing the attention weights
    twice. The result and its gradients are those of the whole computation.
    """
    length, source_length = q.shape[-2], k.shape[-2]
    block = max(1, BLOCK_SCORES // max(1, q.shape[0] * q.shape[1] * source_length))
    key_t = k.transpose(-2, -1)

    def rows(mask: torch.Tensor | None, part: slice) -> torch.Tensor | None:
        return mask if mask is None or mask.shape[-2] == 1 else mask[..., part, :]

    def attend_block(q_block, part):
        scores = q_block @ key_t
        return attend(scores, v, rows(keep, part), rows(bias, part), mapping, dropout_p)[0]

    if exporting() or block >= length:  # (under export, a branch on the shapes guards them)
        return attend_block(q, slice(None))
    recorded = torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, v, bias) if t is not None
    )
    outputs = []
    for start in range(0, length, block):
        part = slice(start, start + block)
        if recorded:
            outputs.append(checkpoint(attend_block, q[..., part, :], part, use_reentrant=False))
        else:
            outputs.append(attend_block(q[..., part, :], part))
    return torch.cat(outputs, dim=-2)


def _keep_mapping_parameters(
    module: MultiheadAttention, state_dict: dict, prefix: str, *args: object
) -> None:
    """A torch MultiheadAttention state_dict has no mapping parameter: keep ours. Where
    none of the mapping's entries is in ``state_dict`` under this module's prefix, the
    mapping's own values are put there (``load_state_dict`` works on a copy), so that a
    strict load neither misses them nor lets another module's missing entries pass."""
    own = {f"{prefix}mapping.{name}": value for name, value in module.mapping.state_dict().items()}
    if not any(key in state_dict for key in own):
        state_dict.update(own)


class AdditiveAttention(NotScriptable, nn.Module):
    r"""Additive attention (Martins & Astudillo 2016, §4.2) with any mapping.

    $$
    z_t = v^\top \tanh(W h_t + U s + b), \qquad p = \rho(z), \qquad
    c = \sum_t p_t h_t
    $$

    for keys ``h_t`` (e.g. the premise's states) and a query ``s`` (e.g. the
    hypothesis' last state).

    Parameters
    ----------
    key_dim : int
        Size of ``h_t``.
    query_dim : int, optional
        Size of ``s`` (default ``key_dim``).
    attn_dim : int, optional
        Size of the hidden layer (default ``key_dim``).
    mapping, lam, q, learnable
        As in :class:`MultiheadAttention` (one shared parameter).
    device, dtype : optional
        As in :class:`MultiheadAttention`.

    Notes
    -----
    ``forward(keys, query, mask=None)`` takes keys ``(*batch, S, key_dim)``, a
    query ``(*batch, query_dim)`` and a boolean ``mask`` ``(*batch, S)``, True
    = *keep* (the library's convention); it returns an
    :class:`~sparsegen.attention.AttentionResult` ``(context, weights,
    support_size)`` with shapes ``(*batch, key_dim)``, ``(*batch, S)``,
    ``batch``. A fully masked row gives zero weights and a zero context.
    """

    def __init__(
        self,
        key_dim: int,
        query_dim: int | None = None,
        attn_dim: int | None = None,
        *,
        mapping: MappingSpec = "sparsemax",
        lam: ParameterLike | None = None,
        q: ParameterLike | None = None,
        learnable: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        query_dim = key_dim if query_dim is None else query_dim
        attn_dim = key_dim if attn_dim is None else attn_dim
        for name, size in (("key_dim", key_dim), ("query_dim", query_dim), ("attn_dim", attn_dim)):
            if check_int(size, name) <= 0:
                raise ValueError(f"{name} must be > 0; got {size}")
        factory = {"device": device, "dtype": dtype}
        self.key_proj = nn.Linear(key_dim, attn_dim, bias=False, **factory)  # W
        self.query_proj = nn.Linear(query_dim, attn_dim, bias=True, **factory)  # U, b
        self.score = nn.Linear(attn_dim, 1, bias=False, **factory)  # v
        self.mapping = mapping_module(mapping, lam=lam, q=q, learnable=learnable, **factory)

    def forward(
        self, keys: torch.Tensor, query: torch.Tensor, mask: torch.Tensor | None = None
    ) -> AttentionResult:
        key_dim, query_dim = self.key_proj.in_features, self.query_proj.in_features
        if (
            keys.dim() < 2
            or query.shape[:-1] != keys.shape[:-2]
            or (keys.shape[-1], query.shape[-1]) != (key_dim, query_dim)
        ):
            raise ValueError(
                f"keys must be (*batch, S, {key_dim}) and query (*batch, {query_dim}); got "
                f"{tuple(keys.shape)} and {tuple(query.shape)}"
            )
        hidden = torch.tanh(self.key_proj(keys) + self.query_proj(query).unsqueeze(-2))
        scores = self.score(hidden).squeeze(-1)
        if mask is not None and mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = keep); got {mask.dtype}")
        context, weights, support = attend(
            scores.unsqueeze(-2),
            keys,
            None if mask is None else mask.unsqueeze(-2),
            None,
            self.mapping,
            need_support=True,
        )
        return AttentionResult(context.squeeze(-2), weights.squeeze(-2), support.squeeze(-1))


class LuongAttention(NotScriptable, nn.Module):
    r"""Luong et al.'s (2015) global attention, as in OpenNMT, with any mapping.

    $$
    z_s = h_t^\top W \bar h_s \ (\text{general}) \ \text{or} \ h_t^\top \bar h_s
    \ (\text{dot}), \qquad a = \rho(z / T), \qquad
    c_t = \sum_s a_s \bar h_s, \qquad \tilde h_t = \tanh(W_c [c_t; h_t])
    $$

    for decoder states ``h_t`` (queries) and encoder states ``h̄_s`` (memory).

    Parameters
    ----------
    query_dim, memory_dim : int
        Sizes of ``h_t`` and ``h̄_s`` (equal for ``score="dot"``).
    score : {"general", "dot"}
    mapping, lam, q, learnable
        As in :class:`MultiheadAttention` (one shared parameter), but ``mapping``
        defaults to ``"softmax"``, Luong et al.'s.
    temperature : float
        Scores are divided by it before the mapping (softmax with a
        temperature; also sharpens or flattens the sparse mappings).
    device, dtype : optional
        As in :class:`MultiheadAttention`.

    Notes
    -----
    The scores are unscaled, as in Luong et al. and OpenNMT. For a sparse
    mapping their scale decides the support, and a row whose weight is all on
    one position sends no gradient back through sparsemax. Dividing them by
    :math:`\sqrt{d}` as scaled dot-product attention does (``temperature=d**0.5``;
    for sparsemax this is sparsegen-lin with :math:`\lambda = 1 - \sqrt{d}`) changes
    which positions the support keeps; the translation experiment's report
    (``docs/reproduction/translation/translation.md``) compares the two.

    ``forward(query, memory, keep=None, keys=None)`` takes ``query`` ``(B, T, query_dim)``
    (or ``(B, query_dim)`` for one step), ``memory`` ``(B, S, memory_dim)``, a
    boolean ``keep`` ``(B, S)``, True = a real position, and optionally ``keys``, the
    memory's :meth:`keys` computed once for every decoding step; it returns an
    :class:`~sparsegen.attention.AttentionResult` whose output is
    :math:`\tilde h_t` ``(B, [T,] query_dim)``, with the weights ``(B, [T,] S)``
    and support sizes ``(B, [T])``.
    """

    def __init__(
        self,
        query_dim: int,
        memory_dim: int | None = None,
        *,
        score: str = "general",
        mapping: MappingSpec = "softmax",
        lam: ParameterLike | None = None,
        q: ParameterLike | None = None,
        learnable: bool = False,
        temperature: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        memory_dim = query_dim if memory_dim is None else memory_dim
        if score not in ("general", "dot"):
            raise ValueError(f"score must be 'general' or 'dot'; got {score!r}")
        if score == "dot" and memory_dim != query_dim:
            raise ValueError(
                f"score='dot' needs query_dim == memory_dim; got {query_dim} and {memory_dim}"
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be positive; got {temperature}")
        factory = {"device": device, "dtype": dtype}
        self.score = score
        self.temperature = float(temperature)
        self.memory_proj = (
            nn.Linear(memory_dim, query_dim, bias=False, **factory) if score == "general" else None
        )
        self.output_proj = nn.Linear(memory_dim + query_dim, query_dim, bias=False, **factory)
        self.mapping = mapping_module(mapping, lam=lam, q=q, learnable=learnable, **factory)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """``W h̄_s`` (or ``h̄_s``): computed once per source, reusable at every decoding step."""
        return memory if self.memory_proj is None else self.memory_proj(memory)

    def forward(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        keep: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> AttentionResult:
        one_step = query.dim() == 2
        if one_step:
            query = query.unsqueeze(1)
        self._check_shapes(query, memory, keep, keys)
        if keep is not None and keep.dtype != torch.bool:
            raise TypeError(f"keep must be boolean (True = a real position); got {keep.dtype}")
        keys = self.keys(memory) if keys is None else keys
        scores = query @ keys.transpose(-1, -2)
        if self.temperature != 1.0:
            scores = scores / self.temperature
        context, weights, support = attend(
            scores,
            memory,
            None if keep is None else keep.unsqueeze(-2),
            None,
            self.mapping,
            need_support=True,
        )
        output = torch.tanh(self.output_proj(torch.cat([context, query], -1)))
        if one_step:
            return AttentionResult(output.squeeze(1), weights.squeeze(1), support.squeeze(1))
        return AttentionResult(output, weights, support)

    def _check_shapes(self, query, memory, keep, keys) -> None:
        """``ValueError`` naming the argument whose shape does not fit the others' (torch
        would say only that two sizes in a product differ)."""
        query_dim = self.output_proj.out_features
        memory_dim = self.output_proj.in_features - query_dim
        if query.dim() != 3 or memory.dim() != 3:
            raise ValueError(
                "query must be (B, T, query_dim) or (B, query_dim) and memory (B, S, "
                f"memory_dim); got {tuple(query.shape)} and {tuple(memory.shape)}"
            )
        batch, source = memory.shape[:2]
        expected = {
            "query": (query, (batch, query.shape[1], query_dim)),
            "memory": (memory, (batch, source, memory_dim)),
            "keep": (keep, (batch, source)),
            "keys": (keys, (batch, source, query_dim)),
        }
        for name, (tensor, shape) in expected.items():
            if tensor is not None and tuple(tensor.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}; got {tuple(tensor.shape)}")

    def extra_repr(self) -> str:
        return f"score={self.score!r}, temperature={self.temperature}"


def sparsify_attention(
    model: nn.Module,
    mapping: MappingSpec = "sparsemax",
    *,
    lam: ParameterLike | None = None,
    q: ParameterLike | None = None,
    learnable: bool = False,
    per_head: bool = False,
) -> nn.Module:
    """Swap every :class:`torch.nn.MultiheadAttention` of ``model`` for a sparse one, in place.

    Each replacement is a :class:`MultiheadAttention` with the same
    configuration, device, dtype, training mode and weights, and the given mapping and
    parameters (as in :class:`MultiheadAttention`). The weights are the same ``Parameter``
    objects: frozen ones stay frozen, an optimiser built before the swap still trains
    them, and an attention module used in several places is replaced by one twin.
    :class:`torch.nn.TransformerEncoder` s are told not to pack their inputs into
    nested tensors, a fast path that only torch's own attention takes.

    Returns ``model``, for chaining; a bare :class:`torch.nn.MultiheadAttention`, which
    has no parent to be replaced in, is returned as its sparse twin. A model with no
    torch attention is returned unchanged, with a :class:`UserWarning`; a Hugging Face
    ``transformers`` model computes its attention through its own modules, which
    :func:`sparsegen.integrations.transformers.sparsify` switches instead.

    Examples
    --------
    >>> layer = torch.nn.TransformerEncoderLayer(16, 4, batch_first=True)
    >>> model = sparsify_attention(torch.nn.TransformerEncoder(layer, 2), "sparsegen_lin", lam=0.5)
    >>> type(model.layers[0].self_attn).__name__
    'MultiheadAttention'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify_attention takes a torch.nn.Module; got {type(model).__name__}")
    if type(model) is nn.MultiheadAttention:
        return _sparse_twin(model, mapping, lam, q, learnable, per_head)
    places = [  # (named_children would skip an attention used twice)
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent._modules.items()
        if isinstance(child, nn.MultiheadAttention)
    ]
    twins: dict[int, MultiheadAttention] = {}  # one twin for an attention used twice
    for _, _, child in places:  # all made before the model changes: a bad λ changes nothing
        if type(child) is nn.MultiheadAttention and id(child) not in twins:
            twins[id(child)] = _sparse_twin(child, mapping, lam, q, learnable, per_head)
    for parent in model.modules() if twins else ():  # (nothing replaced: nothing changes)
        if isinstance(parent, nn.TransformerEncoder):
            parent.use_nested_tensor = False
    for parent, name, child in places:
        if id(child) in twins:
            setattr(parent, name, twins[id(child)])
    subclasses = sorted({type(c).__name__ for _, _, c in places if id(c) not in twins})
    if subclasses:  # their own code, which a twin would not keep
        warnings.warn(
            f"sparsify_attention left {', '.join(subclasses)} as they are: subclasses of "
            "torch.nn.MultiheadAttention may compute otherwise than a sparse twin would",
            UserWarning,
            stacklevel=2,
        )
    if not twins:
        # a silent no-op would leave the model on softmax while its user believes it sparse
        warnings.warn(_nothing_replaced(model), UserWarning, stacklevel=2)
    return model


def _nothing_replaced(model: nn.Module) -> str:
    message = (
        f"sparsify_attention replaced no attention module in {type(model).__name__} (none "
        "is a torch.nn.MultiheadAttention itself): the model is unchanged"
    )
    if _looks_like_hugging_face(model):
        message += (
            "; a Hugging Face transformers model attends through its attention interface: "
            "use sparsegen.integrations.transformers.sparsify(model, mapping) instead"
        )
    return message


def _looks_like_hugging_face(model: nn.Module) -> bool:
    """A ``transformers.PreTrainedModel``, told by its shape: importing transformers to ask
    ``isinstance`` would make it a dependency of the core."""
    if not hasattr(model, "config"):
        return False
    return hasattr(model, "set_attn_implementation") or any(
        cls.__name__ == "PreTrainedModel" for cls in type(model).__mro__
    )


def _sparse_twin(
    torch_mha: nn.MultiheadAttention,
    mapping: MappingSpec,
    lam: ParameterLike | None,
    q: ParameterLike | None,
    learnable: bool,
    per_head: bool,
) -> MultiheadAttention:
    weight = torch_mha.out_proj.weight
    sparse = MultiheadAttention(
        torch_mha.embed_dim,
        torch_mha.num_heads,
        dropout=torch_mha.dropout,
        bias=torch_mha.in_proj_bias is not None,
        add_bias_kv=torch_mha.bias_k is not None,
        add_zero_attn=torch_mha.add_zero_attn,
        kdim=torch_mha.kdim,
        vdim=torch_mha.vdim,
        batch_first=torch_mha.batch_first,
        device=weight.device,
        dtype=weight.dtype,
        mapping=mapping,
        lam=lam,
        q=q,
        learnable=learnable,
        per_head=per_head,
    )
    # torch's output projection itself: a parametrization on it (weight_norm), its hooks
    # and its class come along, and its state dict keys with them
    sparse.out_proj = torch_mha.out_proj
    sparse.load_state_dict(torch_mha.state_dict())  # (checks that the two match)
    # torch's Parameter objects themselves: a frozen layer stays frozen, an optimiser built
    # before the swap keeps training them, and weights tied elsewhere stay tied
    for name, parameter in torch_mha.named_parameters(remove_duplicate=False):
        owner, _, leaf = name.rpartition(".")
        setattr(sparse.get_submodule(owner), leaf, parameter)
    return sparse.train(torch_mha.training)
