"""torch.compile: every mapping, loss and module compiles with fullgraph=True (no graph
break), gives eager's outputs and gradients, keeps the bad-input promises, and works as the
first call of a fresh process (numba compiling cold underneath)."""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from cases import LOSSES, MAPPINGS, Attention, attention_input, scores
from reference import sparsemax_bisect

import sparsegen as sg
from sparsegen import _ops, _projection

# aot_eager runs dynamo and AOTAutograd (graph capture, fake kernels, the traced
# backward) without inductor's code generation, which costs seconds per graph;
# a few cases below go through inductor too.
BACKEND = "aot_eager"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _eager_and_compiled(f, x, backend=BACKEND):
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    x_eager = x.clone().requires_grad_()
    x_compiled = x.clone().requires_grad_()
    return f(x_eager), compiled(x_compiled), x_eager, x_compiled


def _assert_same_grads(out_eager, out_compiled, x_eager, x_compiled):
    v = torch.randn(out_eager.shape, generator=torch.Generator().manual_seed(1))
    (out_eager * v).sum().backward()
    (out_compiled * v).sum().backward()
    torch.testing.assert_close(x_compiled.grad, x_eager.grad, equal_nan=True)


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_every_mapping_compiles_in_one_graph(name):
    f, positive, differentiable = MAPPINGS[name]
    x = scores((5, 7), positive=positive, dtype=torch.float64)
    eager, compiled, x_eager, x_compiled = _eager_and_compiled(f, x)
    torch.testing.assert_close(compiled, eager, equal_nan=True)
    if differentiable:
        _assert_same_grads(eager, compiled, x_eager, x_compiled)


@pytest.mark.parametrize("algorithm", ["compiled", "sort"])
def test_a_map_along_its_classes_keeps_its_layout_compiled(algorithm):
    # the operator's fake output has the real one's strides (the input's, as torch.empty_like
    # gives them), so inductor's code after it indexes the output rightly, and .view()
    # works on it as on torch.softmax's
    def f(x):
        return sg.sparsemax(x, dim=1, algorithm=algorithm).view(x.shape[0], -1) * 2

    x = scores((2, 5, 3, 4), dtype=torch.float64)
    eager, compiled, x_eager, x_compiled = _eager_and_compiled(f, x, backend="inductor")
    torch.testing.assert_close(compiled, eager)
    _assert_same_grads(eager, compiled, x_eager, x_compiled)


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_compiles_in_one_graph(name):
    x = scores((4, 6), dtype=torch.float64)
    eager, compiled, x_eager, x_compiled = _eager_and_compiled(LOSSES[name], x)
    torch.testing.assert_close(compiled, eager)
    _assert_same_grads(eager, compiled, x_eager, x_compiled)


@pytest.mark.parametrize("name", list(sg.nn.MAPPINGS))
def test_every_module_compiles_in_one_graph(name):
    kwargs = {"sparsegen_lin": {"lam": 0.4, "learnable": True}, "sparsehourglass": {"q": 0.5}}
    module = sg.nn.mapping_module(name, **kwargs.get(name, {}))
    positive = name in ("sparsecone", "sum_normalization")
    x = scores((3, 5), positive=positive)
    compiled = torch.compile(module, fullgraph=True, backend=BACKEND)
    torch.testing.assert_close(compiled(x), module(x))


@pytest.mark.parametrize("mapping", ["softmax", "sparsemax", "sparsegen_lin", "sparsehourglass"])
def test_multihead_attention_compiles_in_one_graph(mapping):
    parameters = {"sparsegen_lin": {"lam": 0.5, "learnable": True}, "sparsehourglass": {"q": 1.0}}
    model = Attention(mapping, **parameters.get(mapping, {}))
    compiled = torch.compile(model, fullgraph=True, backend=BACKEND)
    x = attention_input()
    (out, weights), (out_c, weights_c) = model(x), compiled(x)
    torch.testing.assert_close(out_c, out)
    torch.testing.assert_close(weights_c, weights)
    out_c.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out.sum().backward()
    for compiled_grad, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(compiled_grad, p.grad)


def test_additive_attention_and_sdpa_compile():
    attention = sg.nn.AdditiveAttention(6, mapping="sparsemax")
    keys, query = torch.randn(2, 5, 6), torch.randn(2, 6)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    compiled = torch.compile(attention, fullgraph=True, backend=BACKEND)
    for got, expected in zip(
        compiled(keys, query, mask), attention(keys, query, mask), strict=True
    ):
        torch.testing.assert_close(got, expected)
    sdpa = torch.compile(sg.attention.scaled_dot_product_attention, fullgraph=True, backend=BACKEND)
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    torch.testing.assert_close(
        sdpa(q, k, v, is_causal=True),
        sg.attention.scaled_dot_product_attention(q, k, v, is_causal=True),
    )
    # a scale that changes between calls becomes a symbolic float (as with dynamic=True):
    # its check compiles too
    torch._dynamo.reset()
    sdpa = torch.compile(sg.attention.scaled_dot_product_attention, fullgraph=True, backend=BACKEND)
    for scale in (0.3, 0.5):
        torch.testing.assert_close(
            sdpa(q, k, v, scale=scale),
            sg.attention.scaled_dot_product_attention(q, k, v, scale=scale),
        )


@pytest.mark.parametrize(
    "name", ["sparsemax", "sparsehourglass_masked", "sparsegen_lin_per_row", "sparsegen_exp"]
)
def test_inductor_compiles_the_operator(name):
    # inductor's generated code calls the operator's CPU kernel (and its decomposition
    # where it chooses to): outputs and gradients are eager's, float32 and float64.
    f, positive, _ = MAPPINGS[name]
    for dtype in (torch.float32, torch.float64):
        x = scores((6, 9), positive=positive, dtype=dtype)
        eager, compiled, x_eager, x_compiled = _eager_and_compiled(f, x, backend="inductor")
        torch.testing.assert_close(compiled, eager)
        _assert_same_grads(eager, compiled, x_eager, x_compiled)


def _graph_calls(f, *inputs):
    """The operators and functions the dynamo graph of ``f`` calls."""
    targets = []

    def backend(gm, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch.compile(f, fullgraph=True, backend=backend)(*inputs)
    return targets


@pytest.mark.parametrize("exporting_folded", [False, True])
def test_compiled_graphs_call_the_operator_not_export_s_torch_code(monkeypatch, exporting_folded):
    # Dynamo before torch 2.13 folds torch.compiler.is_exporting() to True under
    # torch.compile too: that fold (simulated) must not send compiled graphs down export's
    # route, the sort formulation in ATen ops, 20-200x softmax on a GPU.
    if exporting_folded:
        monkeypatch.setattr(_ops, "is_exporting", lambda: True)
    targets = _graph_calls(sg.sparsehourglass, scores((4, 9)))
    assert "sparsegen.project.default" in targets
    assert not any("sort" in target for target in targets)


@pytest.mark.parametrize("name", ["sparsemax", "sparsehourglass", "sparsegen_exp"])
def test_compile_of_a_torch_func_transform_or_of_forward_mode(name):
    # torch does not run a custom operator's registered autograd inside a functorch
    # transform being traced (pytorch/pytorch#168393: compiled grad raised), and forward
    # mode got zero tangents from the operator, silently (compiled jvp, jacfwd, dual
    # tensors): both take the torch formulation instead
    import torch.autograd.forward_ad as forward_ad

    f = MAPPINGS[name][0]
    x, weights = scores((4, 9)), torch.arange(9.0)
    tangent = torch.randn(4, 9, dtype=x.dtype)

    def dual(z, v):
        with forward_ad.dual_level():
            return forward_ad.unpack_dual(f(forward_ad.make_dual(z, v))).tangent

    transforms = [
        (torch.func.grad(lambda z: (f(z) * weights).sum()), (x,)),
        (lambda z, v: torch.func.jvp(f, (z,), (v,))[1], (x, tangent)),
        (torch.func.jacfwd(f), (x[0],)),
        (torch.func.vmap(f), (x,)),
        (dual, (x, tangent)),
    ]
    for transform, args in transforms:
        compiled = torch.compile(transform, fullgraph=True, backend=BACKEND)
        expected = transform(*args)
        assert expected.abs().sum() > 0  # (zeros were the silent failure)
        torch.testing.assert_close(compiled(*args), expected)


@pytest.mark.parametrize(
    "f, invalid",
    [(lambda z, p: sg.sparsegen_lin(z, lam=p), 5.0),  # lam < 1
     (lambda z, p: sg.sparsehourglass(z, q=p + 1), -5.0)],  # q >= 0
    ids=["sparsegen_lin", "sparsehourglass"],
)  # fmt: skip
def test_compiled_vmap_takes_a_parameter_per_sample(f, invalid):
    # the parameter's range check, an assertion in a compiled graph, has no batching rule
    # ("Batching rule not implemented for aten::_assert_async"): under a compiled transform
    # an invalid parameter makes its slice NaN, as in an ONNX graph
    x, p = scores((4, 9)), torch.linspace(-0.5, 0.5, 4, dtype=torch.float64)
    compiled = torch.compile(torch.func.vmap(f), fullgraph=True, backend=BACKEND)
    expected = torch.func.vmap(f)(x, p)
    torch.testing.assert_close(compiled(x, p), expected)
    p[1] = invalid
    out = compiled(x, p)
    assert out[1].isnan().all()
    torch.testing.assert_close(out[[0, 2, 3]], expected[[0, 2, 3]])


@pytest.mark.parametrize("mapping", [sg.softmax, sg.sparsemax])
def test_compile_of_forward_mode_through_attention(mapping):
    # (a compiled jvp of sparsemax attention differed from eager: the fused path's check
    # for a functorch transform broke dynamo's graph; softmax's is computed unfused)
    from sparsegen.attention import scaled_dot_product_attention

    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 3)
    tangent = torch.randn_like(q)

    def forward_mode(q, t):
        attention = lambda q: scaled_dot_product_attention(q, k, v, mapping=mapping)  # noqa: E731
        return torch.func.jvp(attention, (q,), (t,))[1]

    compiled = torch.compile(forward_mode, fullgraph=True, backend=BACKEND)
    torch.testing.assert_close(compiled(q, tangent), forward_mode(q, tangent))


def test_dynamic_shapes():
    # Shapes stay symbolic; a python float argument is specialised on (a recompilation per value).
    compiled = torch.compile(sg.sparsehourglass, fullgraph=True, backend=BACKEND, dynamic=True)
    for shape, q in [((3, 5), 0.5), ((7, 5), 0.5), ((2, 11), 2.0), ((4, 1), 0.5)]:
        x = scores(shape)
        torch.testing.assert_close(compiled(x, q=q), sg.sparsehourglass(x, q=q))


def test_bad_input_keeps_its_promises_under_compile():
    x = torch.tensor(
        [
            [1.0, math.nan, 0.0],  # a NaN: a NaN row
            [1.0, -math.inf, 0.0],  # -inf gets 0
            [-math.inf, -math.inf, -math.inf],  # only -inf: zeros
            [math.inf, 1.0, math.inf],  # +inf entries share the mass
        ]
    )
    for name in ("sparsemax", "sparsegen_lin", "sparsehourglass", "sparsemax_michelot", "softmax"):
        f = MAPPINGS[name][0]
        compiled = torch.compile(f, fullgraph=True, backend=BACKEND)
        torch.testing.assert_close(compiled(x), f(x), equal_nan=True)
    masked = torch.compile(lambda z: sg.sparsemax(z, mask=torch.zeros_like(z, dtype=torch.bool)))
    assert torch.equal(masked(torch.randn(2, 3)), torch.zeros(2, 3))


def test_invalid_parameters_fail_under_compile():
    # A python number is checked at trace time, a tensor at run time: never a silent NaN.
    # (With fullgraph=True dynamo reports the ValueError inside its own exception.)
    def too_sparse(z):
        return sg.sparsegen_lin(z, lam=1.5)

    with pytest.raises(Exception, match="lam must be < 1"):
        torch.compile(too_sparse, fullgraph=True, backend=BACKEND)(torch.randn(2, 3))
    with pytest.raises(ValueError, match="lam must be < 1"):
        torch.compile(too_sparse, backend=BACKEND)(torch.randn(2, 3))
    per_row = torch.compile(
        lambda z, lam: sg.sparsegen_lin(z, lam=lam), fullgraph=True, backend=BACKEND
    )
    x = torch.randn(2, 3)
    torch.testing.assert_close(
        per_row(x, torch.tensor([[0.2], [0.5]])),
        sg.sparsegen_lin(x, lam=torch.tensor([[0.2], [0.5]])),
    )
    with pytest.raises(RuntimeError, match="lam must be < 1"):
        per_row(x, torch.tensor([[0.2], [1.5]]))
    negative = torch.compile(sg.sum_normalization, fullgraph=True, backend=BACKEND)
    with pytest.raises(RuntimeError, match="scores must be >= 0"):
        negative(-torch.rand(2, 3))


def _threshold_case(k):
    # -(i/K)^0.1 needs many Newton steps: more than MICHELOT_PASSES at K = 200.
    x = -((torch.arange(k, dtype=torch.float64) / k) ** 0.1)
    rows = torch.stack([x, x.flip(0), torch.randn(k, dtype=torch.float64), torch.zeros(k)])
    return torch.cat([rows, rows * 40])


@pytest.mark.parametrize("algorithm", ["sort", "michelot"])
@pytest.mark.parametrize("k", [1, 5, _projection.MICHELOT_PASSES, 200])
def test_device_path_traces_in_one_graph_and_is_exact(algorithm, k):
    # The torch code every non-CPU device runs: fullgraph compilation fails on any
    # data-dependent branch (a host synchronisation on a GPU), so passing it proves
    # the passes are a fixed number; the reference checks they are exact.
    x = _threshold_case(k)
    scale = torch.rand(x.shape[0], 1, dtype=torch.float64) + 0.5
    traced = torch.compile(_projection.project_torch, fullgraph=True, backend=BACKEND)
    output, tau, support, _ = traced(x, scale, None, algorithm)
    expected = sparsemax_bisect((x * scale).numpy())
    torch.testing.assert_close(output, torch.from_numpy(expected), atol=1e-10, rtol=0)
    assert torch.equal(support, (output > 0).sum(-1))
    torch.testing.assert_close(
        (x * scale - tau[:, None]).clamp(min=0).sum(-1), torch.ones(x.shape[0], dtype=x.dtype)
    )


def test_device_path_special_rows_in_one_graph():
    x = torch.tensor([[1.0, math.nan, 0.0], [-math.inf] * 3, [math.inf, 0.0, math.inf]])
    traced = torch.compile(_projection.project_torch, fullgraph=True, backend=BACKEND)
    for algorithm in ("sort", "michelot"):
        output, _, support, _ = traced(x, None, None, algorithm)
        assert torch.isnan(output[0]).all() and support[0] == 0
        assert torch.equal(output[1], torch.zeros(3)) and support[1] == 0
        assert torch.equal(output[2], torch.tensor([0.5, 0.0, 0.5])) and support[2] == 2


FIRST_CALL = """
import torch, sparsegen as sg
x = torch.randn(4, 6, requires_grad=True)
model = torch.nn.Sequential(torch.nn.Linear(6, 6), sg.nn.Sparsemax())
out = torch.compile(model, fullgraph=True, backend="{backend}")(x)
out.sum().backward()
assert torch.allclose(out, model(x)) and x.grad is not None
attention = torch.compile(sg.nn.MultiheadAttention(8, 2), fullgraph=True, backend="{backend}")
attention(torch.randn(3, 2, 8), torch.randn(3, 2, 8), torch.randn(3, 2, 8))
print("ok")
"""


def test_compile_as_the_first_call_of_a_fresh_process(tmp_path):
    # numba compiles its kernels cold (an empty cache), underneath compiled code. Inductor
    # traces through AOT autograd as aot_eager does, then generates its own code around the
    # operator, whose kernels run the same under either.
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FIRST_CALL.format(backend="inductor"))],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize(
    ("name", "backend"),
    [("sparsegen_exp", "eager"), ("sparsegen_sq", "eager"), ("sparsecone", "eager"),
     ("sparsehourglass", "eager"), ("sparsegen_lin", "inductor")],
)  # fmt: skip
def test_a_new_number_parameter_does_not_recompile(name, backend):
    # a λ or q given as a number was a constant of the graph, guarded to its value: each
    # new value recompiled, and past torch's recompile limit (8) the caller ran uncompiled
    from torch._dynamo.utils import counters

    mapping = getattr(sg, name)
    keyword = "q" if name in ("sparsecone", "sparsehourglass") else "lam"
    values = [0.5, 2.0, 3.0, 5.0] if keyword == "q" else [0.1, -2.0, 0.5, 0.9]
    x = scores((4, 7), seed=3)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(lambda x, v: mapping(x, **{keyword: v}), backend=backend)
    for value in values:
        torch.testing.assert_close(compiled(x, value), mapping(x, **{keyword: value}))
    assert counters["stats"]["unique_graphs"] <= 2  # the first value, then a general one


def test_fullgraph_takes_numpy_arrays():
    # (the read-only check of an array, `ndarray.flags`, is no attribute dynamo traces)
    import numpy as np

    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    read_only = x.copy()
    read_only.flags.writeable = False
    mask = np.arange(5) != 2
    f = torch.compile(lambda a: sg.sparsegen_lin(a, lam=0.3, mask=mask), fullgraph=True,
                      backend=BACKEND)  # fmt: skip
    for array in (x, read_only, x.astype(np.float64)):
        out = f(array)
        assert isinstance(out, np.ndarray)
        np.testing.assert_allclose(out, sg.sparsegen_lin(array, lam=0.3, mask=mask), rtol=1e-6)
