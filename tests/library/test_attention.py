"""Attention: torch equivalence with softmax, references for sparse mappings, gradients, masks."""

import functools
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import HAVE_TRITON, saved_bytes
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import sparsemax_bisect
from torch import nn
from torch.autograd import gradcheck
from torch.func import functional_call

import sparsegen as sg
from sparsegen.attention import scaled_dot_product_attention
from sparsegen.nn import AdditiveAttention, MultiheadAttention

N, L, S, E, H = 3, 4, 5, 8, 2

TORCH_CONFIGS = {
    "default": {},
    "kdim_vdim": {"kdim": 6, "vdim": 5},
    "bias_kv_zero_attn": {"add_bias_kv": True, "add_zero_attn": True},
    "no_bias": {"bias": False},
    "batch_first": {"batch_first": True},
}


def pair(config, mapping="softmax", **kwargs):
    """A torch module and ours with the torch module's state_dict loaded (strict)."""
    theirs = torch.nn.MultiheadAttention(E, H, **config).double()
    ours = MultiheadAttention(E, H, mapping=mapping, **config, **kwargs).double()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def inputs(config, batched=True, length=L, source_length=S):
    def make(n, d):
        shape = (n, d) if not batched else (N, n, d) if config.get("batch_first") else (n, N, d)
        return torch.randn(shape, dtype=torch.float64)

    return (
        make(length, E),
        make(source_length, config.get("kdim", E)),
        make(source_length, config.get("vdim", E)),
    )


def masks(kind):
    padding = torch.zeros(N, S, dtype=torch.bool)
    padding[0, -2:] = True
    padding[2, 0] = True
    attn = torch.rand(L, S) < 0.3
    attn[:, 1] = False  # every query keeps a key: torch gives NaN for fully masked rows
    if kind == "bool":
        return {"key_padding_mask": padding, "attn_mask": attn}
    if kind == "float":
        return {
            "key_padding_mask": torch.zeros(N, S).double().masked_fill(padding, -math.inf),
            "attn_mask": torch.randn(L, S).double().masked_fill(attn, -math.inf),
        }
    if kind == "3d":
        return {
            "attn_mask": (torch.rand(N * H, L, S) < 0.3).index_fill(2, torch.tensor([1]), False)
        }
    return {}


@pytest.mark.parametrize("config", list(TORCH_CONFIGS))
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "3d"])
@pytest.mark.parametrize("average", [True, False])
def test_softmax_matches_torch_multihead_attention(config, mask_kind, average):
    theirs, ours = pair(TORCH_CONFIGS[config])
    q, k, v = inputs(TORCH_CONFIGS[config])
    kwargs = {**masks(mask_kind), "average_attn_weights": average}
    expected, expected_weights = theirs(q, k, v, **kwargs)
    got, weights = ours(q, k, v, **kwargs)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(weights, expected_weights)


def test_softmax_matches_torch_unbatched_causal_and_in_training_without_dropout():
    theirs, ours = pair({})
    q, k, v = inputs({}, batched=False, source_length=L)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.float64)
    expected, expected_weights = theirs(q, k, v, attn_mask=causal, is_causal=True)
    got, weights = ours(q, k, v, is_causal=True)  # ours builds the causal mask itself
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(weights, expected_weights)
    out, none = ours(q, k, v, need_weights=False)
    assert none is None and out.shape == (L, E)


def test_state_dict_round_trip_keeps_the_mapping_parameter():
    ours = MultiheadAttention(E, H, mapping="sparsegen_lin", lam=0.4, learnable=True, per_head=True)
    assert ours.mapping.log_one_minus_lam.shape == (H, 1, 1)
    result = ours.load_state_dict(torch.nn.MultiheadAttention(E, H).state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(ours.mapping.lam, torch.full((H, 1, 1), 0.4))
    copy = MultiheadAttention(E, H, mapping="sparsegen_lin", learnable=True, per_head=True)
    copy.load_state_dict(ours.state_dict())
    torch.testing.assert_close(copy.mapping.lam, ours.mapping.lam)
    # A torch module loads ours back, without the mapping's parameter.
    torch.nn.MultiheadAttention(E, H).load_state_dict(ours.state_dict(), strict=False)


def test_a_strict_load_still_misses_other_modules_mapping_parameters():
    # Keeping our mapping's parameter through a torch state dict must not excuse another
    # module's missing one (the check once dropped any key ending like ours).
    model = torch.nn.ModuleDict({
        "pool": sg.nn.AdditiveAttention(E, mapping="sparsegen_lin", lam=0.5, learnable=True),
        "attn": MultiheadAttention(E, H, mapping="sparsegen_lin", lam=0.5, learnable=True),
    })  # fmt: skip
    state = model.state_dict()
    del state["pool.mapping.log_one_minus_lam"]
    with pytest.raises(RuntimeError, match=r"Missing key.*pool\.mapping\.log_one_minus_lam"):
        model.load_state_dict(state)
    # under a prefix, a torch module's state dict still keeps ours
    state = {f"attn.{k}": v for k, v in torch.nn.MultiheadAttention(E, H).state_dict().items()}
    result = model.load_state_dict({**model.state_dict(), **state})
    assert not result.missing_keys
    del state["attn.in_proj_weight"]
    with pytest.raises(RuntimeError, match=r"Missing key.*in_proj_weight"):
        model["attn"].load_state_dict({k.removeprefix("attn."): v for k, v in state.items()})


@pytest.mark.parametrize(
    "options",
    [
        {"mapping": "sparsegen_lin", "lam": 0.5, "learnable": True},
        {"mapping": "sparsehourglass", "learnable": True},
        {"mapping": "sparsegen_lin", "lam": torch.tensor(0.3)},  # a fixed tensor: a buffer
    ],
)
def test_factory_arguments_reach_the_mappings_parameter(options):
    # device= and dtype= make every parameter and buffer there, the mapping's included
    modules = [
        MultiheadAttention(E, H, device="meta", dtype=torch.float64, **options),
        sg.nn.AdditiveAttention(E, device="meta", dtype=torch.float64, **options),
        sg.nn.LuongAttention(E, device="meta", dtype=torch.float64, **options),
    ]
    for module in modules:
        state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        assert any(name.startswith("mapping.") for name in state), type(module)
        for name, t in state.items():
            assert (t.device.type, t.dtype) == ("meta", torch.float64), (type(module), name)
    # and the twin of a float64 torch module has a float64 learnable λ
    torch_mha = torch.nn.MultiheadAttention(E, H, dtype=torch.float64)
    twin = sg.nn.sparsify_attention(torch_mha, "sparsegen_lin", lam=0.5, learnable=True)
    assert twin.mapping.log_one_minus_lam.dtype == torch.float64


def reference_heads(module, q, k, v, lam=0.0):
    """Per-head sparsemax attention from the weights, with an independent projection."""
    wq, wk, wv = module.in_proj_weight.detach().chunk(3)
    bq, bk, bv = module.in_proj_bias.detach().chunk(3)
    d = E // H
    outputs, weights = [], []
    for h in range(H):
        rows = slice(h * d, (h + 1) * d)
        qh = q @ wq[rows].T + bq[rows]
        kh = k @ wk[rows].T + bk[rows]
        vh = v @ wv[rows].T + bv[rows]
        p = torch.from_numpy(
            sparsemax_bisect((qh @ kh.transpose(-2, -1) / math.sqrt(d)).numpy(), lam)
        )
        weights.append(p)
        outputs.append(p @ vh)
    heads = torch.cat(outputs, -1)
    out = heads @ module.out_proj.weight.detach().T + module.out_proj.bias.detach()
    return out, torch.stack(weights, 1)


@pytest.mark.parametrize("mapping, lam", [("sparsemax", 0.0), ("sparsegen_lin", 0.5)])
def test_sparse_attention_matches_an_independent_reference(mapping, lam):
    kwargs = {"lam": lam} if mapping != "sparsemax" else {}
    module = MultiheadAttention(E, H, mapping=mapping, batch_first=True, **kwargs).double()
    torch.nn.init.normal_(module.in_proj_bias)
    q, k, v = inputs({"batch_first": True})
    out, weights, support = module(q, k, v, average_attn_weights=False, need_support=True)
    expected_out, expected_weights = reference_heads(module, q, k, v, lam)
    torch.testing.assert_close(weights, expected_weights, atol=1e-9, rtol=0)
    torch.testing.assert_close(out, expected_out, atol=1e-9, rtol=1e-7)
    assert torch.equal(support, (expected_weights > 1e-12).sum(-1))
    assert (weights == 0).any()  # sparse indeed, with exact zeros


MAPPINGS = {
    "softmax": {"mapping": "softmax"},
    "sparsemax": {"mapping": "sparsemax"},
    "sparsegen_lin": {"mapping": "sparsegen_lin", "lam": 0.3, "learnable": True, "per_head": True},
    "sparsehourglass": {"mapping": "sparsehourglass", "q": 0.5, "learnable": True},
    "sparsegen_exp": {"mapping": sg.sparsegen_exp, "lam": -0.5},
}


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_multihead_attention_gradcheck(name):
    module = MultiheadAttention(4, 2, batch_first=True, **MAPPINGS[name]).double()
    params = {n: p.detach().clone().requires_grad_() for n, p in module.named_parameters()}
    q, k, v = (torch.randn(2, n, 4, dtype=torch.float64, requires_grad=True) for n in (3, 4, 4))
    padding = torch.tensor([[False, False, False, True], [False, False, False, False]])
    names = list(params)

    def f(q, k, v, *values):
        out, _ = functional_call(
            module, dict(zip(names, values, strict=True)), (q, k, v), {"key_padding_mask": padding}
        )
        return out

    assert gradcheck(f, (q, k, v, *params.values()))


@pytest.mark.parametrize("name", ["softmax", "sparsemax", "sparsegen_lin", "sparsehourglass"])
def test_additive_attention_gradcheck_and_formula(name):
    options = {k: v for k, v in MAPPINGS[name].items() if k != "per_head"}
    module = AdditiveAttention(3, query_dim=2, attn_dim=4, **options).double()
    keys = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    query = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    context, weights, support = module(keys, query, mask)
    # z_t = vᵀ tanh(W h_t + U s + b), p = mapping(z), c = Σ p_t h_t
    z = torch.tanh(
        keys @ module.key_proj.weight.T
        + (query @ module.query_proj.weight.T + module.query_proj.bias).unsqueeze(1)
    ) @ module.score.weight.squeeze(0)
    torch.testing.assert_close(weights, module.mapping(z, mask=mask))
    torch.testing.assert_close(context, (weights.unsqueeze(-1) * keys).sum(1))
    assert torch.equal(support, (weights > 0).sum(-1))
    assert weights[1, 3:].eq(0).all()
    params = dict(module.named_parameters())
    names = list(params)

    def f(keys, query, *values):
        return functional_call(module, dict(zip(names, values, strict=True)), (keys, query, mask))[
            0
        ]

    values = [p.detach().clone().requires_grad_() for p in params.values()]
    assert gradcheck(f, (keys, query, *values))


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal"])
def test_functional_softmax_matches_torch_sdpa(mask_kind):
    q, k, v = (torch.randn(2, 3, n, 4, dtype=torch.float64) for n in (5, 5, 5))
    mask = {
        "none": None,
        "bool": torch.rand(5, 5) > 0.3,
        "float": torch.randn(2, 1, 5, 5, dtype=torch.float64),
        "causal": None,
    }[mask_kind]
    if mask_kind == "bool":
        mask[:, 0] = True
    causal = mask_kind == "causal"
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal
    )
    got = scaled_dot_product_attention(q, k, v, mask, is_causal=causal, mapping=sg.softmax)
    torch.testing.assert_close(got, expected)


def test_functional_sparse_attention_gradcheck_and_mapping_forms():
    q, k, v = (torch.randn(2, n, 3, dtype=torch.float64, requires_grad=True) for n in (3, 4, 4))
    lin = functools.partial(sg.sparsegen_lin, lam=0.4)
    assert gradcheck(lambda *t: scaled_dot_product_attention(*t, mapping=lin), (q, k, v))
    assert gradcheck(lambda *t: scaled_dot_product_attention(*t, is_causal=True), (q, k, v))
    as_module = scaled_dot_product_attention(q, k, v, mapping=sg.nn.SparsegenLin(0.4))
    torch.testing.assert_close(as_module, scaled_dot_product_attention(q, k, v, mapping=lin))
    result = scaled_dot_product_attention(q, k, v, need_weights=True)
    assert torch.equal(result.support_size, (result.weights > 0).sum(-1))
    expected = sparsemax_bisect((q @ k.transpose(1, 2)).detach().numpy() / math.sqrt(3))
    np.testing.assert_allclose(result.weights.detach().numpy(), expected, atol=1e-9)


def test_mapping_given_every_way_agrees():
    q, k, v = inputs({})
    base = MultiheadAttention(E, H, mapping="sparsegen_lin", lam=0.5).double()
    forms = [
        {"mapping": "sparsegen-lin", "lam": 0.5},
        {"mapping": sg.sparsegen_lin, "lam": 0.5},
        {"mapping": sg.nn.SparsegenLin(0.5)},
        {"mapping": functools.partial(sg.sparsegen_lin, lam=0.5)},
        {"mapping": "sparsegen_lin", "lam": 0.5, "per_head": True},
    ]
    expected = base(q, k, v)[0]
    weights = {k: v for k, v in base.state_dict().items() if not k.startswith("mapping")}
    for form in forms:
        other = MultiheadAttention(E, H, **form).double()
        other.load_state_dict(weights)
        torch.testing.assert_close(other(q, k, v)[0], expected)


def test_learnable_per_head_parameters_get_their_own_gradients():
    module = MultiheadAttention(
        E, H, mapping="sparsehourglass", q=0.5, learnable=True, per_head=True
    )
    q, k, v = (t.float() for t in inputs({}))
    module(q, k, v)[0].square().sum().backward()
    grad = module.mapping.log_q.grad
    assert grad.shape == (H, 1, 1) and torch.isfinite(grad).all() and grad[0] != grad[1]


@pytest.mark.parametrize("learnable", [False, True])
def test_per_head_values_given_as_a_vector_or_one_value(learnable):
    # a (H,) λ was taken as it was, and the first forward failed on a shape (1, 1, 1, H)
    q, k, v = (t.float() for t in inputs({}))
    lam = torch.tensor([0.1, 0.6])
    made = {
        "vector": MultiheadAttention(E, H, mapping="sparsegen_lin", lam=lam, per_head=True,
                                     learnable=learnable),
        "list": MultiheadAttention(E, H, mapping="sparsegen_lin", lam=[0.1, 0.6], per_head=True,
                                   learnable=learnable),
        "heads": MultiheadAttention(E, H, mapping="sparsegen_lin", lam=lam.view(H, 1, 1),
                                    per_head=True, learnable=learnable),
    }  # fmt: skip
    weights = {name: module.mapping.lam for name, module in made.items()}
    for value in weights.values():
        torch.testing.assert_close(value.float(), lam.view(H, 1, 1))
    for one_value in (torch.tensor(0.3), np.float32(0.3), np.array(0.3)):
        one = MultiheadAttention(E, H, mapping="sparsegen_lin", lam=one_value, per_head=True)
        torch.testing.assert_close(one.mapping.lam.float(), torch.full((H, 1, 1), 0.3))
    made["vector"](q, k, v)
    with pytest.raises(ValueError, match=r"lam holds one value per head here, shape \(2, 1, 1\)"):
        MultiheadAttention(E, H, mapping="sparsegen_lin", lam=[0.1, 0.2, 0.3], per_head=True)


def test_a_library_module_class_is_taken_as_its_name_and_others_are_refused():
    # mapping=sg.nn.Sparsemax was wrapped as a callable, and the first forward called the
    # constructor: "_Mapping.__init__() got multiple values for argument 'dim'"
    q, k, v = (t.float() for t in inputs({}))
    by_class = MultiheadAttention(E, H, mapping=sg.nn.SparsegenLin, lam=0.5, per_head=True)
    by_name = MultiheadAttention(E, H, mapping="sparsegen_lin", lam=0.5, per_head=True)
    assert repr(by_class.mapping) == repr(by_name.mapping)
    by_name.load_state_dict(by_class.state_dict())
    torch.testing.assert_close(by_class(q, k, v)[0], by_name(q, k, v)[0])
    with pytest.raises(TypeError, match=r"pass a module, Softmax\(\.\.\.\), not its class"):
        MultiheadAttention(E, H, mapping=nn.Softmax)
    with pytest.raises(ValueError, match=r"give SparsegenLin.* its values yourself"):
        MultiheadAttention(E, H, mapping=sg.nn.SparsegenLin(0.5), per_head=True)


def test_mapping_parameters_are_the_learnt_lambdas_and_qs_each_once():
    shared = sg.nn.SparsegenLin(lam=0.3, learnable=True)
    model = nn.ModuleDict(
        {
            "attention": MultiheadAttention(
                E, H, mapping="sparsehourglass", q=0.5, learnable=True, per_head=True
            ),
            "fixed": sg.nn.SparsegenLin(lam=0.3),
            "one": shared,
            "again": nn.Sequential(nn.Linear(2, 2), shared),
        }
    )
    learnt = sg.nn.mapping_parameters(model)
    assert len(learnt) == 2
    assert learnt[0] is model["attention"].mapping.log_q and learnt[1] is shared.log_one_minus_lam
    assert sg.nn.mapping_parameters(nn.Linear(2, 2)) == []


@pytest.mark.parametrize("mapping", ["softmax", "sparsemax", "sparsehourglass", "sparsegen_lin"])
def test_fully_masked_queries_give_zero_weights_and_output_without_nan(mapping):
    module = MultiheadAttention(E, H, mapping=mapping, batch_first=True).double()
    q, k, v = inputs({"batch_first": True})
    q.requires_grad_()
    padding = torch.zeros(N, S, dtype=torch.bool)
    padding[1] = True  # batch element 1 may attend to nothing
    attn = torch.zeros(L, S, dtype=torch.bool)
    attn[2] = True  # nor may query 2 anywhere
    out, weights = module(q, k, v, key_padding_mask=padding, attn_mask=attn)
    bias = module.out_proj.bias
    torch.testing.assert_close(out[1], bias.expand(L, E))
    torch.testing.assert_close(out[:, 2], bias.expand(N, E))
    assert weights[1].eq(0).all() and weights[:, 2].eq(0).all()
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_additive_attention_fully_masked_row_is_zero():
    module = AdditiveAttention(3)
    context, weights, support = module(
        torch.randn(2, 4, 3), torch.randn(2, 3), torch.zeros(2, 4, dtype=torch.bool)
    )
    assert context.eq(0).all() and weights.eq(0).all() and support.eq(0).all()


def test_nan_in_a_query_stays_in_its_row():
    module = MultiheadAttention(E, H, batch_first=True)
    q, k, v = (t.float() for t in inputs({"batch_first": True}))
    q[1, 2, 0] = math.nan
    out, weights = module(q, k, v)
    assert out[1, 2].isnan().all() and weights[1, 2].isnan().all()
    finite = torch.ones(N, L, dtype=torch.bool)
    finite[1, 2] = False
    assert torch.isfinite(out[finite]).all() and torch.isfinite(weights[finite]).all()


@pytest.mark.parametrize("implementation", ["auto", "unfused", "fused"])
def test_nan_at_a_masked_position(implementation):
    # A masked key is never scored, so NaN there is ignored by every sparse mapping and
    # by the unfused softmax; softmax under "auto" is torch's own SDPA, which scores it
    # and gives NaN, as torch does. A masked value still meets its zero weight, and
    # 0 · NaN is NaN on every path, as in torch (documented in docs/attention.md).
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    keep = torch.tensor([True, True, False, True, True]).expand(1, 1, 1, 5)
    nan_key, nan_value = k.clone(), v.clone()
    nan_key[..., 2, :], nan_value[..., 2, :] = math.nan, math.nan
    if implementation == "fused" and not HAVE_TRITON:
        pytest.skip("the fused kernel needs triton")
    mappings = (sg.sparsemax,) if implementation == "fused" else (sg.sparsemax, sg.softmax)
    for mapping in mappings:
        attend = functools.partial(
            scaled_dot_product_attention, mapping=mapping, implementation=implementation
        )
        out = attend(q, nan_key, v, keep)
        torch_sdpa = mapping is sg.softmax and implementation == "auto"
        assert out.isnan().all() if torch_sdpa else torch.isfinite(out).all()
        if not torch_sdpa:
            torch.testing.assert_close(out, attend(q, k, v, keep))
        assert attend(q, k, nan_value, keep).isnan().all()


def test_empty_sequences():
    module = MultiheadAttention(E, H, batch_first=True)
    q, k, v = (t.float() for t in inputs({"batch_first": True}))
    out, weights = module(q, k[:, :0], v[:, :0])  # nothing to attend to: zero attention
    torch.testing.assert_close(out, module.out_proj.bias.detach().expand(N, L, E))
    assert weights.shape == (N, L, 0)
    out, weights = module(q[:, :0], k, v)
    assert out.shape == (N, 0, E) and weights.shape == (N, 0, S)


@pytest.mark.parametrize("mapping", [sg.softmax, sg.sparsemax])
def test_every_mapping_checks_and_broadcasts_masks_alike(mapping):
    # softmax goes to torch's SDPA, which took a (S,) key mask as an IndexError, a mask that
    # does not broadcast as torch's own error, and any mask at all when S = 0
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    keys = torch.tensor([True, False, True, True, False])
    got = scaled_dot_product_attention(q, k, v, attn_mask=keys, mapping=mapping)
    expected = scaled_dot_product_attention(
        q, k, v, attn_mask=keys.expand(4, 5), mapping=mapping, implementation="unfused"
    )
    torch.testing.assert_close(got, expected)
    for bad_mask, key in (
        (torch.ones(3, 5, dtype=torch.bool), k),
        (torch.ones(7, 3), k[..., :0, :]),
    ):
        with pytest.raises(ValueError, match="does not broadcast"):
            scaled_dot_product_attention(q, key, key, attn_mask=bad_mask, mapping=mapping)
    # no features: every score is 0, the default scale 1/sqrt(0) never divides
    out = scaled_dot_product_attention(q[..., :0], k[..., :0], v, mapping=mapping)
    torch.testing.assert_close(out, v.mean(-2, keepdim=True).expand(2, 3, 4, 8))
    # no key: zeros in the graph, zero gradients (softmax's were cut off from autograd)
    leaves = [t.clone().requires_grad_() for t in (q, k[..., :0, :], v[..., :0, :])]
    leaves[0].data[0, 0, 0, 0] = math.nan
    out = scaled_dot_product_attention(*leaves, mapping=mapping)
    assert torch.equal(out, torch.zeros(2, 3, 4, 8))
    out.sum().backward()
    assert all(torch.equal(t.grad, torch.zeros_like(t)) for t in leaves)
    # a float64 float mask with float32 scores is added in their dtype (matmul's error)
    bias = torch.randn(4, 5, dtype=torch.float64)
    got = scaled_dot_product_attention(q, k, v, attn_mask=bias, mapping=mapping)
    expected = scaled_dot_product_attention(q, k, v, attn_mask=bias.float(), mapping=mapping)
    torch.testing.assert_close(got, expected)


def test_dropout_keeps_zeros_and_is_off_in_eval():
    module = MultiheadAttention(E, H, dropout=0.5, batch_first=True)
    q, k, v = (t.float() for t in inputs({"batch_first": True}))
    module.eval()
    evaluated = module(q, k, v, average_attn_weights=False)[1]
    torch.testing.assert_close(module(q, k, v, average_attn_weights=False)[1], evaluated)
    module.train()
    trained = module(q, k, v, average_attn_weights=False)[1]
    assert trained[evaluated == 0].eq(0).all()
    kept = trained[(evaluated > 0) & (trained > 0)]
    torch.testing.assert_close(kept, 2 * evaluated[(evaluated > 0) & (trained > 0)])


def test_support_sizes():
    module = MultiheadAttention(E, H)
    q, k, v = (t.float() for t in inputs({}))
    padding = torch.zeros(N, S, dtype=torch.bool)
    padding[0, :2] = True
    _, weights, support = module(
        q, k, v, key_padding_mask=padding, average_attn_weights=False, need_support=True
    )
    assert support.shape == (N, H, L) and torch.equal(support, (weights > 0).sum(-1))
    assert support[0].max() <= S - 2
    soft = MultiheadAttention(E, H, mapping="softmax")
    assert soft(q, k, v, need_support=True)[2].eq(S).all()


def module_saved_bytes(module, *args):
    """Bytes autograd keeps for the backward of one forward call."""
    return saved_bytes(lambda *a: module(*a)[0], *args)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mapping": "sparsemax"},
        {"mapping": "sparsegen_lin", "lam": 0.3, "learnable": True, "per_head": True},
        {"mapping": "sparsecone", "q": 0.5},
        {"mapping": "sparsehourglass", "q": 0.5, "learnable": True},
        {"mapping": "sum_normalization_pp"},
    ],
    ids=lambda kwargs: kwargs["mapping"],
)
def test_sparse_attention_keeps_no_more_than_softmax_attention(kwargs):
    q, k, v = (t.float().requires_grad_() for t in inputs({}, length=16, source_length=32))
    soft = module_saved_bytes(MultiheadAttention(E, H, mapping="softmax"), q, k, v)
    sparse = module_saved_bytes(MultiheadAttention(E, H, **kwargs), q, k, v)
    # a support size (int64) a query, and a few values of the scale's formula (float64)
    per_query = N * H * 16 * 8 * 16
    assert sparse <= soft + per_query


def test_bad_input_errors():
    with pytest.raises(ValueError, match="divisible"):
        MultiheadAttention(10, 3)
    for sizes, name in (((8.0, 2), "embed_dim"), ((8, 2.0), "num_heads"), ((8, True), "num_heads")):
        with pytest.raises(TypeError, match=f"{name} must be an int; got"):  # (2.0 failed at
            MultiheadAttention(*sizes)  # the first forward, in unflatten)
    with pytest.raises(ValueError, match="lam must be < 1"):
        MultiheadAttention(E, H, mapping="sparsegen_lin", lam=1.0)
    with pytest.raises(ValueError, match="takes no q"):
        MultiheadAttention(E, H, mapping="sparsemax", q=1.0)
    with pytest.raises(ValueError, match="unknown mapping"):
        MultiheadAttention(E, H, mapping="entmax")
    module = MultiheadAttention(E, H)
    q, k, v = (t.float() for t in inputs({}))
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        module(q, k, v, key_padding_mask=torch.zeros(N, S + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask must have shape"):
        module(q, k, v, attn_mask=torch.zeros(L + 1, S, dtype=torch.bool))
    with pytest.raises(ValueError, match="finite values and -inf"):
        module(q, k, v, attn_mask=torch.full((L, S), math.nan))
    with pytest.raises(TypeError, match="boolean or floating"):
        module(q, k, v, attn_mask=torch.zeros(L, S, dtype=torch.int64))
    for name in ("attn_mask", "key_padding_mask"):  # (an AttributeError on .shape)
        with pytest.raises(TypeError, match=f"{name} must be a tensor; got list"):
            module(q, k, v, **{name: [[False] * S] * L})
    # the function's query, key and value (an AttributeError on an array, a RuntimeError
    # from torch's product on integers)
    for bad, kind in ((q.numpy(), "ndarray"), (q.long(), "torch.int64")):
        with pytest.raises(TypeError, match=f"query must be a floating-point tensor; got {kind}"):
            scaled_dot_product_attention(bad, k, v)
    with pytest.raises(TypeError, match=r"value must be a floating-point tensor; got torch\.bool"):
        scaled_dot_product_attention(q, k, v > 0)
    with pytest.raises(ValueError, match="feature sizes"):
        module(q[..., :4], k, v)
    with pytest.raises(ValueError, match="same batch size"):
        module(q, k[:, :2], v[:, :2])
    with pytest.raises(ValueError, match="all be 3-D"):
        module(q[0], k, v)
    q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(q, k, v, torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="last dimension"):
        scaled_dot_product_attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match="same length"):
        scaled_dot_product_attention(q, k, v[:, :2])
    # (a broadcast error "at -1" from inside, naming neither the heads nor GQA)
    heads_q, heads_k = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 5, 8)
    heads = r"\(4 query heads, 2 key heads: enable_gqa=True shares"
    for implementation in ("auto", "unfused"):
        with pytest.raises(ValueError, match=rf"broadcast in the dimensions .* {heads}"):
            scaled_dot_product_attention(heads_q, heads_k, heads_k, implementation=implementation)
    with pytest.raises(ValueError, match=r"must broadcast .* \(2, 4, 3, 8\), \(3, 4, 5, 8\)"):
        scaled_dot_product_attention(heads_q, *[torch.randn(3, 4, 5, 8)] * 2)
    for shapes in [(q, k[0, 0], v), (q, k, v[0, 0]), (q[0, 0, 0], k, v)]:  # 1-D keys, 0-d q
        with pytest.raises(ValueError, match="at least 2-D"):
            scaled_dot_product_attention(*shapes)
    for scale in (math.inf, math.nan):  # (the fused and unfused paths differed: finite, NaN)
        with pytest.raises(ValueError, match="scale must be a finite number"):
            scaled_dot_product_attention(q, k, v, scale=scale)


@settings(max_examples=40, deadline=None)
@given(
    length=st.integers(1, 5),
    source_length=st.integers(1, 6),
    mapping=st.sampled_from(["sparsemax", "sparsegen_lin", "sparsehourglass", "softmax"]),
    seed=st.integers(0, 2**16),
)
def test_weights_are_distributions_over_the_kept_keys(length, source_length, mapping, seed):
    generator = torch.Generator().manual_seed(seed)
    module = MultiheadAttention(4, 2, batch_first=True, mapping=mapping)
    q = torch.randn(2, length, 4, generator=generator) * 3
    k = torch.randn(2, source_length, 4, generator=generator) * 3
    ignored = torch.rand(2, source_length, generator=generator) < 0.3
    _, weights, support = module(
        q, k, k, key_padding_mask=ignored, average_attn_weights=False, need_support=True
    )
    assert (weights >= 0).all() and weights.masked_select(ignored[:, None, None]).eq(0).all()
    sums = weights.sum(-1)
    anything = (~ignored).any(1)[:, None, None].expand_as(sums)
    torch.testing.assert_close(sums[anything], torch.ones_like(sums[anything]))
    assert sums[~anything].eq(0).all()
    assert (support <= (~ignored).sum(1)[:, None, None]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_its_dtype(dtype):
    module = MultiheadAttention(E, H, batch_first=True, mapping="sparsehourglass").to(dtype)
    x = torch.randn(2, 5, E).to(dtype)
    out, weights = module(x, x, x)
    assert out.dtype == dtype and weights.dtype == dtype
    tolerance = 4 * torch.finfo(dtype).eps  # the head average is computed in the low precision
    torch.testing.assert_close(weights.float().sum(-1), torch.ones(2, 5), atol=tolerance, rtol=0)


@pytest.mark.parametrize("mapping", ["softmax", "sparsemax", "sparsehourglass"])
@pytest.mark.parametrize("masks", ["none", "padding", "causal", "per_head_float"])
def test_blocked_queries_give_the_whole_computation(mapping, masks, monkeypatch):
    # need_weights=False attends in query blocks (checkpointed when recording): the
    # outputs and every gradient are those of the unblocked computation.
    from sparsegen.nn import attention as module

    torch.manual_seed(3)
    length, source_length = 11, 9
    attention = MultiheadAttention(E, H, mapping=mapping, dtype=torch.float64)
    q = torch.randn(N, length, E, dtype=torch.float64, requires_grad=True)
    kv = torch.randn(N, source_length, E, dtype=torch.float64, requires_grad=True)
    kwargs = {}
    if masks == "padding":
        padding = torch.zeros(N, source_length, dtype=torch.bool)
        padding[1, -3:] = True
        kwargs["key_padding_mask"] = padding
    elif masks == "causal":
        kwargs["is_causal"] = True
    elif masks == "per_head_float":
        float_mask = torch.randn(N * H, length, source_length, dtype=torch.float64)
        float_mask[:, :, 0] = -math.inf
        kwargs["attn_mask"] = float_mask
    attention.batch_first = True

    def run(need_weights):
        out = attention(q, kv, kv, need_weights=need_weights, **kwargs)[0]
        grads = torch.autograd.grad((out**2).sum(), [q, kv, *attention.parameters()])
        return out, grads

    monkeypatch.setattr(module, "BLOCK_SCORES", N * H * source_length * 3)  # 3 queries a block
    blocked, blocked_grads = run(need_weights=False)
    whole, whole_grads = run(need_weights=True)
    torch.testing.assert_close(blocked, whole)
    for got, expected in zip(blocked_grads, whole_grads, strict=True):
        torch.testing.assert_close(got, expected)


def test_blocked_attention_keeps_a_block_for_the_backward(monkeypatch):
    from sparsegen.nn import attention as module

    q, k, v = (t.float().requires_grad_() for t in inputs({}, length=64, source_length=64))
    model = MultiheadAttention(E, H, mapping="sparsemax")
    whole = module_saved_bytes(
        model, q, k, v
    )  # need_weights=True: the (N, H, L, S) weights are kept
    monkeypatch.setattr(module, "BLOCK_SCORES", N * H * 64 * 8)

    def without_weights(*args):
        return model(*args, need_weights=False)

    blocked = module_saved_bytes(without_weights, q, k, v)
    weights_bytes = N * H * 64 * 64 * 4
    assert whole >= weights_bytes and blocked < weights_bytes / 2


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal"])
def test_grouped_query_attention_matches_torch_and_repeated_heads(mask_kind):
    q = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 7, d, dtype=torch.float64) for d in (5, 3))
    mask = {
        "none": None,
        "bool": torch.rand(2, 6, 4, 7) > 0.3,  # one mask per query head
        "float": torch.randn(2, 1, 4, 7, dtype=torch.float64),
        "causal": None,
    }[mask_kind]
    causal = mask_kind == "causal"
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True
    )
    got = scaled_dot_product_attention(
        q, k, v, mask, is_causal=causal, enable_gqa=True, mapping=sg.softmax
    )
    if mask_kind == "bool":  # torch gives NaN for a fully masked row, the library zeros
        got, expected = got[mask.any(-1)], expected[mask.any(-1)]
    torch.testing.assert_close(got, expected)
    # sparse: as if each key/value head were repeated for its group of query heads
    sparse = scaled_dot_product_attention(q, k, v, mask, is_causal=causal, enable_gqa=True)
    repeated = (t.repeat_interleave(3, dim=1) for t in (k, v))
    torch.testing.assert_close(
        sparse, scaled_dot_product_attention(q, *repeated, mask, is_causal=causal)
    )


def test_grouped_query_attention_gradcheck_weights_and_errors():
    q = torch.randn(1, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, 2, 4, 2, dtype=torch.float64, requires_grad=True) for _ in range(2))
    lin = functools.partial(sg.sparsegen_lin, lam=0.3)
    assert gradcheck(
        lambda *t: scaled_dot_product_attention(*t, enable_gqa=True, mapping=lin), (q, k, v)
    )
    per_head = sg.nn.SparsegenLin(torch.tensor([0.1, 0.2, 0.3, 0.4]).view(4, 1, 1))
    result = scaled_dot_product_attention(
        q, k, v, enable_gqa=True, mapping=per_head, need_weights=True
    )
    assert result.weights.shape == (1, 4, 3, 4) and result.support_size.shape == (1, 4, 3)
    with pytest.raises(ValueError, match="dividing the query heads"):
        scaled_dot_product_attention(q[:, :3], k, v, enable_gqa=True)
    with pytest.raises(ValueError, match="head dimension"):
        scaled_dot_product_attention(q[0, 0], k[0, 0], v[0, 0], enable_gqa=True)
    with pytest.raises(ValueError, match="enable_gqa=True shares"):  # unequal heads without it
        scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_very_negative_float_mask_values_exclude_like_minus_infinity(dtype):
    q, k, v = (torch.randn(2, 3, 4, dtype=dtype) for _ in range(3))
    lowest = torch.finfo(dtype).min
    mask = torch.zeros(3, 3, dtype=dtype)
    mask[0] = lowest  # query 0 may attend to nothing: zero weights, not uniform ones
    mask[1, 0] = -1e4  # the threshold itself excludes (bfloat16 rounds it to -9984)
    mask[1, 2] = -1e9 if dtype != torch.float16 else lowest
    mask[2, 1] = -9e3  # above it, a (huge) bias like any other
    result = scaled_dot_product_attention(q, k, v, mask, need_weights=True, mapping=sg.softmax)
    assert result.weights[:, 0].eq(0).all() and result.output[:, 0].eq(0).all()
    assert result.weights[:, 1, 0].eq(0).all() and result.weights[:, 1, 2].eq(0).all()
    assert result.weights[:, 1, 1].eq(1).all()
    inf_mask = mask.masked_fill(mask <= -9.5e3, -math.inf)
    # (the -inf mask takes torch's SDPA, whose half-precision rounding differs from ours)
    atol = torch.finfo(dtype).eps if dtype == torch.bfloat16 else None
    torch.testing.assert_close(
        result.output,
        scaled_dot_product_attention(q, k, v, inf_mask, mapping=sg.softmax),
        atol=atol,
        rtol=None if atol is None else 0.0,
    )


@pytest.mark.parametrize(
    "mapping", ["sparsegen_sq", "spherical_softmax", "sparsecone", "sparsehourglass",
                "sum_normalization_pp", "sparsemax", "softmax"],
)  # fmt: skip
@pytest.mark.parametrize("padding", [-1e4, -1e9, "lowest"])
def test_multihead_attention_reads_softmax_codes_padding_values_as_padding(mapping, padding):
    # Added to the scores, -1e9 became sparsegen-sq's and spherical softmax's largest score
    # (every query attended to the padding alone) and sparsecone's scale NaN.
    torch.manual_seed(0)
    module = MultiheadAttention(E, H, mapping=mapping, batch_first=True)
    x = torch.rand(2, 4, E)
    ignored = torch.tensor([[False, True, False, False], [True, True, True, True]])
    value = torch.finfo(x.dtype).min if padding == "lowest" else padding
    float_mask = torch.zeros(ignored.shape).masked_fill(ignored, value)
    out, weights = module(x, x, x, key_padding_mask=float_mask)
    expected_out, expected_weights = module(x, x, x, key_padding_mask=ignored)
    torch.testing.assert_close(weights, expected_weights, rtol=0, atol=0)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
    assert weights[0, :, 1].eq(0).all() and weights[1].eq(0).all()  # row 1 keeps nothing


def test_sparsify_attention_warns_when_it_replaces_nothing():
    with pytest.warns(UserWarning, match="replaced no attention module") as record:
        sg.nn.sparsify_attention(torch.nn.Linear(2, 2))
    assert "transformers" not in str(record[0].message)

    class LooksLikeAPreTrainedModel(torch.nn.Module):
        config = "its configuration"

        def set_attn_implementation(self, name):
            pass

    with pytest.warns(UserWarning, match=r"sparsegen\.integrations\.transformers\.sparsify"):
        sg.nn.sparsify_attention(LooksLikeAPreTrainedModel())
    layer = torch.nn.TransformerEncoderLayer(E, H, batch_first=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sg.nn.sparsify_attention(layer)


def test_a_bare_torch_attention_comes_back_as_its_sparse_twin():
    # it has no parent to be replaced in: it used to be kept, with a warning that said no
    # MultiheadAttention was found in MultiheadAttention
    torch_attention = torch.nn.MultiheadAttention(E, H, batch_first=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparse = sg.nn.sparsify_attention(torch_attention, "sparsegen_lin", lam=0.5)
    assert type(sparse) is MultiheadAttention and sparse.mapping.lam == 0.5
    q = torch.randn(2, L, E)
    softmax = sg.nn.sparsify_attention(torch_attention, "softmax")
    torch.testing.assert_close(softmax(q, q, q)[0], torch_attention(q, q, q)[0])


def test_sparsify_attention_keeps_the_parameters_themselves():
    # Fine-tuning a model with a frozen backbone, or with an optimiser built first: the
    # twins hold torch's Parameter objects, so frozen stays frozen and the optimiser's
    # parameters are the model's; an attention used twice (tied layers) stays one.
    shared = torch.nn.MultiheadAttention(E, H, batch_first=True, add_bias_kv=True)
    frozen = torch.nn.MultiheadAttention(E, H, batch_first=True, kdim=6, vdim=5)
    frozen.requires_grad_(False)
    model = torch.nn.ModuleDict({"a": shared, "b": shared, "frozen": frozen})
    before = {name: p for name, p in model.named_parameters()}
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    sg.nn.sparsify_attention(model, "sparsegen_lin", lam=0.3)
    assert model["a"] is model["b"] and type(model["a"]) is MultiheadAttention
    after = {name: p for name, p in model.named_parameters()}
    assert after.keys() == before.keys() and all(after[n] is p for n, p in before.items())
    assert not any(p.requires_grad for p in model["frozen"].parameters())
    x = torch.randn(2, L, E)
    model["a"](x, x, x)[0].sum().backward()
    weight = model["a"].in_proj_weight.detach().clone()
    optimiser.step()  # moves the model's own weights
    assert not torch.equal(model["a"].in_proj_weight, weight)


def test_one_value_per_head_needs_a_parameter_to_hold():
    for mapping in ("sparsemax", functools.partial(sg.sparsegen_lin, lam=0.5)):
        with pytest.raises(ValueError, match="per_head=True"):
            MultiheadAttention(E, H, mapping=mapping, per_head=True, learnable=False)


def test_support_sizes_are_counted_only_when_asked_for():
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 6)
    counted = scaled_dot_product_attention(q, k, v, need_weights=True)
    skipped = scaled_dot_product_attention(q, k, v, need_weights=True, need_support=False)
    assert skipped.support_size is None
    assert torch.equal(skipped.output, counted.output) and torch.equal(
        skipped.weights, counted.weights
    )
    assert torch.equal(counted.support_size, (counted.weights > 0).sum(-1))


@pytest.mark.parametrize("implementation", ["auto", "unfused"])
def test_dropout_of_one_drops_every_weight_as_in_torch(implementation):
    # torch's function and module take p = 1 (zeros); [0, 1) refused it
    q = torch.randn(1, 2, 5, 8, requires_grad=True)
    out = scaled_dot_product_attention(q, q, q, dropout_p=1.0, implementation=implementation)
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(q.grad, torch.zeros_like(q))
    attention = MultiheadAttention(E, H, dropout=1.0, batch_first=True)
    x = torch.randn(2, L, E)
    torch.testing.assert_close(attention(x, x, x)[0], attention.out_proj.bias.expand(2, L, E))
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\]"):
        scaled_dot_product_attention(q, q, q, dropout_p=1.5)


@pytest.mark.skipif(not HAVE_TRITON, reason="the fused kernel needs triton")
def test_the_fused_kernel_names_dropout_of_one_as_what_it_leaves_to_the_unfused_path():
    q = torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match="dropout_p = 1"):
        scaled_dot_product_attention(q, q, q, dropout_p=1.0, implementation="fused")


def test_a_half_query_takes_a_float32_mask_at_float32_as_torch_does():
    # the mask was cast to the query's dtype first: bfloat16 made 1000.3 and 1000.1 one
    # value ([0.5, 0.5] where torch gives [0.55, 0.45]), float16 made 7e4 inf (a NaN row)
    import torch.nn.functional as F

    for dtype, bias in ((torch.bfloat16, [1000.3, 1000.1]), (torch.float16, [7e4, 7e4 - 0.7])):
        q = k = torch.zeros(1, 1, 2, 4, dtype=dtype)
        v = torch.eye(2, 4, dtype=dtype)[None, None]
        mask = torch.tensor([bias, bias])
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        for need_weights in (False, True):
            got = scaled_dot_product_attention(
                q, k, v, mask, mapping=sg.softmax, need_weights=need_weights
            )
            got = got.output if need_weights else got
            torch.testing.assert_close(got, expected)
        reference = scaled_dot_product_attention(
            q.float(), k.float(), v.float(), mask, mapping=sg.sparsemax
        )
        got = scaled_dot_product_attention(
            q, k, v, mask, mapping=sg.sparsemax, implementation="unfused"
        )
        torch.testing.assert_close(got, reference.to(dtype))
    # a mask torch refuses (float16 with bfloat16 queries) is added at float32
    q = torch.zeros(1, 1, 2, 4, dtype=torch.bfloat16)
    mask = torch.tensor([[1.5, 1.25]] * 2, dtype=torch.float16)
    expected = F.scaled_dot_product_attention(q, q, q, attn_mask=mask.float())
    torch.testing.assert_close(
        scaled_dot_product_attention(q, q, q, mask, mapping=sg.softmax), expected
    )


def test_softmax_with_grouped_heads_and_no_keys_or_a_one_dimensional_query():
    # (GQA with S = 0 broadcast the value's heads against the query's: a RuntimeError; a
    # 1-D query, which every other path takes, went to torch's SDPA, which refuses it; and
    # is_causal with it was an IndexError)
    q, k, v = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 0, 8), torch.randn(1, 2, 0, 5)
    for mapping in (sg.softmax, sg.sparsemax):
        out = scaled_dot_product_attention(q, k, v, mapping=mapping, enable_gqa=True)
        assert out.shape == (1, 4, 3, 5) and out.eq(0).all()
    q, k, v = torch.randn(8), torch.randn(5, 8), torch.randn(5, 6)
    expected = scaled_dot_product_attention(q, k, v, mapping=sg.softmax, need_weights=True).output
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mapping=sg.softmax), expected)
    with pytest.raises(ValueError, match=r"is_causal needs queries with a length dimension"):
        scaled_dot_product_attention(q, k, v, is_causal=True)


def test_a_mapping_class_or_a_scale_that_is_no_number_is_named():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(TypeError, match=r"not the class Sparsemax: pass Sparsemax\(\)"):
        scaled_dot_product_attention(q, q, q, mapping=sg.nn.Sparsemax)
    for scale in ("0.5", [0.5]):  # (a comparison's "'<' not supported")
        with pytest.raises(TypeError, match="scale must be a number; got"):
            scaled_dot_product_attention(q, q, q, scale=scale)


def test_a_mapping_attention_cannot_call_is_named():
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(TypeError, match=r"mapping must be a callable.*mapping_module"):
        scaled_dot_product_attention(q, q, q, mapping="sparsemax")
    # a mapping along another dim than the keys' normalised the wrong way: rows summed to
    # 1.25 or 1.86
    along_queries = (sg.nn.Sparsemax(dim=1), functools.partial(sg.sparsemax, dim=-2))
    for implementation, mapping in itertools.product(("auto", "unfused"), along_queries):
        with pytest.raises(ValueError, match="normalises along dim="):
            scaled_dot_product_attention(q, q, q, mapping=mapping, implementation=implementation)
    x = torch.randn(2, L, E)
    with pytest.raises(ValueError, match="normalises along dim=1"):
        MultiheadAttention(E, H, mapping=sg.nn.Sparsemax(dim=1), batch_first=True)(x, x, x)
    keys_by_index = scaled_dot_product_attention(q, q, q, mapping=sg.nn.Sparsemax(dim=3))
    torch.testing.assert_close(keys_by_index, scaled_dot_product_attention(q, q, q))
    with pytest.raises(ValueError, match=r"same dtype; got torch\.float32, torch\.float64"):
        scaled_dot_product_attention(q, q.double(), q)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # which casts them, as for torch's
        mixed = scaled_dot_product_attention(q, q.bfloat16(), q, mapping=sg.softmax)
        expected = torch.nn.functional.scaled_dot_product_attention(q, q.bfloat16(), q)
    torch.testing.assert_close(mixed, expected, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("mapping", ["softmax", "sparsemax"])
def test_weights_under_cpu_autocast_with_a_float_mask_have_torchs_dtype(mapping):
    # the float32 mask added to bfloat16 scores made float32 weights; torch's baddbmm casts it
    torch.manual_seed(0)
    x = torch.randn(2, L, E)
    reference = torch.nn.MultiheadAttention(E, H, batch_first=True)
    ours = MultiheadAttention(E, H, batch_first=True, mapping=mapping)
    ours.load_state_dict(reference.state_dict(), strict=False)
    mask = torch.zeros(L, L).masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), -math.inf)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(x, x, x, attn_mask=mask)
        got = ours(x, x, x, attn_mask=mask)
    assert [t.dtype for t in got] == [t.dtype for t in expected] == [torch.bfloat16] * 2
    if mapping == "softmax":
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


def test_attention_gives_shapes_on_meta_tensors_and_takes_a_query_without_length():
    # the input checks asked autocast about the meta device, which it does not know, and
    # read the scores' rank off a query's L that a 1-D query does not have
    meta = torch.empty(2, 3, 4, 8, device="meta")
    for implementation in ("auto", "unfused"):
        out = scaled_dot_product_attention(meta, meta, meta, implementation=implementation)
        assert out.shape == (2, 3, 4, 8) and out.is_meta
    q, k, v = torch.randn(8), torch.randn(5, 8), torch.randn(5, 6)
    expected = scaled_dot_product_attention(q[None], k, v)[0]
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), expected)


def test_forward_mode_derivatives_of_softmax_attention():
    # torch's fused SDPA, which softmax attention runs in, has no forward-mode derivative
    # ("Trying to use forward AD with _scaled_dot_product_flash_attention_for_cpu"); under
    # jvp, jacfwd and dual tensors it is computed unfused instead
    import torch.autograd.forward_ad as fwAD

    q, k, v = (torch.randn(1, 2, 3, 4, dtype=torch.float64) for _ in range(3))

    def fast(q):
        return scaled_dot_product_attention(q, k, v, mapping=sg.softmax)

    def unfused(q):
        return scaled_dot_product_attention(q, k, v, mapping=sg.softmax, implementation="unfused")

    torch.testing.assert_close(torch.func.jacfwd(fast)(q), torch.func.jacrev(unfused)(q))
    torch.testing.assert_close(torch.func.hessian(fast)(q), torch.func.hessian(unfused)(q))
    tangent = torch.randn_like(q)
    with fwAD.dual_level():
        dual = fwAD.unpack_dual(fast(fwAD.make_dual(q, tangent))).tangent
    torch.testing.assert_close(dual, torch.func.jvp(unfused, (q,), (tangent,))[1])


def test_a_mapping_module_changed_by_a_subclass_or_a_hook_is_called_not_fused():
    # its class's function went to torch's SDPA (softmax) or the fused kernel, and the
    # subclass's forward (or the hook) was silently skipped without need_weights
    class TemperedSoftmax(sg.nn.Softmax):
        def forward(self, x, mask=None):
            return super().forward(x / 3.0, mask)

    hooked = sg.nn.Softmax()
    hooked.register_forward_hook(lambda module, args, out: (out + 1.0) / 2.0)
    x = torch.randn(2, 5, E)
    for mapping in (TemperedSoftmax(), hooked):
        torch.manual_seed(0)
        module = MultiheadAttention(E, H, batch_first=True, mapping=mapping).eval()
        without, _ = module(x, x, x, need_weights=False)
        with_weights, _ = module(x, x, x)  # (the weights: the module called)
        torch.testing.assert_close(without, with_weights)
    torch.manual_seed(0)
    plain, _ = MultiheadAttention(E, H, batch_first=True, mapping="softmax").eval()(x, x, x)
    assert not torch.allclose(without, plain)
    watched, calls = sg.nn.Softmax(), []  # a backward hook, which a kernel would not call
    watched.register_full_backward_hook(lambda module, grad_in, grad_out: calls.append(1))
    module = MultiheadAttention(E, H, batch_first=True, mapping=watched)
    module(x.requires_grad_(), x, x, need_weights=False)[0].sum().backward()
    assert calls
    q = torch.randn(1, 2, 3, 8)
    if HAVE_TRITON:  # forced: refused, naming why
        with pytest.raises(ValueError, match="that no subclass or hook changes"):
            scaled_dot_product_attention(q, q, q, mapping=TemperedSoftmax(), implementation="fused")


def test_mapping_module_names_its_own_parameter_in_its_errors():
    with pytest.raises(ValueError, match=r"parameter_shape .*per_head=True in the attention"):
        sg.nn.mapping_module("softmax", parameter_shape=(2, 1, 1))
    with pytest.raises(ValueError, match=r"parameter_shape .*give SparsegenLin"):
        sg.nn.mapping_module(sg.nn.SparsegenLin(0.5), parameter_shape=(2, 1, 1))


def test_the_modules_name_a_bad_argument():
    # each had come from deep inside torch, or only at the first forward
    attention = MultiheadAttention(E, H, batch_first=True)
    x = torch.randn(2, L, E)
    with pytest.raises(TypeError, match="query must be a tensor; got list"):
        attention(x.tolist(), x, x)
    with pytest.raises(TypeError, match="kdim must be an int; got float"):
        MultiheadAttention(E, H, kdim=4.0)
    with pytest.raises(ValueError, match="vdim must be > 0; got -1"):
        MultiheadAttention(E, H, vdim=-1)
    with pytest.raises(ValueError, match=r"lam of shape \(4,\) .* pass per_head=True"):
        MultiheadAttention(E, 4, mapping="sparsegen_lin", lam=[0.1, 0.2, 0.3, 0.4])
    per_head = torch.tensor([0.1, 0.2, 0.3, 0.4]).reshape(4, 1, 1)  # (H, 1, 1): one a head
    MultiheadAttention(8, 4, mapping="sparsegen_lin", lam=per_head)(
        x[..., :8], x[..., :8], x[..., :8]
    )
    additive = AdditiveAttention(8, 6)
    with pytest.raises(ValueError, match=r"keys must be \(\*batch, S, 8\) and query"):
        additive(torch.randn(2, 7, 9), torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"query \(\*batch, 6\)"):
        additive(torch.randn(2, 7, 8), torch.randn(2, 5))
    with pytest.raises(ValueError, match="attn_dim must be > 0"):
        AdditiveAttention(8, attn_dim=0)
    with pytest.raises(TypeError, match=r"takes a torch\.nn\.Module; got str"):
        sg.nn.sparsify_attention("model")
