"""The fused attention kernel (``implementation="fused"`` of
sparsegen.attention.scaled_dot_product_attention) against the unfused torch path in float64.

The reference is always the same call with ``implementation="unfused"`` on float64 copies
of the inputs (and of the mapping's parameters), which never touches the kernel; outputs
and every gradient of ``(out · g).sum()`` (q, k, v, λ / log q) are compared. gradcheck is
not possible, as the fused path rejects float64. Half types follow FlashAttention's rule:
the fused error against float64 is at most twice the unfused same-dtype error.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1,
set by tests/conftest.py before triton is imported), so the sizes here are small, but the
lengths are not multiples of 16 and span several blocks (S = 130 once). Where CUDA is
available, every test also runs on "cuda", and one at L = 1024 in bfloat16.
"""

import copy
import functools
import math
import os
import warnings
from typing import NamedTuple

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from conftest import HAVE_TRITON
from host_reads import HostReads, checked_as_on_a_device, refuse_host_reads
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsegen as sg
from sparsegen.attention import scaled_dot_product_attention

CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(
            os.environ.get("TRITON_INTERPRET") != "1",
            reason="the kernel runs on CPU tensors only in Triton's interpreter",
        ),
    ),
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs CUDA")),
]
# float32 fused against float64: the kernel accumulates in float32.
ATOL, RTOL = 2e-5, 1e-4
pytestmark = [
    pytest.mark.skipif(not HAVE_TRITON, reason="the fused kernel needs triton"),
    # the interpreter's NumPy reductions warn on the NaN and inf fed on purpose
    pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning"),
]


@pytest.mark.parametrize("device", DEVICES)
def test_a_per_head_mask_past_two_to_the_31_entries(device):
    # a head stride of 2³⁰: h · stride was int32 and read out of bounds
    if os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") < 2**32:
        pytest.skip("maps 2 GiB of virtual memory")
    heads, stride, (L, S, E) = 3, 2**30, (4, 5, 8)
    flags = torch.empty(2 * stride + L * S, dtype=torch.bool, device=device)
    keep = flags.as_strided((1, heads, L, S), (0, stride, S, 1))
    for h in range(heads):
        keep[0, h] = torch.rand(L, S, generator=torch.Generator().manual_seed(h)) > 0.3
    q, k, v = (torch.randn(1, heads, n, E, device=device) for n in (L, S, S))
    fused = scaled_dot_product_attention(q, k, v, attn_mask=keep, implementation="fused")
    unfused = scaled_dot_product_attention(
        q, k, v, attn_mask=keep.contiguous(), implementation="unfused"
    )
    torch.testing.assert_close(fused, unfused, atol=ATOL, rtol=RTOL)


class Shape(NamedTuple):
    B: int
    H: int
    Hkv: int
    L: int
    S: int
    E: int
    Ev: int


BASE = Shape(B=1, H=4, Hkv=4, L=37, S=45, E=24, Ev=40)
TWO_BATCHES = Shape(B=2, H=2, Hkv=2, L=37, S=45, E=24, Ev=40)


# ---------------------------------------------------------------------------- helpers


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _qkv(shape, dtype=torch.float32, device="cpu", seed=0):
    g = _generator(seed)
    sizes = (
        (shape.B, shape.H, shape.L, shape.E),
        (shape.B, shape.Hkv, shape.S, shape.E),
        (shape.B, shape.Hkv, shape.S, shape.Ev),
    )
    return [torch.randn(size, generator=g).to(device, dtype) for size in sizes]


def _mask(kind, shape, dtype=torch.float32, device="cpu"):
    """A mask of the given kind for the scores (B, H, L, S); None for "none"."""
    g = _generator(1)
    B, H, L, S = shape.B, shape.H, shape.L, shape.S
    if kind == "none":
        return None
    if kind == "key_padding":  # (B, 1, 1, S): the last batch drops its last 7 keys, the first key 3
        keep = torch.ones(B, 1, 1, S, dtype=torch.bool)
        keep[-1, ..., -7:] = False
        keep[0, ..., 3] = False
        return keep.to(device)
    if kind == "query_by_key":  # (L, S), about 60 % kept
        return (torch.rand(L, S, generator=g) < 0.6).to(device)
    if kind == "float":  # (1, H, L, S) biases with -inf, finfo.min, -1e9 and -1e4 entries
        bias = torch.randn(1, H, L, S, generator=g).to(dtype)
        u = torch.rand(1, H, L, S, generator=g)
        bias[u < 0.1] = -math.inf
        bias[(u >= 0.1) & (u < 0.2)] = torch.finfo(dtype).min
        bias[(u >= 0.2) & (u < 0.22)] = -1e9
        bias[(u >= 0.22) & (u < 0.25)] = -1e4  # (rounded to dtype: bfloat16's is -9984)
        return bias.to(device)
    raise ValueError(kind)


def _double(t):
    """A float64 leaf copy of t, asking for a gradient where t does."""
    return t.detach().double().requires_grad_(t.requires_grad)


def _keep(q, k, attn_mask=None, is_causal=False, **_):
    """Which keys each query keeps, broadcastable to (B, H, L, S), from the call's masks."""
    keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device)
    if is_causal:
        keep = keep.tril()
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        keep = keep & attn_mask
    elif attn_mask is not None:
        keep = keep & ~_excluded(attn_mask)
    return keep


def _excluded(mask):
    """A float mask's entries that exclude: at most -1e4 as its dtype rounds it."""
    return mask <= torch.tensor(-1e4, dtype=mask.dtype)


def _reference_mask(mask):
    """The mask in float64, its excluded entries -inf (bfloat16's -1e4 is -9984 in
    float64, which would not exclude)."""
    if mask is None or mask.dtype == torch.bool:
        return mask
    return mask.double().masked_fill(_excluded(mask), -math.inf)


def _reference_mapping(mapping):
    """The mapping with float64 copies of its parameters (a module's, a partial's tensors)."""
    if isinstance(mapping, torch.nn.Module):
        return copy.deepcopy(mapping).double()
    if isinstance(mapping, functools.partial):
        keywords = {
            name: _double(value) if isinstance(value, torch.Tensor) else value
            for name, value in mapping.keywords.items()
        }
        return functools.partial(mapping.func, *mapping.args, **keywords)
    return mapping


def _parameters(mapping):
    """The mapping's tensors that ask for a gradient."""
    if isinstance(mapping, torch.nn.Module):
        return [p for p in mapping.parameters() if p.requires_grad]
    if isinstance(mapping, functools.partial):
        values = mapping.keywords.values()
        return [v for v in values if isinstance(v, torch.Tensor) and v.requires_grad]
    return []


def _attend(implementation, q, k, v, mapping=sg.sparsemax, **kwargs):
    return scaled_dot_product_attention(
        q, k, v, mapping=mapping, implementation=implementation, **kwargs
    )


def _run(implementation, q, k, v, g, mapping, **kwargs):
    """The output and the gradients of (out · g).sum() to q, k, v and the mapping's
    parameters (zeros where one is not used)."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = _attend(implementation, *leaves, mapping, **kwargs)
    grads = torch.autograd.grad(
        (out * g).sum(),
        leaves + _parameters(mapping),
        allow_unused=True,
        materialize_grads=True,
    )
    return [out.detach(), *grads]


def _cotangent(q, v):
    """A random g of the output's shape, the same for every implementation."""
    return torch.randn(*q.shape[:-1], v.shape[-1], generator=_generator(2)).to(q.device, q.dtype)


def _fused_and_reference(q, k, v, mapping=sg.sparsemax, **kwargs):
    """[output, dq, dk, dv, *parameter grads] of the fused call in the inputs' dtype and of
    the unfused call in float64 (the reference), for one random cotangent g, and which
    queries keep no key."""
    g = _cotangent(q, v)
    fused = _run("fused", q, k, v, g, mapping, **kwargs)
    dead = ~_keep(q, k, **kwargs).any(-1, keepdim=True)
    reference_kwargs = {**kwargs, "attn_mask": _reference_mask(kwargs.get("attn_mask"))}
    q64, k64, v64 = (_double(t) for t in (q, k, v))
    reference = _run(
        "unfused", q64, k64, v64, g.double(), _reference_mapping(mapping), **reference_kwargs
    )
    return fused, reference, dead


NAMES = ["output", "dq", "dk", "dv", "dparameter"]


def _assert_close(got, expected):
    assert len(got) == len(expected)
    for name, a, b in zip(NAMES, got, expected, strict=False):
        assert a.dtype == got[0].dtype or name == "dparameter", name
        torch.testing.assert_close(
            a.double(), b, atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}"
        )


def _check_fused(q, k, v, mapping=sg.sparsemax, **kwargs):
    """Fused float32 output and gradients match the float64 unfused ones; returns both."""
    fused, reference, dead = _fused_and_reference(q, k, v, mapping, **kwargs)
    assert all(torch.isfinite(t).all() for t in reference), "test bug: a non-finite reference"
    _assert_close(fused, reference)
    out, dq = fused[:2]  # exactly zero rows of output and of dq where a query keeps nothing
    assert out.masked_fill(~dead, 0.0).eq(0).all() and dq.masked_fill(~dead, 0.0).eq(0).all()
    return fused, reference


def _with_mask(shape, kwargs, dtype=torch.float32, device="cpu"):
    """kwargs with a mask kind ("attn_mask": "float", …) replaced by the mask itself."""
    kind = kwargs.get("attn_mask", "none")
    return {**kwargs, "attn_mask": _mask(kind, shape, dtype, device)}


# ---------------------------------------------------------------------------- mappings

MAPPINGS = {
    "sparsemax": lambda device: sg.sparsemax,
    "Sparsemax": lambda device: sg.nn.Sparsemax(),
    "sparsegen_lin": lambda device: functools.partial(sg.sparsegen_lin, lam=0.3),
    "sparsegen_lin_per_head_lam": lambda device: functools.partial(
        sg.sparsegen_lin,
        lam=torch.tensor([-0.5, 0.0, 0.3, 0.7], device=device).view(BASE.H, 1, 1).requires_grad_(),
    ),
    "SparsegenLin_learnable": lambda device: sg.nn.SparsegenLin(lam=0.3, learnable=True).to(device),
    "sparsegen_exp": lambda device: functools.partial(sg.sparsegen_exp, lam=0.3),
    "SparsegenExp_learnable": lambda device: sg.nn.SparsegenExp(lam=-0.5, learnable=True).to(
        device
    ),
    "sparsegen_sq": lambda device: functools.partial(sg.sparsegen_sq, lam=-0.5),
    "SparsegenSq_learnable": lambda device: sg.nn.SparsegenSq(lam=0.2, learnable=True).to(device),
    "sparsecone": lambda device: functools.partial(sg.sparsecone, q=1.0),
    "sparsehourglass": lambda device: functools.partial(sg.sparsehourglass, q=0.5),
    "Sparsecone": lambda device: sg.nn.Sparsecone(q=1.0),
    "Sparsehourglass_learnable": lambda device: sg.nn.Sparsehourglass(q=0.5, learnable=True).to(
        device
    ),
    "softmax": lambda device: sg.softmax,
    "Softmax": lambda device: sg.nn.Softmax(),
}


# The module forms without a parameter give what their functions give, bit for bit.
MODULE_FORMS = {"Sparsemax": "sparsemax", "Sparsecone": "sparsecone", "Softmax": "softmax"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", [name for name in MAPPINGS if name not in MODULE_FORMS])
def test_each_mapping_matches_float64_unfused_outputs_and_gradients(name, device):
    mapping = MAPPINGS[name](device)
    q, k, v = _qkv(BASE, device=device)
    fused, _ = _check_fused(q, k, v, mapping, attn_mask=_mask("key_padding", BASE, device=device))
    assert fused[0].shape == (BASE.B, BASE.H, BASE.L, BASE.Ev)
    if _parameters(mapping):  # the parameter's gradient is there, and not zero
        assert len(fused) == 5 and fused[4].abs().max() > 1e-4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("module, function", list(MODULE_FORMS.items()))
def test_module_forms_give_their_functions_output(module, function, device):
    shape = Shape(1, 2, 2, 20, 21, 8, 8)
    q, k, v = _qkv(shape, device=device)
    outputs = [_attend("fused", q, k, v, MAPPINGS[name](device)) for name in (module, function)]
    assert torch.equal(*outputs)


# ---------------------------------------------------------------------------- masks, shapes

CASES = {
    "no_mask": (BASE, {}),
    "causal": (BASE, {"is_causal": True}),
    "causal_more_queries_than_keys": (BASE._replace(L=45, S=37), {"is_causal": True}),
    "key_padding": (BASE, {"attn_mask": "key_padding"}),
    "key_padding_two_batches": (TWO_BATCHES, {"attn_mask": "key_padding"}),
    "bool_query_by_key": (BASE, {"attn_mask": "query_by_key"}),
    "float_mask_and_causal": (BASE, {"attn_mask": "float", "is_causal": True}),
    "gqa_two_kv_heads_causal": (BASE._replace(Hkv=2), {"enable_gqa": True, "is_causal": True}),
    "gqa_one_kv_head_padding": (
        BASE._replace(Hkv=1),
        {"enable_gqa": True, "attn_mask": "key_padding"},
    ),
    "scale": (BASE, {"scale": 0.7}),
    "many_key_blocks": (Shape(1, 4, 4, 12, 130, 16, 8), {"attn_mask": "key_padding"}),
    "wide_heads": (Shape(1, 4, 4, 19, 33, 64, 64), {"is_causal": True}),
    "narrow_heads": (Shape(1, 4, 4, 21, 29, 5, 3), {}),
}
# The mappings whose masks matter beyond sparsemax: sparsegen-exp's and -sq's scales e^m
# and M² (m the maximum, M the largest |s|, over the kept keys) and hourglass's K, which
# counts the kept keys, each with a learnt parameter; and under GQA, a λ per query head
# (its head index), which no mask changes.
MASKED_MAPPINGS = ["SparsegenExp_learnable", "SparsegenSq_learnable", "Sparsehourglass_learnable"]
MASK_RUNS = [
    *((case, "sparsemax") for case in CASES),
    *(
        (case, name)
        for case in ["float_mask_and_causal", "gqa_two_kv_heads_causal", "many_key_blocks"]
        for name in MASKED_MAPPINGS
    ),
    ("gqa_two_kv_heads_causal", "sparsegen_lin_per_head_lam"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case, name", MASK_RUNS)
def test_masks_gqa_scale_and_head_dims_match_float64_unfused(case, name, device):
    shape, kwargs = CASES[case]
    q, k, v = _qkv(shape, device=device)
    _check_fused(q, k, v, MAPPINGS[name](device), **_with_mask(shape, kwargs, device=device))


# The GPU's tiles and candidate slots (sparsegen._triton_attention on CUDA): 32 × 32
# for float32, 16 × 16 for float32 past head dim 128, 64 slots a query; here in the
# interpreter, so that the configurations a GPU launches are checked where none is.
GPU_TILES = {
    "float32 32x32": Shape(B=1, H=2, Hkv=2, L=70, S=130, E=64, Ev=64),
    "float32 16x16 wide": Shape(B=1, H=1, Hkv=1, L=40, S=70, E=160, Ev=136),
}


@pytest.mark.skipif(CUDA, reason="on a GPU every test runs at these sizes")
@pytest.mark.parametrize("name", ["sparsemax", "sparsehourglass", "SparsegenLin_learnable"])
@pytest.mark.parametrize("case", list(GPU_TILES))
def test_the_gpus_tile_sizes_and_slots_match_float64_unfused(case, name, monkeypatch):
    from sparsegen import _triton_attention as kernels

    cuda = torch.device("cuda")
    block_sizes, slots = kernels.block_sizes, kernels.candidate_slots
    monkeypatch.setattr(kernels, "block_sizes", lambda _, *args: block_sizes(cuda, *args))
    monkeypatch.setattr(kernels, "candidate_slots", lambda _: slots(cuda))
    q, k, v = _qkv(GPU_TILES[case])
    keep = torch.rand(1, 1, q.shape[2], k.shape[2], generator=_generator(3)) > 0.2
    _check_fused(q, k, v, MAPPINGS[name]("cpu"), attn_mask=keep)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spread", [0.01, 1.0, 4.0])
def test_flat_and_sharp_scores_give_the_same_exact_threshold(spread, device):
    # Flat scores put every key within 1/c of the maximum: more candidates than the
    # kernel's slots, so τ comes from streamed passes; sharp ones leave a few candidates,
    # solved on chip; in between, a block holds rows of both kinds.
    q, k, v = _qkv(BASE, device=device)
    mask = _mask("key_padding", BASE, device=device)
    _check_fused(q * spread, k, v, attn_mask=mask, is_causal=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("copies", [2, 5])
def test_keys_repeated_exactly_tie_their_scores_and_share_the_weight(copies, device):
    # Each key appears `copies` times: every score is tied that often, at the maximum and
    # at the threshold; the threshold search ends and the tied keys get equal weights.
    shape = Shape(1, 2, 2, 23, 8 * copies, 16, 8)
    q, k, v = _qkv(shape, device=device)
    k = k[:, :, :8].repeat_interleave(copies, dim=2)
    _check_fused(q, k, v, is_causal=True)
    eye = torch.eye(shape.S, device=device).expand(1, 2, -1, -1)
    weights = _attend("fused", q, k, eye).unflatten(-1, (8, copies))
    assert torch.equal(weights, weights[..., :1].expand_as(weights))


@pytest.mark.parametrize("device", DEVICES)
def test_a_wide_float16_support_of_large_values_keeps_finite_gradients(device):
    # 64 keys tied in the support, values near 1,100: their sum passes float16's 65,504,
    # their mean does not. The sum was stored for δ, which became inf, and dq and dk NaN.
    q = torch.zeros(1, 1, 16, 16, dtype=torch.float16, device=device)
    k = torch.zeros(1, 1, 64, 16, dtype=torch.float16, device=device)
    v = 1100 + torch.randn(1, 1, 64, 16, generator=_generator(3)).to(device, torch.float16)
    g = torch.randn(1, 1, 16, 16, generator=_generator(4)).to(device, torch.float16)
    results = {}
    for implementation in ("fused", "unfused"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = scaled_dot_product_attention(*leaves, implementation=implementation)
        out.backward(g)
        results[implementation] = [out, *(t.grad for t in leaves)]
    for fused, unfused in zip(results["fused"], results["unfused"], strict=True):
        assert torch.isfinite(fused).all()
        torch.testing.assert_close(fused.float(), unfused.float(), atol=0.5, rtol=2e-3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("default", [torch.bfloat16, torch.float64])
def test_the_kernels_buffers_ignore_torchs_default_dtype(default, device):
    # The tiles' maxima took torch's default dtype: under bfloat16 (as language models set
    # it) 1001.9 and 1001.5 rounded to 1000 and 1004, the tile was skipped, and the query
    # got no weight at all
    q = torch.zeros(1, 1, 1, 16, device=device)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, 32, 16, device=device)
    k[0, 0, 0, 0], k[0, 0, 16, 0] = 1001.9, 1001.5
    v = torch.eye(32, 16, device=device)[None, None]
    expected = _attend("unfused", q, k, v, scale=1.0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        out = _attend("fused", q, k, v, scale=1.0)
    finally:
        torch.set_default_dtype(before)
    torch.testing.assert_close(out, expected)
    assert out[0, 0, 0, 0] == pytest.approx(0.7, abs=1e-4)


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="spies on the kernel in the interpreter"
)
@pytest.mark.parametrize("name", ["sparsemax", "sparsegen_lin", "sparsegen_exp", "sparsegen_sq"])
def test_tiles_outside_every_support_are_skipped_forward_and_backward(name, monkeypatch):
    # Block-diagonal attention, each query matching its own key: of the 4 × 4 tiles of 16
    # (the interpreter's tile) a head has, only the 4 on the diagonal hold a support entry.
    # Passes that read the scores again consult _tile_matters first; the others must be
    # skipped, or the kernel's speed on sparse attention is a dense kernel's. 60 queries:
    # the last block's padding rows, which keep nothing, must not make its tiles count.
    from sparsegen import _triton_attention as kernels

    decisions = []
    consult = kernels._tile_matters

    def spy(*args):
        matters = consult(*args)
        decisions.append(bool(matters))
        return matters

    monkeypatch.setattr(kernels, "_tile_matters", spy)
    shape = Shape(B=1, H=2, Hkv=2, L=60, S=64, E=64, Ev=16)
    k = 4 * torch.eye(64).expand(1, 2, 64, 64)
    q = k[:, :, :60] + 0.01 * torch.randn(1, 2, 60, 64, generator=_generator(5))
    v = torch.randn(1, 2, 64, 16, generator=_generator(6))
    q, k = q.requires_grad_(), k.clone().requires_grad_()
    out = _attend("fused", q, k, v, MAPPINGS[name]("cpu"))
    forward = list(decisions)
    decisions.clear()
    out.backward(_cotangent(q, v))
    off_diagonal = shape.B * shape.H * 12
    assert forward.count(False) >= off_diagonal  # the output pass
    assert decisions.count(False) >= 2 * off_diagonal  # dq's and dk, dv's
    for consulted in (forward, decisions):  # each pass reads the diagonal's 4 tiles of 16
        assert 4 * consulted.count(True) <= len(consulted)
    monkeypatch.setattr(kernels, "_tile_matters", consult)
    _check_fused(q.detach(), k.detach(), v, MAPPINGS[name]("cpu"))


EDGE_SHAPES = {
    "one_query": (Shape(1, 2, 2, 1, 45, 8, 8), {}),
    "one_key_causal": (Shape(2, 2, 2, 37, 1, 8, 8), {"is_causal": True}),
    "one_query_one_key": (Shape(1, 1, 1, 1, 1, 4, 4), {}),
    "prime_queries_few_keys": (Shape(1, 2, 2, 67, 3, 8, 8), {"is_causal": True}),
    "empty_batch": (Shape(0, 2, 2, 5, 7, 8, 8), {"is_causal": True}),
    # every score 0: the values' gradient is still the weights' (it was skipped, as zeros)
    "no_features": (Shape(1, 2, 2, 3, 9, 0, 4), {"is_causal": True}),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["sparsemax", "Sparsehourglass_learnable"])
@pytest.mark.parametrize("case", list(EDGE_SHAPES))
def test_edge_lengths_and_empty_batch_match_float64_unfused(case, name, device):
    shape, kwargs = EDGE_SHAPES[case]
    q, k, v = _qkv(shape, device=device)
    fused, _ = _check_fused(q, k, v, MAPPINGS[name](device), **kwargs)
    assert fused[0].shape == (shape.B, shape.H, shape.L, shape.Ev)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mapping", [sg.sparsecone, sg.sparsehourglass])
def test_the_cone_s_scale_past_float32_s_range(mapping, device):
    # Kq and a row's sum in float64, as the projection takes them: a q of 1e37 gave NaN,
    # one past float32's range raised, and a bias of -1.5e38 on some keys (a score, not a
    # mask) overflowed the sum, flattening every weight onto the biased keys too
    q, k, v = _qkv(Shape(1, 2, 2, 5, 40, 16, 8), device=device)
    g = _cotangent(q, v)
    for big in (1e37, 1e39, 1e300):
        limit = functools.partial(mapping, q=big)
        fused = _run("fused", q, k, v, g, limit)
        sparsemax = _run("unfused", q.double(), k.double(), v.double(), g.double(), sg.sparsemax)
        _assert_close(fused[:4], sparsemax[:4])
    bias = torch.zeros(1, 1, 1, 40, device=device)
    bias[..., :25] = -1.5e38
    hourglass = functools.partial(sg.sparsehourglass, q=1.0)
    fused = _attend("fused", q, k, v, hourglass, attn_mask=bias)
    unfused = _attend("unfused", q.double(), k.double(), v.double(), hourglass,
                      attn_mask=bias.double())  # fmt: skip
    torch.testing.assert_close(fused.double(), unfused, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["sparsehourglass", "softmax"])
def test_auto_takes_the_kernel_on_cuda_and_torch_sdpa_for_softmax_everywhere(name, device):
    q, k, v = _qkv(BASE, device=device)
    g, mapping = _cotangent(q, v), MAPPINGS[name](device)
    auto = _run("auto", q, k, v, g, mapping, is_causal=True)
    fused = device == "cuda" or name == "softmax"
    expected = _run("fused" if fused else "unfused", q, k, v, g, mapping, is_causal=True)
    assert len(auto) == len(expected)
    for what, got, want in zip(NAMES, auto, expected, strict=False):
        assert torch.equal(got, want), what


# ---------------------------------------------------------------------------- bad input

FULLY_MASKED_MAPPINGS = [
    "sparsemax",
    "SparsegenExp_learnable",
    "SparsegenSq_learnable",
    "Sparsehourglass_learnable",
    "softmax",
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask_dtype", ["bool", "float"])
@pytest.mark.parametrize("name", FULLY_MASKED_MAPPINGS)
def test_queries_that_may_attend_to_nothing_give_zero_rows_and_no_gradient(
    name, mask_dtype, device
):
    shape = TWO_BATCHES
    q, k, v = _qkv(shape, device=device)
    g = _generator(3)
    keep = torch.rand(shape.B, 1, shape.L, shape.S, generator=g) < 0.7
    keep[1] = False  # batch 1 may attend to nothing
    keep[0, :, 5] = False  # nor may query 5 of batch 0
    if mask_dtype == "float":  # excluded as -inf or as finfo.min, half and half
        lowest = torch.full(keep.shape, torch.finfo(torch.float32).min)
        excluded = lowest.masked_fill(torch.rand(keep.shape, generator=g) < 0.5, -math.inf)
        mask = excluded.masked_fill(keep, 0.0)
    else:
        mask = keep
    # _check_fused asks for exactly zero output and dq rows where a query keeps nothing
    fused, _ = _check_fused(q, k, v, MAPPINGS[name](device), attn_mask=mask.to(device))
    dk, dv = fused[2:4]
    assert dk[1].eq(0).all() and dv[1].eq(0).all()  # batch 1's keys serve no query


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["sparsemax", "sparsehourglass", "softmax"])
def test_nan_in_a_query_makes_only_its_row_nan(name, device):
    q, k, v = _qkv(BASE, device=device)
    q[0, 2, 5, 0] = math.nan
    mapping = MAPPINGS[name](device)
    out = _attend("fused", q, k, v, mapping, is_causal=True)
    expected = _attend("unfused", *(t.double() for t in (q, k, v)), mapping, is_causal=True)
    nan_row = torch.zeros(BASE.B, BASE.H, BASE.L, dtype=torch.bool, device=device)
    nan_row[0, 2, 5] = True
    _assert_nan_exactly_in(out, expected, nan_row)


@pytest.mark.parametrize("device", DEVICES)
def test_a_nan_query_passes_no_gradient_of_its_own(device):
    # Its row's weights are NaN, so the unfused path's value gradient is NaN (NaN weights
    # times the output's gradient); the kernel skips the row: every gradient but the keys'
    # (where the NaN query multiplies its zero score gradients) is the one the other rows
    # give, and the NaN query's own is 0.
    q, k, v = _qkv(BASE, device=device)
    upstream = torch.randn(BASE.B, BASE.H, BASE.L, BASE.Ev, generator=_generator(3)).to(device)
    q[0, 2, 5, 0] = math.nan
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = _attend("fused", *leaves, is_causal=True)
    dq, _, dv = torch.autograd.grad((out * upstream).nansum(), leaves)
    q_clean, upstream_clean = q.clone(), upstream.clone()
    q_clean[0, 2, 5], upstream_clean[0, 2, 5] = 0.0, 0.0  # the row taken out
    leaves = [_double(t).requires_grad_() for t in (q_clean, k, v)]
    out = _attend("unfused", *leaves, is_causal=True)
    expected_dq, _, expected_dv = torch.autograd.grad((out * upstream_clean.double()).sum(), leaves)
    torch.testing.assert_close(dq.double(), expected_dq, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(dv.double(), expected_dv, atol=ATOL, rtol=RTOL)
    assert (dq[0, 2, 5] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_a_query_outside_the_cones_domain_passes_no_gradient_of_its_own(device):
    # sparsecone's Σs + Kq ≤ 0 makes the query's scale NaN (its output NaN, as the
    # projection's): the cone's ε times it made its dq and every key's dk of its head NaN
    q, k, v = _qkv(BASE, device=device)
    k[..., 0], q[0, 2, 5] = 1.0, 0.0
    q[0, 2, 5, 0] = -40.0  # every score of query 5 is −40/√E: outside the domain
    mapping = functools.partial(sg.sparsecone, q=0.1)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = _attend("fused", *leaves, mapping, is_causal=True)
    assert out[0, 2, 5].isnan().all() and torch.isfinite(out[0, 2, :5]).all()
    dq, dk, _ = torch.autograd.grad(out.nansum(), leaves)
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and (dq[0, 2, 5] == 0).all()
    clean = q.clone()
    clean[0, 2, 5] = 0.0  # the row taken out (its gradient too: the upstream's rows below)
    leaves = [_double(t).requires_grad_() for t in (clean, k, v)]
    reference = _attend("unfused", *leaves, mapping, is_causal=True)
    upstream = torch.ones_like(reference)
    upstream[0, 2, 5] = 0.0
    expected_dq, expected_dk, _ = torch.autograd.grad((reference * upstream).sum(), leaves)
    keep = torch.ones_like(dq, dtype=torch.bool)
    keep[0, 2, 5] = False
    torch.testing.assert_close(dq.double()[keep], expected_dq[keep], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(dk.double(), expected_dk, atol=ATOL, rtol=RTOL)


def _assert_nan_exactly_in(out, expected, nan_rows):
    """``out`` is NaN in the rows ``nan_rows`` marks, finite elsewhere, and ``expected``."""
    assert out[nan_rows].isnan().all()
    assert torch.isfinite(out[~nan_rows]).all()
    torch.testing.assert_close(out.double(), expected, atol=ATOL, rtol=RTOL, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["sparsemax", "sparsehourglass", "softmax"])
def test_nan_in_a_key_makes_nan_the_rows_that_keep_it(name, device):
    q, k, v = _qkv(TWO_BATCHES, device=device)
    k[:, 0, 10, 3] = math.nan  # key 10 of head 0, in both batch elements
    keep = torch.ones(TWO_BATCHES.B, 1, 1, TWO_BATCHES.S, dtype=torch.bool, device=device)
    keep[1, ..., 10] = False  # batch 1 masks it out
    mapping = MAPPINGS[name](device)
    kwargs = {"attn_mask": keep, "is_causal": True}  # queries 0–9 do not see it either
    out = _attend("fused", q, k, v, mapping, **kwargs)
    expected = _attend("unfused", *(t.double() for t in (q, k, v)), mapping, **kwargs)
    nan_rows = torch.zeros(*TWO_BATCHES[:2], TWO_BATCHES.L, dtype=torch.bool, device=device)
    nan_rows[0, 0, 10:] = True
    if name == "softmax":  # torch's SDPA, whose masks do not stop a NaN score: documented
        nan_rows[:, 0] = True
        expected = torch.where(nan_rows[..., None], math.nan, expected)
    _assert_nan_exactly_in(out, expected, nan_rows)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["sparsemax", "sparsehourglass", "sparsegen_exp"])
def test_scores_that_overflow_to_infinity_follow_the_projections_rules(name, device):
    # Query 3 of head 0 scores +inf, -inf and 0 on keys 0, 1, 2, 3, 4, 5, …: its weight
    # goes to the +inf keys in equal shares, whatever the mapping's scale; the others'
    # rows are untouched. Compared with the unfused float32 call, which overflows alike.
    # (At scale 1 the kernel's products overflow too; at the default 1/√E the largest
    # finite scores tie instead.)
    q, k, v = _qkv(TWO_BATCHES, device=device)
    q[0, 0, 3] = 0.0
    q[0, 0, 3, 0] = 3e38
    k[0, 0, :, 0] = torch.tensor([4.0, -4.0, 0.0], device=device).repeat(15)
    mapping = MAPPINGS[name](device)
    for scale in (None, 1.0):
        out = _attend("fused", q, k, v, mapping, scale=scale)
        expected = _attend("unfused", q, k, v, mapping, scale=scale)
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(out[0, 0, 3], v[0, 0, 0::3].mean(0), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["sparsegen_sq", "sparsegen_exp"])
def test_plus_inf_beside_scores_whose_transform_overflows(name, device):
    # Query 3 scores +inf on every third key and 1e20 on the others, whose e^s and s²
    # overflow: the +inf keys still take all the weight, fused and unfused alike.
    q, k, v = _qkv(TWO_BATCHES, device=device)
    q[0, 0, 3] = 0.0
    q[0, 0, 3, :2] = torch.tensor([3e38, 1e20], device=device)
    k[0, 0, :, 0] = torch.tensor([4.0, 0.0, 0.0], device=device).repeat(15)
    k[0, 0, :, 1] = 1.0
    mapping = MAPPINGS[name](device)
    for implementation in ("fused", "unfused"):
        out = _attend(implementation, q, k, v, mapping, scale=1.0)[0, 0, 3]
        torch.testing.assert_close(out, v[0, 0, 0::3].mean(0), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["sparsegen_sq", "sparsegen_exp"])
def test_a_score_that_overflows_to_minus_infinity_is_a_score_under_a_transform(name, device):
    # the kernel took every -inf score for a key not kept: sparsegen-sq squares it into the
    # largest (+inf), sparsegen-exp's e^{-inf} = 0 is an ordinary score (query 3's are all
    # -inf: uniform, as the unfused path); the README's rules
    q, k, v = _qkv(TWO_BATCHES, device=device)
    q[0, 0, 3] = 0.0
    q[0, 0, 3, 0] = 3e38
    signs = [-4.0, 4.0, 0.0] if name == "sparsegen_sq" else [-4.0, -4.0, -4.0]
    k[0, 0, :, 0] = torch.tensor(signs, device=device).repeat(15)
    mapping = MAPPINGS[name](device)
    out = _attend("fused", q, k, v, mapping, scale=1.0)[0, 0, 3]
    expected = _attend("unfused", q, k, v, mapping, scale=1.0)[0, 0, 3]
    infinite = k[0, 0, :, 0] != 0  # the keys whose score overflowed share the mass
    torch.testing.assert_close(out, v[0, 0, infinite].mean(0), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=RTOL)


def _unsupported_mapping_case(mapping):
    return lambda q, k, v: ((q, k, v), {"mapping": mapping})


def _grad_mask_case(q, k, v):
    mask = torch.zeros(q.shape[-2], k.shape[-2], device=q.device, requires_grad=True)
    return (q, k, v), {"attn_mask": mask}


REJECTED = {
    "need_weights": (lambda q, k, v: ((q, k, v), {"need_weights": True}), r"need_weights"),
    "float64": (lambda q, k, v: ((q.double(), k.double(), v.double()), {}), r"float64|double"),
    "query_key_head_dim_over_256": (
        lambda q, k, v: ((q.new_zeros(1, 1, 3, 260), k.new_zeros(1, 1, 4, 260), v[:1, :1, :4]), {}),
        r"256|head dim",
    ),
    "value_head_dim_over_256": (
        lambda q, k, v: ((q[:1, :1], k[:1, :1], v.new_zeros(1, 1, k.shape[-2], 260)), {}),
        r"256|head dim",
    ),
    "hardmax": (_unsupported_mapping_case(sg.hardmax), r"mapping"),
    "sum_normalization": (_unsupported_mapping_case(sg.sum_normalization), r"mapping"),
    "lambda": (
        _unsupported_mapping_case(lambda s, mask=None: sg.sparsemax(s, mask=mask)),
        r"mapping",
    ),
    "attn_mask_requires_grad": (_grad_mask_case, r"attn_mask|grad"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reason", list(REJECTED))
def test_fused_raises_value_error_naming_what_it_cannot_apply(reason, device):
    build, message = REJECTED[reason]
    (q, k, v), kwargs = build(*_qkv(Shape(1, 2, 2, 5, 7, 8, 8), device=device))
    kwargs = {"mapping": sg.sparsemax, **kwargs}
    with pytest.raises(ValueError, match=f"(?i){message}"):
        scaled_dot_product_attention(q, k, v, implementation="fused", **kwargs)
    if reason != "sum_normalization":  # "auto" falls back to unfused
        auto = scaled_dot_product_attention(q, k, v, implementation="auto", **kwargs)
        unfused = scaled_dot_product_attention(q, k, v, implementation="unfused", **kwargs)
        torch.testing.assert_close(auto, unfused)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["sparsemax", "sparsegen_lin", "Sparsehourglass_learnable"])
def test_dropout_keeps_each_weight_or_zeroes_it_and_its_gradients_follow(name, device):
    # With v the identity the output is the dropped weights themselves; the kernel draws
    # the same numbers for the same seed whatever v is, so the mask read there gives the
    # float64 reference (weights · mask / (1 − p)) @ v for the real v, and its gradients.
    p, shape = 0.3, Shape(2, 2, 2, 21, 37, 16, 24)
    q, k, v = _qkv(shape, device=device)
    mapping, kwargs = MAPPINGS[name](device), {"is_causal": True, "dropout_p": p}
    eye = torch.eye(shape.S, device=device).expand(shape.B, shape.H, -1, -1)
    torch.manual_seed(7)
    dropped = _attend("fused", q, k, eye, mapping, **kwargs)
    weights = _attend("unfused", q.double(), k.double(), eye.double(), mapping, is_causal=True)
    kept = dropped != 0
    torch.testing.assert_close(
        dropped[kept].double(), weights[kept] / (1 - p), atol=ATOL, rtol=RTOL
    )
    assert 0.15 < 1 - kept.sum() / (weights > 0).sum() < 0.45  # about p of the support dropped
    g = _cotangent(q, v)
    torch.manual_seed(7)
    fused = _run("fused", q, k, v, g, mapping, **kwargs)
    q64, k64, v64 = (_double(t).requires_grad_() for t in (q, k, v))
    reference_mapping = _reference_mapping(mapping)
    scores = _attend(
        "unfused", q64, k64, torch.eye(shape.S, dtype=torch.float64, device=device),
        reference_mapping, is_causal=True,
    )  # fmt: skip
    out = (scores * kept / (1 - p)) @ v64
    leaves = [q64, k64, v64, *_parameters(reference_mapping)]
    grads = torch.autograd.grad((out * g.double()).sum(), leaves)
    _assert_close(fused, [out, *grads])


# ---------------------------------------------------------------------------- half precision


def _max_error(got, expected):
    return (got.double() - expected).abs().max().item() if got.numel() else 0.0


def _check_half(q, k, v, mapping, **kwargs):
    """FlashAttention's rule, outputs and gradients: the fused error against float64 is at
    most twice the unfused same-dtype error, plus one epsilon of the value's size."""
    fused, reference, _ = _fused_and_reference(q, k, v, mapping, **kwargs)
    unfused = _run("unfused", q, k, v, _cotangent(q, v), mapping, **kwargs)
    eps = torch.finfo(q.dtype).eps
    for name, f, u, r in zip(NAMES, fused, unfused, reference, strict=False):
        assert f.dtype == q.dtype, name
        fused_error, unfused_error = _max_error(f, r), _max_error(u, r)
        slack = eps * max(1.0, r.abs().max().item() if r.numel() else 0.0)
        assert fused_error <= 2 * unfused_error + slack, (name, fused_error, unfused_error)


HALF_MAPPINGS = ["sparsemax", "sparsehourglass", "softmax"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", HALF_MAPPINGS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_error_is_at_most_twice_the_unfused_error(dtype, name, device):
    q, k, v = _qkv(BASE, dtype, device)
    mask = _mask("key_padding", BASE, device=device)
    _check_half(q, k, v, MAPPINGS[name](device), attn_mask=mask, is_causal=True)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("name", HALF_MAPPINGS)
def test_long_sequences_in_bfloat16_on_cuda(name):
    shape = Shape(B=2, H=4, Hkv=2, L=1024, S=1024, E=64, Ev=64)
    q, k, v = _qkv(shape, torch.bfloat16, "cuda")
    mask = _mask("key_padding", shape, device="cuda")
    kwargs = {"attn_mask": mask, "is_causal": True, "enable_gqa": True}
    _check_half(q, k, v, MAPPINGS[name]("cuda"), **kwargs)


# ---------------------------------------------------------------------------- invariants


@settings(max_examples=10)
@given(
    length=st.integers(1, 24),
    source_length=st.integers(1, 40),
    dims=st.sampled_from([(1, 1), (4, 6), (13, 17), (32, 3)]),
    density=st.floats(0.0, 1.0),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fused_sparsemax_is_a_mixture_of_the_kept_values_and_matches_float64(
    length, source_length, dims, density, causal, seed
):
    device = "cuda" if CUDA else "cpu"
    shape = Shape(1, 2, 2, length, source_length, *dims)
    q, k, v = (3 * t for t in _qkv(shape, device=device, seed=seed))
    keep = torch.rand(1, 2, length, source_length, generator=_generator(seed)) < density
    if causal:
        keep &= torch.ones(length, source_length, dtype=torch.bool).tril()
    keep = keep.to(device)
    out = _attend("fused", q, k, v, attn_mask=keep).double()
    expected = _attend("unfused", q.double(), k.double(), v.double(), attn_mask=keep)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=RTOL)
    # each output row lies within the bounds of the value rows its query keeps; 0 if none
    kept, values = keep[..., None], v.double()[:, :, None]  # (1, 2, L, S, 1), (1, 2, 1, S, Ev)
    none = ~keep.any(-1, keepdim=True)
    low = torch.where(kept, values, math.inf).amin(-2).masked_fill(none, 0.0)
    high = torch.where(kept, values, -math.inf).amax(-2).masked_fill(none, 0.0)
    assert (out >= low - 1e-5).all() and (out <= high + 1e-5).all()


@pytest.mark.parametrize("device", DEVICES)
def test_the_backward_multiplies_as_its_forward_did(monkeypatch, device):
    # float32 tiles are multiplied in TF32 where torch's switch allows it: switched between
    # the forward and the backward (a context around the forward only, a checkpoint's
    # recomputation), the backward recomputed the scores otherwise than τ and the support
    # came from. The switch matters on CUDA only: a stand-in reads it on every device here.
    from sparsegen import _triton_attention

    def switch(device, dtype):
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"

    multiplied = []

    def backward(*args):
        multiplied.append(args[-1])
        return real(*args[:-1], "ieee")  # (the interpreter's products)

    real = _triton_attention.attention_backward
    monkeypatch.setattr(_triton_attention, "precision", switch)
    monkeypatch.setattr(_triton_attention, "attention_backward", backward)
    q, k, v = (t.requires_grad_() for t in _qkv(Shape(1, 2, 2, 8, 9, 16, 16), device=device))
    allowed = torch.backends.cuda.matmul.allow_tf32  # (a switch monkeypatch cannot undo)
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        out = scaled_dot_product_attention(q, k, v, implementation="fused")
        torch.backends.cuda.matmul.allow_tf32 = True
        out.sum().backward()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed
    assert multiplied == ["ieee"]


# ---------------------------------------------------------------------------- operator


@pytest.mark.parametrize("device", DEVICES)
def test_the_operator_passes_opcheck_and_traces_into_one_graph(device):
    shape = Shape(1, 2, 2, 20, 21, 16, 16)
    q, k, v = _qkv(shape, device=device)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # strided, as a module's heads are
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    scale = torch.full((1, 2, 20), 1.5, device=device, requires_grad=True)
    arguments = (q, k, v, None, None, scale, "given", True, 0.25, 0.0, None)
    torch.library.opcheck(torch.ops.sparsegen.attention.default, arguments)

    def attend(q, k, v):
        return scaled_dot_product_attention(q, k, v, is_causal=True, implementation="fused")

    traced = torch.compile(attend, fullgraph=True, backend="aot_eager")(q, k, v)
    assert torch.equal(traced, attend(q, k, v))


@pytest.mark.parametrize("device", DEVICES)
def test_a_compiled_model_draws_a_new_dropout_mask_on_every_call(device):
    # the seed is a tensor drawn in the graph and read by the kernels, never a constant of
    # the trace (a CUDA graph's replay: the next test, on a GPU)
    q, k, v = _qkv(Shape(1, 2, 2, 12, 14, 16, 16), device=device)

    def attend(q, k, v):
        return scaled_dot_product_attention(q, k, v, dropout_p=0.5, implementation="fused")

    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")
    assert not torch.equal(compiled(q, k, v), compiled(q, k, v))
    torch.manual_seed(3)
    first = attend(q, k, v)
    torch.manual_seed(3)
    assert torch.equal(attend(q, k, v), first)  # torch's generator decides


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_a_cuda_graph_replay_draws_a_new_dropout_mask():
    # the seed was an int passed by value to the launch: every replay repeated one mask
    q, k, v = _qkv(Shape(1, 2, 2, 64, 64, 64, 64), torch.bfloat16, "cuda")
    out = torch.empty_like(q)

    def attend():
        out.copy_(scaled_dot_product_attention(q, k, v, dropout_p=0.5, implementation="fused"))

    attend()  # (the kernels compiled before the capture)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        attend()
    graph.replay()
    first = out.clone()
    graph.replay()
    assert not torch.equal(out, first)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("implementation", ["auto", "fused"])
def test_export_captures_the_fused_operator_only_when_asked(implementation, device):
    # "auto" exports the unfused path in plain ATen ops (a program that runs, and converts
    # to ONNX, without sparsegen), on CUDA too; "fused" exports the operator itself.
    q, k, v = _qkv(Shape(1, 2, 2, 12, 14, 16, 16), device=device)

    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            return _attend(implementation, q, k, v, is_causal=True)

    program = torch.export.export(Attention(), (q, k, v))
    operators = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    sparsegen_operators = {name for name in operators if "sparsegen" in name}
    if implementation == "auto":
        assert not sparsegen_operators
    else:
        assert sparsegen_operators == {"sparsegen.attention.default"}
    expected = _attend("unfused", *(t.double() for t in (q, k, v)), is_causal=True)
    got = program.module()(q, k, v)
    torch.testing.assert_close(got, expected.float(), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mapping", ["sparsemax", "sparsehourglass", "softmax"])
def test_multihead_attention_without_weights_takes_the_fused_path_alike(mapping, device):
    # The module's heads are transposed views (not contiguous) and its masks torch's
    # convention (True = ignore); the fused call gives what the unfused one gives.
    torch.manual_seed(4)
    module = sg.nn.MultiheadAttention(32, 4, batch_first=True, mapping=mapping).to(device)
    x = torch.randn(2, 19, 32, device=device, requires_grad=True)
    padding = torch.zeros(2, 19, dtype=torch.bool, device=device)
    padding[1, -5:] = True

    def run(implementation):
        module.implementation = implementation
        out = module(x, x, x, key_padding_mask=padding, need_weights=False, is_causal=True,
                     attn_mask=torch.ones(19, 19, device=device).triu(1).bool())[0]  # fmt: skip
        return [out, *torch.autograd.grad(out.square().sum(), [x, *module.parameters()])]

    for got, expected in zip(run("fused"), run("unfused"), strict=True):
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("device", DEVICES)
def test_one_query_head_broadcasts_against_several_key_heads_and_dim_may_be_positive(device):
    # (the kernel expanded k and v to the query's one head: "The expanded size of the
    # tensor (1) must match the existing size (3)"; a partial with dim=3, the scores' last
    # dimension, was "not sparsemax")
    q, k, v = _qkv(Shape(2, 1, 3, 4, 5, 8, 6), device=device)
    for mapping in (sg.sparsemax, functools.partial(sg.sparsemax, dim=3), sg.nn.Sparsemax(dim=3)):
        out = _attend("fused", q, k, v, mapping)
        assert out.shape == (2, 3, 4, 6)
        torch.testing.assert_close(out, _attend("unfused", q, k, v, mapping), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("device", DEVICES)
def test_a_second_derivative_through_the_kernel_is_refused_by_name(device):
    # (torch's "no autograd formula was registered" for sparsegen.attention_backward)
    q, k, v = (t.requires_grad_() for t in _qkv(Shape(1, 2, 2, 5, 7, 8, 8), device=device))
    (grad,) = torch.autograd.grad(_attend("fused", q, k, v).square().sum(), k, create_graph=True)
    with pytest.raises(RuntimeError, match="fused attention kernel has no second derivative"):
        grad.square().sum().backward()
    (grad,) = torch.autograd.grad(_attend("unfused", q, k, v).square().sum(), k, create_graph=True)
    grad.square().sum().backward()  # (the unfused path has one)
    assert torch.isfinite(k.grad).all()


def test_the_fall_back_warning_names_the_callers_line_through_a_module(monkeypatch):
    # (stacklevel=3 from attend_fast named a line of sparsegen/nn/attention.py for a
    # MultiheadAttention call); a tensor subclass stands in for a CUDA tensor
    from sparsegen import attention

    class LooksCuda(torch.Tensor):
        @property
        def is_cuda(self):
            return True

    monkeypatch.setattr(attention, "_warned", set())
    module = sg.nn.MultiheadAttention(4, 2, mapping="hardmax", batch_first=True)
    x = torch.randn(1, 3, 4).as_subclass(LooksCuda)
    q = torch.randn(1, 2, 3, 4, dtype=torch.float64).as_subclass(LooksCuda)
    with pytest.warns(UserWarning, match="falls back to the unfused path") as caught:
        module(x, x, x, need_weights=False)  # hardmax
        scaled_dot_product_attention(q, q, q)  # float64
    assert [w.filename for w in caught] == [__file__, __file__]


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_auto_on_cuda_falls_back_with_one_warning_naming_why(monkeypatch):
    from sparsegen import attention

    monkeypatch.setattr(attention, "_warned", set())  # warned by no earlier test
    q, k, v = (t.double() for t in _qkv(Shape(1, 2, 2, 5, 7, 8, 8), device="cuda"))
    with pytest.warns(UserWarning, match="float64"):
        scaled_dot_product_attention(q, k, v, implementation="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same reason warns once
        scaled_dot_product_attention(q, k, v, implementation="auto")


@pytest.mark.parametrize("device", DEVICES)
def test_torch_func_transforms_take_the_unfused_path_or_name_why(device):
    q, k, v = _qkv(Shape(2, 2, 2, 10, 12, 16, 16), device=device)

    def loss(q, implementation):
        return _attend(implementation, q, k, v, is_causal=True).square().sum()

    leaf = q.clone().requires_grad_()
    (expected,) = torch.autograd.grad(loss(leaf, "fused"), leaf)
    got = torch.func.grad(loss)(q, "auto")
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match=r"torch\.func"):
        torch.func.grad(loss)(q, "fused")
    # forward-mode dual tensors: the fused operator gave no tangent (None), silently
    tangent = torch.randn_like(q)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(q, tangent)
        expected = forward_ad.unpack_dual(_attend("unfused", dual, k, v, is_causal=True)).tangent
        got = forward_ad.unpack_dual(_attend("auto", dual, k, v, is_causal=True)).tangent
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
        with pytest.raises(ValueError, match="forward-mode AD"):
            _attend("fused", dual, k, v)


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="CUDA runs the sync-free test below"
)
@pytest.mark.parametrize("name", [
    "sparsemax", "sparsegen_lin_per_head_lam", "SparsegenLin_learnable", "SparsegenExp_learnable",
    "sparsegen_sq", "sparsecone", "Sparsehourglass_learnable",
])  # fmt: skip
def test_forward_and_backward_read_no_value_on_the_host(name, monkeypatch):
    # The sync-free test below, where CI runs: on CPU tensors in the interpreter, with
    # masks checked as on a device (NaN rows, never a raise), no torch-side code of the
    # fused path reads a tensor's value, in a plain eager call or through the operators.
    checked_as_on_a_device(monkeypatch)
    shape = Shape(1, 4, 2, 20, 23, 8, 8)
    q, k, v = (t.requires_grad_() for t in _qkv(shape))
    mapping = MAPPINGS[name]("cpu")
    bias = _mask("float", shape)

    def step():
        out = _attend("fused", q, k, v, mapping, attn_mask=bias, is_causal=True,
                      enable_gqa=True, dropout_p=0.1)  # fmt: skip
        out.sum().backward()

    with monkeypatch.context() as refused:
        refuse_host_reads(refused)  # the dropout's seed too: the kernels read it
        step()
    with HostReads() as seen:
        step()
    assert not seen.reads


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("name", ["sparsegen_lin_per_head_lam", "Sparsehourglass_learnable"])
def test_forward_and_backward_never_wait_for_the_device(name):
    shape = Shape(2, 4, 2, 300, 333, 64, 64)
    q, k, v = (t.requires_grad_() for t in _qkv(shape, torch.bfloat16, "cuda"))
    mapping = MAPPINGS[name]("cuda")
    bias = _mask("float", shape, torch.bfloat16, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = _attend("fused", q, k, v, mapping, attn_mask=bias, is_causal=True,
                      enable_gqa=True, dropout_p=0.1)  # fmt: skip
        out.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(t.grad is not None for t in (q, k, v))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tied", [1, 21], ids=["on chip", "streamed"])
def test_keys_tied_at_tau_are_left_out_as_the_unfused_path_leaves_them(tied, device):
    # Scores 1, 2/3 and `tied` of 1/3: τ = 1/3 exactly. A float32 sum of the gaps put τ an
    # ulp below the tied ones, which stayed in the support: the output moved by an ulp,
    # dq and dk by a third. 21 ties are more candidates than 16 slots: streamed steps.
    from sparsegen import _triton_attention as kernels

    keys = torch.tensor([1.0, 2 / 3, *[1 / 3] * tied, 0.0], device=device)
    q = torch.ones(1, 1, 1, device=device)
    k, v = keys[None, :, None], torch.randn(1, keys.numel(), 2, device=device)
    results = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernels, "candidate_slots", lambda _: 16)
        for implementation in ("fused", "unfused"):
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            out = scaled_dot_product_attention(
                *leaves, scale=1.0, mapping=sg.sparsemax, implementation=implementation
            )
            out.sum().backward()
            results.append([out.detach(), *(t.grad for t in leaves)])
    for name, fused, unfused in zip(NAMES, *results, strict=False):
        torch.testing.assert_close(fused, unfused, atol=1e-6, rtol=1e-6, msg=lambda m, n=name: n)
    assert torch.equal(results[1][2][0, 2:, 0], torch.zeros(tied + 1, device=device))
