"""torch.export, ONNX and TorchScript: exported graphs compute the eager function on new
inputs (never a constant), decompose into plain ATen ops, run in ONNX Runtime; what cannot
be supported (legacy ONNX export, torch.jit.script) fails at once with a clear message."""

import io
import math
import warnings

import numpy as np
import pytest
import torch
from cases import MAPPINGS, Attention, attention_input, scores
from torch.export import Dim

import sparsegen as sg
from sparsegen.jacobian import sparsegen_jacobian


class Wrapped(torch.nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x, *more):
        return self.f(x, *more)


def new_inputs(positive):
    """Inputs other than the traced one: random, special values, another batch size."""
    x = scores((5, 7), positive=positive, seed=3) * 3
    special = x.clone()
    special[1, 2] = math.nan
    if not positive:  # sum_normalization refuses negative scores
        special[2, :] = -math.inf
        special[3, 4] = -math.inf
    return [x, special]


def _sparsegen_ops(graph):
    return {str(n.target) for n in graph.nodes if "sparsegen" in str(n.target)}


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_export_computes_the_function_on_new_inputs(name):
    # The exported graph holds plain ATen ops only (it runs without sparsegen), also
    # after the core-ATen decompositions.
    f, positive, _ = MAPPINGS[name]
    module = Wrapped(f)
    exported = torch.export.export(module, (scores((5, 7), positive=positive),))
    decomposed = exported.run_decompositions()
    assert not _sparsegen_ops(exported.graph) and not _sparsegen_ops(decomposed.graph)
    for x in new_inputs(positive):
        expected = f(x)
        torch.testing.assert_close(exported.module()(x), expected, equal_nan=True)
        torch.testing.assert_close(decomposed.module()(x), expected, equal_nan=True)


def test_exported_program_round_trips(tmp_path):
    exported = torch.export.export(Wrapped(sg.sparsemax), (scores(),))
    torch.export.save(exported, tmp_path / "sparsemax.pt2")
    loaded = torch.export.load(tmp_path / "sparsemax.pt2")
    x = scores(seed=5)
    torch.testing.assert_close(loaded.module()(x), sg.sparsemax(x))


@pytest.mark.parametrize("g", [torch.exp, torch.tanh, torch.square])
def test_the_sparsegen_jacobian_exports_with_any_elementwise_g(g):
    # g' came from autograd.grad, which export cannot trace through exp or tanh
    module = Wrapped(lambda x: sparsegen_jacobian(x, g, lam=0.2))
    exported = torch.export.export(module, (scores((3, 5)),))
    x = scores((3, 5), seed=9)
    torch.testing.assert_close(exported.module()(x), module(x))
    assert module(x).abs().sum() > 0


def test_export_with_a_dynamic_batch_and_length():
    module = Wrapped(lambda x: sg.sparsegen_lin(x, lam=0.5))
    batch, length = Dim("batch"), Dim("length")
    exported = torch.export.export(
        module, (scores((4, 6)),), dynamic_shapes={"x": {0: batch, 1: length}}
    )
    for shape in [(9, 6), (2, 13), (1, 3)]:
        x = scores(shape, seed=7)
        torch.testing.assert_close(exported.module()(x), sg.sparsegen_lin(x, lam=0.5))


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_an_exported_program_takes_empty_slices_as_eager(name):
    # its range of sizes starts at 0; amax and the sort's gather of nothing had failed
    f, positive, _ = MAPPINGS[name]
    per_row = "per_row" in name  # (one parameter a row: the batch is static)
    dims = {1: Dim("length")} if per_row else {0: Dim("batch"), 1: Dim("length")}
    x = scores((4, 6), positive=positive)
    exported = torch.export.export(Wrapped(f), (x,), dynamic_shapes={"x": dims})
    for shape in [(4, 0), (4, 1), *([] if per_row else [(0, 5)])]:
        x = scores(shape, positive=positive, seed=1) if 0 not in shape else torch.empty(shape)
        torch.testing.assert_close(exported.module()(x), f(x), equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_scores_export_with_a_dynamic_class_count(dtype):
    # the algorithm chosen by K (Michelot below 16 entries) guarded a dynamic K:
    # "Constraints violated (k)! ... 2 <= k <= 15", though export traces the sort anyway
    module = Wrapped(sg.sparsemax)
    for k in (6, 20):
        exported = torch.export.export(
            module, (scores((3, k)).to(dtype),), dynamic_shapes={"x": {1: Dim("k")}}
        )
        for shape in [(3, 40), (3, 2)]:
            x = scores(shape, seed=3).to(dtype)
            torch.testing.assert_close(exported.module()(x), sg.sparsemax(x))


def test_exported_attention_takes_lengths_past_its_blocks(monkeypatch):
    # eager attention splits the queries into blocks of BLOCK_SCORES scores; the exported
    # program specialised on one block and refused longer inputs ("Guard failed: max(1,
    # 8388608 // (x.size()[1] * x.size()[0])) >= x.size()[1]")
    from sparsegen.nn import attention

    monkeypatch.setattr(attention, "BLOCK_SCORES", 64)
    model = sg.nn.MultiheadAttention(8, 2, mapping="sparsemax", batch_first=True).eval()

    class SelfAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = model

        def forward(self, x):
            return self.attention(x, x, x, need_weights=False)[0]

    dynamic = {"x": {0: Dim("batch"), 1: Dim("length")}}
    exported = torch.export.export(SelfAttention(), (torch.randn(2, 3, 8),), dynamic_shapes=dynamic)
    for shape in [(2, 3, 8), (3, 11, 8)]:  # 3·2·11·11 scores: blocks of one query, eagerly
        x = torch.randn(shape)
        torch.testing.assert_close(exported.module()(x), SelfAttention()(x))


@pytest.mark.parametrize("loss", ["sparsemax_loss", "softmax_loss"])
def test_a_loss_with_class_indices_exports_with_a_dynamic_class_count(loss):
    # the index check's traced message once formatted K, which fixed it to one value
    f = getattr(sg.losses, loss)
    module = Wrapped(lambda z, target: f(z, target))
    batch, classes = Dim("batch"), Dim("classes", min=3)
    target = torch.tensor([0, 2, 1, 2])
    exported = torch.export.export(
        module, (scores((4, 5)), target), dynamic_shapes={"x": {0: batch, 1: classes},
                                                          "more": ({0: batch},)},
    )  # fmt: skip
    z, target = scores((6, 9), seed=3), torch.tensor([8, 0, 4, 1, 7, 3])
    torch.testing.assert_close(exported.module()(z, target), f(z, target))
    with pytest.raises(RuntimeError, match=r"class indices must lie in \[0, K\)"):
        exported.module()(z, torch.tensor([9, 0, 4, 1, 7, 3]))


def test_exported_program_trains_like_eager():
    # The operator's registered autograd: gradients through ep.module() are eager's.
    model = Attention("sparsehourglass", q=0.5)
    x = attention_input()
    exported = torch.export.export(model, (x,)).module()
    for module in (model, exported):
        module.zero_grad()
        module(x)[0].pow(2).sum().backward()
    for a, b in zip(model.parameters(), exported.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize(
    "f",
    [
        sg.sum_normalization_pp,
        lambda z: sg.sparsehourglass(z, q=torch.zeros(2, 1)),
        lambda z: sg.sparsehourglass(z, q=1e-300),
    ],
    ids=["sum_normalization_pp", "sparsehourglass tensor q=0", "sparsehourglass q=1e-300"],
)
def test_an_exported_program_trains_through_an_infinite_scale_as_eager(f):
    # a slice summing to 0 has α̂ = inf and a zero gradient; exported from inputs that
    # took no gradient, the program differentiated the scale plainly: 0 · inf = NaN
    z = torch.tensor([[1.0, -1.0, 0.5, -0.5], [0.3, 0.1, -0.2, 0.4]])

    class Mapping(torch.nn.Module):
        def forward(self, t):
            return f(t)

    exported = torch.export.export(Mapping(), (z,)).module()
    grads = []
    for module in (Mapping(), exported):
        x = z.clone().requires_grad_()
        module(x)[:, 0].sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0])
    assert grads[0][0].eq(0).all()


@pytest.mark.parametrize(
    "f", [sg.sparsemax, sg.sum_normalization_pp, lambda z: sg.sparsegen_lin(z, lam=0.5)]
)
def test_an_exported_program_takes_eagers_derivative_at_ties_and_nan_slices(f):
    # where an entry sits exactly at τ (integer scores, zeros under sum-normalization++)
    # the sort's own ops took the other one-sided derivative ([2, -2, 0, 0] for eager's
    # zeros), and a NaN slice's amax gave 0/0 (NaN where eager gives 0); a compiled
    # torch.func.grad, which traces the same formulation, likewise
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0], [3.0, 1.0, 0.0, 0.0], [0.0, math.nan, 1.0, 0.0]])
    weights = torch.tensor([1.0, -2.0, 3.0, 0.5])

    class Mapping(torch.nn.Module):
        def forward(self, t):
            return f(t)

    exported = torch.export.export(Mapping(), (torch.randn(3, 4),)).module()
    grads = []
    for module in (Mapping(), exported):
        x = z.clone().requires_grad_()
        (module(x) * weights).nansum().backward()
        grads.append(x.grad)
    gradient = torch.func.grad(lambda t: (f(t) * weights).nansum())
    grads.append(torch.compile(gradient, fullgraph=True, backend="aot_eager")(z))
    assert grads[0][2].eq(0).all()
    torch.testing.assert_close(grads[1], grads[0])
    torch.testing.assert_close(grads[2], grads[0])


def test_multihead_attention_exports():
    model = Attention("sparsemax").eval()
    exported = torch.export.export(model, (attention_input(),))
    x = attention_input(seed=4)
    for got, expected in zip(exported.module()(x), model(x), strict=True):
        torch.testing.assert_close(got, expected)


class Family(torch.nn.Module):
    """Several mappings in one graph, along two dims, one masked."""

    def forward(self, x):
        keep = x > -1.5
        return (
            sg.sparsemax(x)
            + sg.sparsegen_lin(x, lam=0.5, dim=0)
            + sg.sparsehourglass(x, q=0.5)
            + sg.sparsehourglass(x, q=1.0, mask=keep)
            + sg.sparsegen_exp(x, lam=0.2)
            + sg.sum_normalization_pp(x)
        )


def _onnx_runs_like_eager(module, example, inputs, tmp_path, dynamic_shapes=None):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=dynamic_shapes)
    path = tmp_path / "model.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for x in inputs:
        got = session.run(None, {name: x.numpy()})[0]
        expected = module(x)
        expected = (expected[0] if isinstance(expected, tuple) else expected).detach().numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    x = scores((5, 7), seed=11)
    inputs = [x * 2, scores((9, 7), seed=12), torch.zeros(3, 7)]
    _onnx_runs_like_eager(
        Family(), x, inputs, tmp_path, dynamic_shapes={"x": {0: Dim("batch", min=2)}}
    )


class Maxima(torch.nn.Module):
    """The mappings that read a slice's maximum in torch ops."""

    def forward(self, x):
        return torch.stack([sg.softmax(x), sg.hardmax(x), sg.sparsegen_exp(x, lam=0.2)])


def test_onnx_keeps_nan_slices_nan(tmp_path):
    # onnxruntime's ReduceMax skips NaN: hardmax of [1, NaN, 2, 3] came out [0, 0, 0, 1]
    x = scores((3, 4), seed=5)
    special = torch.tensor([[1.0, math.nan, 2.0, 3.0], [math.nan] * 4, [1.0, -math.inf, 0.0, 2.0]])
    _onnx_runs_like_eager(
        Maxima(), x, [special, x], tmp_path, dynamic_shapes={"x": {0: Dim("batch", min=2)}}
    )


class FixedClasses(torch.nn.Module):
    """A loss per slice against fixed class indices (ONNX Runtime is fed the scores)."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss
        self.register_buffer("target", torch.tensor([0, 5, 2, 3]))

    def forward(self, x):
        return self.loss(x, self.target, reduction="none")


@pytest.mark.parametrize("loss", ["sparsemax_loss", "softmax_loss"])
def test_a_loss_with_class_indices_runs_in_onnxruntime(loss, tmp_path):
    # the class-index formulas (a gather, a threshold) and the -inf target's inf
    x = scores((4, 6), seed=13)
    special = scores((4, 6), seed=14)
    special[1, 5] = -math.inf  # the target's score: inf
    special[2, 0] = -math.inf  # another class's: finite
    _onnx_runs_like_eager(FixedClasses(getattr(sg.losses, loss)), x, [x, special], tmp_path)


def test_onnx_takes_float64_scores_beyond_float32s_range(tmp_path):
    # +inf beside 1e39: the +inf takes the mass (isposinf was exported through float32,
    # where 1e39 is infinite too)
    x = torch.tensor([[math.inf, 1e39, 1.0, 2.0], [1e300, -1e300, 0.0, 5.0]], dtype=torch.float64)
    module = Wrapped(sg.sparsemax)
    _onnx_runs_like_eager(module, x, [x], tmp_path)
    assert module(x)[0].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_onnx_export_of_multihead_attention(tmp_path):
    model = Attention("sparsegen_lin", lam=0.3).eval()
    _onnx_runs_like_eager(model, attention_input(), [attention_input(seed=9)], tmp_path)


def test_legacy_onnx_export_names_the_operator():
    with pytest.raises(Exception, match="sparsegen::project"):
        torch.onnx.export(sg.nn.Sparsemax(), (scores(),), io.BytesIO(), dynamo=False)


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_jit_trace_records_the_operator_not_a_constant(name):
    f, positive, _ = MAPPINGS[name]
    traced = torch.jit.trace(Wrapped(f), (scores((5, 7), positive=positive),), check_trace=False)
    for x in new_inputs(positive):
        torch.testing.assert_close(traced(x), f(x), equal_nan=True)


@pytest.mark.parametrize("module", [sg.nn.Sparsecone, sg.nn.Sparsehourglass])
def test_jit_trace_of_a_learnable_q_passes_its_check(module):
    # The check reruns the trace without grad: a path chosen by requires_grad would
    # record another graph ("Graphs differed across invocations").
    mapping = module(q=0.5, learnable=True)
    traced = torch.jit.trace(mapping, (scores((5, 7), positive=True),))
    for x in new_inputs(True):
        torch.testing.assert_close(traced(x), mapping(x), equal_nan=True)


def test_jit_trace_of_a_data_dependent_limit():
    # Sum-normalization++ of a zero-sum row (an infinite scale: the maxima share the
    # mass) is computed in the graph, not decided at trace time.
    traced = torch.jit.trace(Wrapped(sg.sum_normalization_pp), (scores(),), check_trace=False)
    x = torch.tensor([[1.0, -1.0, 0.5, -0.5], [2.0, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(traced(x), sg.sum_normalization_pp(x))


def test_jit_trace_of_a_hinge_loss_gives_nan_for_invalid_tensor_parameters():
    # a traced graph keeps no check: the invalid value's NaN must reach the loss (the
    # hinge's sorted search once placed a NaN threshold past every score, a loss of 0)
    z, y = scores((3, 5)), torch.eye(3, 5)
    for f, valid, invalid in (
        (sg.losses.sparsehourglass_hinge_loss, {"q": 0.5}, {"q": -1.0}),
        (sg.losses.sparsegen_lin_hinge_loss, {"lam": 0.5}, {"lam": 1.5}),
    ):
        (name,) = valid

        def loss(z, p, f=f, name=name):
            return f(z, y, reduction="none", **{name: p})

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (the tracer's own warnings)
            traced = torch.jit.trace(loss, (z, torch.full((3, 1), valid[name])), check_trace=False)
        torch.testing.assert_close(
            traced(z, torch.full((3, 1), valid[name])), f(z, y, reduction="none", **valid)
        )
        assert traced(z, torch.full((3, 1), invalid[name])).isnan().all(), f.__name__


def test_exported_graph_checks_tensor_parameters_at_run_time():
    class PerRow(torch.nn.Module):
        def forward(self, z, lam):
            return sg.sparsegen_lin(z, lam=lam)

    exported = torch.export.export(PerRow(), (scores(), torch.full((4, 1), 0.5))).module()
    x = scores(seed=2)
    torch.testing.assert_close(
        exported(x, torch.full((4, 1), -1.0)), sg.sparsegen_lin(x, lam=torch.full((4, 1), -1.0))
    )
    with pytest.raises(RuntimeError, match="lam must be < 1"):
        exported(x, torch.full((4, 1), 2.0))


def test_onnx_gives_nan_slices_for_invalid_tensor_parameters(tmp_path):
    # ONNX keeps no run-time assertion: a λ ≥ 1 or q < 0 gave an ordinary-looking row
    # (λ = 1.5 put the mass on the smallest score); those slices are NaN, as on a device
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")

    class PerRow(torch.nn.Module):
        def forward(self, z, lam, q):
            return torch.stack([sg.sparsegen_lin(z, lam=lam), sg.sparsehourglass(z, q=q)])

    z, valid = scores(), torch.full((4, 1), 0.5)
    program = torch.onnx.export(PerRow(), (z, valid, valid), dynamo=True)
    program.save(str(tmp_path / "model.onnx"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    bad = torch.tensor([[0.5], [1.5], [-1.0], [0.2]])
    got = session.run(None, dict(zip(names, (z.numpy(), bad.numpy(), bad.numpy()), strict=True)))[0]
    lin_nan, hourglass_nan = np.isnan(got[0]).all(-1), np.isnan(got[1]).all(-1)
    assert lin_nan.tolist() == [False, True, False, False]  # λ = 1.5
    assert hourglass_nan.tolist() == [False, False, True, False]  # q = −1
    expected = sg.sparsegen_lin(z[[0, 2, 3]], lam=bad[[0, 2, 3]]).numpy()
    np.testing.assert_allclose(got[0][[0, 2, 3]], expected, atol=1e-6)


@pytest.mark.parametrize(
    "module",
    [
        sg.nn.Sparsemax(),
        sg.nn.SparsegenLin(0.5),
        sg.nn.MultiheadAttention(8, 2),
        sg.nn.SparsemaxLoss(),
        torch.nn.Sequential(torch.nn.Linear(4, 4), sg.nn.Sparsehourglass()),
    ],
    ids=lambda m: type(m).__name__,
)
def test_jit_script_says_what_to_use(module):
    with pytest.raises(RuntimeError, match=r"torch\.compile"):
        torch.jit.script(module)
