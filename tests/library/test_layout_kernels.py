"""The tiled transpose that moves a mapping's dimension last and back (CPU), against
NumPy's and torch's own copies, and a mapping along every dimension through it."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import sparsemax_bisect

import sparsegen as sg
from sparsegen import _layout_kernels, _projection

TILE = _layout_kernels.TILE


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 4),
    rows=st.integers(1, 3 * TILE + 1),
    cols=st.integers(1, 3 * TILE + 1),
    threads=st.sampled_from([1, 2, 3]),
    dtype=st.sampled_from([np.float32, np.float64, np.bool_]),
)
def test_transpose_is_numpys(batch, rows, cols, threads, dtype):
    # Whole tiles, partial ones at both edges, one and several threads (the parallel
    # launch splits the tiles in blocks: a block boundary mid-matrix must lose no tile).
    values = np.random.default_rng(rows * cols).standard_normal((batch, rows, cols))
    src = values > 0 if dtype is np.bool_ else values.astype(dtype)
    dst = np.full((batch, cols, rows), 7, dtype=dtype)
    _layout_kernels.transpose(src, dst, threads)
    np.testing.assert_array_equal(dst, src.transpose(0, 2, 1))


def test_transpose_parallel_launch_is_numpys():
    # Large enough for the parallel kernel (the hypothesis cases are below its threshold).
    src = np.random.default_rng(0).standard_normal((3, 200, 333)).astype(np.float32)
    dst = np.empty((3, 333, 200), dtype=np.float32)
    _layout_kernels.transpose(src, dst, 2)
    np.testing.assert_array_equal(dst, src.transpose(0, 2, 1))


def test_transpose_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        _layout_kernels.transpose(np.zeros((1, 4, 5)), np.zeros((1, 4, 5)), 1)


SHAPES = [(64, 80), (80, 64), (5, 70, 3, 20), (3, 1, 50, 40), (4097, 1), (1, 4097)]


def _moved_views(shape, dtype):
    x = torch.randn(shape).to(dtype) if dtype != torch.bool else torch.randn(shape) > 0
    return [(x, d, x.movedim(d, -1)) for d in range(len(shape) - 1)]


@pytest.fixture
def tiled_calls(monkeypatch):
    """How many times the tiled transpose ran (each test shows that it did, not only
    that the result is right: torch's copy would give the same)."""
    calls = []
    original = _layout_kernels.transpose
    monkeypatch.setattr(_layout_kernels, "transpose", lambda *a: calls.append(a) or original(*a))
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
@pytest.mark.parametrize("shape", SHAPES)
def test_contiguous_and_back_equal_torchs(shape, dtype, tiled_calls):
    views = _moved_views(shape, dtype)
    for x, d, moved in views:
        rows = _projection.contiguous(moved)
        assert rows.is_contiguous() and torch.equal(rows, moved.contiguous())
        back = _projection.in_layout(rows, moved)
        assert torch.equal(back, moved) and back.stride() == moved.stride(), (shape, d)
        # back in the caller's layout: the original tensor's memory order
        assert torch.equal(back.movedim(-1, d), x) and back.movedim(-1, d).is_contiguous()
    # each view that is not already contiguous went through the tiles, there and back
    assert len(tiled_calls) == 2 * sum(not moved.is_contiguous() for *_, moved in views)


def test_small_half_or_grad_tensors_take_torchs_copy(tiled_calls):
    small = torch.randn(8, 9).t()
    assert torch.equal(_projection.contiguous(small), small.contiguous())
    leaf = torch.randn(200, 300, requires_grad=True)
    moved = leaf.t() * 1
    copied = _projection.contiguous(moved)
    assert copied.requires_grad and copied.grad_fn is not None  # torch's copy, differentiable
    half = torch.randn(200, 300, dtype=torch.float16).t()
    assert torch.equal(_projection.contiguous(half), half.contiguous())
    assert tiled_calls == []


@pytest.mark.parametrize("name", ["sum_normalization", "spherical_softmax", "sparsegen_exp"])
def test_traced_and_forward_mode_calls_never_copy_behind_torch(name, tiled_calls):
    # the tiles write through NumPy, which a tracer or forward-mode AD cannot see outside
    # an operator: a traced graph kept an uninitialised buffer, a dual tensor lost its
    # tangent
    from torch.autograd import forward_ad
    from torch.fx.experimental.proxy_tensor import make_fx

    f = getattr(sg, name)
    mask = torch.rand(64, 128, generator=torch.Generator().manual_seed(1)) > 0.3
    x, other = (torch.rand(128, 64, dtype=torch.float64).t() + 0.1 for _ in range(2))
    tangent, eps = torch.rand_like(x), 1e-6
    eager = f(other, mask=mask)
    derivative = (f(x + eps * tangent, mask=mask) - f(x - eps * tangent, mask=mask)) / (2 * eps)
    tiled_calls.clear()
    traced = torch.jit.trace(lambda z: f(z, mask=mask), (x,), check_trace=False)
    torch.testing.assert_close(traced(other), eager)
    graph = make_fx(lambda z: f(z, mask=mask), tracing_mode="real")(x)
    torch.testing.assert_close(graph(other), eager)
    with forward_ad.dual_level():
        got = forward_ad.unpack_dual(f(forward_ad.make_dual(x, tangent), mask=mask)).tangent
    torch.testing.assert_close(got, derivative, atol=1e-6, rtol=1e-5)
    # (an operator's own kernel may still take them: a tracer records it whole)
    tiled_calls.clear()
    f(x, mask=mask)  # the same call in plain eager does take the tiles
    assert tiled_calls


@pytest.mark.parametrize("mapping", ["sparsemax", "sparsegen_lin", "sparsehourglass"])
def test_mapping_along_every_dim_through_the_tiles(mapping, tiled_calls):
    # Forward, mask and backward along each dim of a tensor large enough to be tiled,
    # against the same mapping along the last dim of a contiguous copy.
    torch.manual_seed(0)
    x = torch.randn(30, 40, 50, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(30, 40, 50) > 0.2
    f = getattr(sg, mapping)
    for d in range(3):
        out = f(x, dim=d, mask=mask)
        grad = torch.randn_like(out)
        (dx,) = torch.autograd.grad(out, x, grad)
        last = x.detach().movedim(d, -1).contiguous().requires_grad_()
        expected = f(last, dim=-1, mask=mask.movedim(d, -1).contiguous())
        (dlast,) = torch.autograd.grad(expected, last, grad.movedim(d, -1).contiguous())
        assert out.stride() == x.stride()
        torch.testing.assert_close(out.movedim(d, -1), expected, rtol=0, atol=0)
        # (the cone's scale gradient sums along d in torch, in another order: 1 ulp)
        torch.testing.assert_close(dx.movedim(d, -1), dlast, rtol=1e-12, atol=1e-15)
    assert tiled_calls


def test_sparsemax_along_dim_zero_is_the_reference():
    x = torch.randn(300, 70, dtype=torch.float64)
    expected = sparsemax_bisect(x.t().contiguous(), 0.0).T
    np.testing.assert_allclose(sg.sparsemax(x, dim=0).numpy(), expected, atol=1e-12)
