"""Sparsemax, the projection every mapping is built on: values against independent references."""

import math

import entmax
import numpy as np
import pytest
import torch
from reference import hard_sigmoid, sparsemax_bisect, sparsemax_qp

import sparsegen as sg

SHAPES_AND_DIMS = [((7,), 0), ((5, 9), -1), ((5, 9), 0), ((3, 4, 6), 1), ((2, 3, 4, 5), 2)]


@pytest.mark.parametrize(("shape", "dim"), SHAPES_AND_DIMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_bisection_reference(algorithm, shape, dim, dtype):
    x = (torch.randn(shape, dtype=torch.float64) * 2).to(dtype)
    out = sg.sparsemax(x, dim=dim, algorithm=algorithm)
    expected = np.moveaxis(sparsemax_bisect(np.moveaxis(x.double().numpy(), dim, -1)), -1, dim)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    np.testing.assert_allclose(out.double().numpy(), expected, atol=tol)
    assert out.dtype == dtype and out.shape == x.shape


def test_matches_scipy_qp(rng):
    for k in (2, 3, 8, 20):
        z = rng.normal(size=k) * 1.5
        np.testing.assert_allclose(sg.sparsemax(z), sparsemax_qp(z), atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 17, 300, 5000])
def test_algorithms_agree_with_each_other(k):
    x = torch.randn(64, k, dtype=torch.float64) * 3
    results = [sg.sparsemax(x, algorithm=a, return_info=True) for a in ("sort", "michelot")]
    compiled = sg.sparsemax(x, algorithm="compiled", return_info=True)
    for other in results:
        torch.testing.assert_close(other.output, compiled.output, atol=1e-12, rtol=0)
        torch.testing.assert_close(other.threshold, compiled.threshold, atol=1e-12, rtol=0)
        assert torch.equal(other.support_size, compiled.support_size)


def test_large_supports_and_ties():
    # Wide supports (small spread) and exact ties: where peers' thresholds went wrong.
    x = torch.cat([torch.full((3, 50), 0.25), torch.rand(3, 50) * 0.01], dim=1).double()
    expected = sparsemax_bisect(x.numpy())
    for algorithm in ("sort", "michelot", "compiled"):
        info = sg.sparsemax(x, algorithm=algorithm, return_info=True)
        np.testing.assert_allclose(info.output.numpy(), expected, atol=1e-12)
        assert (info.support_size > 1).all()
    ties = torch.tensor([[1.0, 1.0, 1.0, -5.0]])
    torch.testing.assert_close(sg.sparsemax(ties), torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0.0]]))


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 8), (2, 3, 4, 5)])
def test_matches_entmax_outputs_and_gradients(shape):
    x = torch.randn(shape, dtype=torch.float64)
    for dim in range(len(shape)):
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()
        ours = sg.sparsemax(a, dim=dim)
        theirs = entmax.sparsemax(b, dim=dim)
        torch.testing.assert_close(ours, theirs)
        weights = torch.randn(shape, dtype=torch.float64)
        (ours * weights).sum().backward()
        (theirs * weights).sum().backward()
        torch.testing.assert_close(a.grad, b.grad)


def test_two_dimensional_case_is_hard_sigmoid():
    t = torch.linspace(-3, 3, 61, dtype=torch.float64)
    x = torch.stack([t, torch.zeros_like(t)], dim=-1)
    np.testing.assert_allclose(sg.sparsemax(x)[:, 0].numpy(), hard_sigmoid(t.numpy()), atol=1e-12)


def test_threshold_and_support_size_are_consistent(algorithm):
    x = torch.randn(10, 12, dtype=torch.float64)
    info = sg.sparsemax(x, algorithm=algorithm, return_info=True)
    torch.testing.assert_close(info.output, torch.clamp(x - info.threshold[:, None], min=0))
    assert torch.equal(info.support_size, (info.output > 0).sum(-1))
    # τ lies in [max(z) - 1, max(z)) (docs/math.md, the threshold's bounds)
    top = x.amax(-1)
    assert ((info.threshold >= top - 1) & (info.threshold < top)).all()


def test_return_info_with_non_last_dim():
    x = torch.randn(3, 5, 4)
    info = sg.sparsemax(x, dim=1, return_info=True)
    assert info.output.shape == x.shape
    assert info.threshold.shape == (3, 4) and info.support_size.shape == (3, 4)
    assert torch.equal(info.support_size, (info.output > 0).sum(1))


def test_input_is_never_modified(algorithm):
    x = torch.randn(6, 7)
    x[0, 2] = -math.inf
    before = x.clone()
    mask = torch.rand(6, 7) > 0.3
    sg.sparsemax(x, algorithm=algorithm, mask=mask)
    sg.sparsehourglass(x.abs(), q=0.5)
    assert torch.equal(x, before)


def test_outputs_are_fresh_writable_tensors():
    x = torch.randn(3, 5, 7)
    first = sg.sparsemax(x, dim=1, return_info=True)
    second = sg.sparsemax(x, dim=1, return_info=True)
    for a, b in zip(first, second, strict=True):
        assert a.data_ptr() != b.data_ptr() and a.data_ptr() != x.data_ptr()
    first.output.mul_(2).unsqueeze_(0)  # in place, like any tensor
    assert first.output.shape == (1, 3, 5, 7) and torch.equal(second.output * 2, first.output[0])
    # Documented: compiled outputs are NumPy-allocated, so they cannot grow in place (along
    # dim 1 the output is a torch copy in the input's layout: along the last dim it is not)
    with pytest.raises(RuntimeError, match="not resizable"):
        sg.sparsemax(x).resize_(100, 100)


def test_non_contiguous_views(algorithm):
    base = torch.randn(8, 20, dtype=torch.float64)
    view = base[:, ::2].t()  # non-contiguous, transposed
    assert not view.is_contiguous()
    expected = sparsemax_bisect(view.numpy().T).T
    np.testing.assert_allclose(sg.sparsemax(view, dim=0, algorithm=algorithm), expected, atol=1e-12)


def test_numpy_in_numpy_out(rng):
    z = rng.normal(size=(4, 5))
    out = sg.sparsemax(z)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out, sparsemax_bisect(z), atol=1e-12)
    info = sg.sparsemax(z.astype(np.float32), return_info=True)
    assert isinstance(info.output, np.ndarray) and info.output.dtype == np.float32
    assert isinstance(info.threshold, np.ndarray) and isinstance(info.support_size, np.ndarray)
    reversed_strides = z[:, ::-1]
    np.testing.assert_allclose(sg.sparsemax(reversed_strides), sparsemax_bisect(reversed_strides))


# ---- special values (the rules are in sparsegen.functional's docstring) ----


def test_nan_gives_nan_slice_only(algorithm):
    x = torch.randn(3, 5)
    x[1, 2] = math.nan
    info = sg.sparsemax(x, algorithm=algorithm, return_info=True)
    assert torch.isnan(info.output[1]).all() and torch.isnan(info.threshold[1])
    assert torch.isfinite(info.output[[0, 2]]).all()
    torch.testing.assert_close(info.output[[0, 2]], sg.sparsemax(x[[0, 2]]))


def test_negative_infinity(algorithm):
    x = torch.tensor(
        [[-math.inf, 0.5, 0.2, -math.inf], [-math.inf] * 4, [0.0, -math.inf, 3.0, 1.0]]
    )
    out = sg.sparsemax(x, algorithm=algorithm)
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.65, 0.35, 0.0]))
    torch.testing.assert_close(out[1], torch.zeros(4))  # documented: zeros, not NaN
    torch.testing.assert_close(out[2], torch.tensor([0.0, 0.0, 1.0, 0.0]))


def test_positive_infinity_shares_mass(algorithm):
    x = torch.tensor([[math.inf, 0.0, math.inf, 5.0], [1.0, math.inf, -math.inf, 2.0]])
    out = sg.sparsemax(x, algorithm=algorithm)
    torch.testing.assert_close(out, torch.tensor([[0.5, 0, 0.5, 0], [0, 1.0, 0, 0]]))


def test_all_equal_and_single_element(algorithm):
    torch.testing.assert_close(
        sg.sparsemax(torch.full((2, 4), 7.0), algorithm=algorithm), torch.full((2, 4), 0.25)
    )
    info = sg.sparsemax(torch.tensor([[3.0], [-1e30]]), algorithm=algorithm, return_info=True)
    torch.testing.assert_close(info.output, torch.ones(2, 1))
    assert info.support_size.tolist() == [1, 1]


def test_empty_tensors(algorithm):
    for shape, dim in [((0, 5), -1), ((3, 0), -1), ((3, 0), 0)]:
        x = torch.empty(shape, requires_grad=True)
        out = sg.sparsemax(x, dim=dim, algorithm=algorithm)
        assert out.shape == shape
        out.sum().backward()  # the backward of an empty slice once crashed in the kernel path
        assert x.grad.shape == shape


@pytest.mark.parametrize("magnitude", [1e30, 1e-30])
def test_huge_and_tiny_magnitudes(algorithm, magnitude):
    x = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 3.0]], dtype=torch.float32) * magnitude
    out = sg.sparsemax(x, algorithm=algorithm)
    expected = sparsemax_bisect(x.double().numpy())
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    x = torch.randn(5, 9) * 3
    out = sg.sparsemax(x.to(dtype))
    assert out.dtype == dtype
    expected = sg.sparsemax(x.to(dtype).float())
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=0)


def test_integer_input_is_a_type_error():
    with pytest.raises(TypeError, match="floating-point"):
        sg.sparsemax(torch.arange(5))
    with pytest.raises(TypeError, match="floating-point"):
        sg.sparsemax(np.arange(5))
    with pytest.raises(TypeError, match=r"torch\.Tensor or a numpy\.ndarray"):
        sg.sparsemax([1.0, 2.0])


def test_bad_algorithm_and_dim():
    with pytest.raises(ValueError, match="algorithm must be one of"):
        sg.sparsemax(torch.randn(3), algorithm="bogus")
    with pytest.raises(IndexError):
        sg.sparsemax(torch.randn(3, 4), dim=2)


def test_michelot_finishes_slow_rows_with_sort():
    # A geometric row makes Michelot's fixed point drop one entry per step.
    k = 200
    z = torch.tensor([[2.0**-i for i in range(k)]], dtype=torch.float64) * 2
    z = torch.cat([z, torch.randn(3, k, dtype=torch.float64)])
    info = sg.sparsemax(z, algorithm="michelot", return_info=True)
    np.testing.assert_allclose(info.output.numpy(), sparsemax_bisect(z.numpy()), atol=1e-12)
