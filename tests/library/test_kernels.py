"""Every path of the compiled kernel and of the torch fallback, against the float64 reference."""

import concurrent.futures
import itertools
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    assert_transform_matches,
    scaled_vjp_cases,
    scaled_vjp_reference,
    sparsemax_bisect,
    transform_inputs,
)

import sparsegen as sg
from sparsegen import _kernels, _ops, _projection, _transform_kernels

# Short rows are solved ROW_BLOCK at a time, long rows through a candidate pass.
SHORT = [1, 2, 7, 16, 63, 64, 65, 500, _kernels.LONG_ROW - 1]
LONG = [_kernels.LONG_ROW, 5000, _kernels.SEED_LENGTH + 3, 70000]


def check(x, lam=0.0, dtype=torch.float64, atol=1e-12):
    out = sg.sparsegen_lin(x.to(dtype), lam=lam, algorithm="compiled", return_info=True)
    np.testing.assert_allclose(out.output.double().numpy(), sparsemax_bisect(x, lam), atol=atol)
    assert torch.equal(out.support_size, (out.output > 0).sum(-1))
    return out


@pytest.mark.parametrize("k", SHORT + LONG)
def test_paths_match_reference(k):
    rows = 2 * _kernels.ROW_BLOCK + 5 if k < 10000 else 3  # blocks, then a partial one
    x = torch.randn(rows, k, dtype=torch.float64) * 2
    check(x)
    check(x, lam=0.7)
    check(x, dtype=torch.float32, atol=3e-6)


@pytest.mark.parametrize("k", [8, 200, 3000])
def test_wide_supports_and_ties(k):
    x = torch.rand(20, k, dtype=torch.float64) * 0.01  # support of most of the row
    x[:, : k // 2] = x[:, :1]  # ties
    out = check(x)
    assert (out.support_size > k // 8).all()
    # float32 rows are summed in float32: still exact to float32 rounding on wide supports
    check(x, dtype=torch.float32, atol=1e-7)


@pytest.mark.parametrize("k", [5, 300, 4000])
def test_special_rows_inside_a_block(k):
    x = torch.randn(40, k, dtype=torch.float64)
    x[3, 1] = math.nan
    x[5, :] = -math.inf
    x[8, 2] = math.inf
    x[8, 4] = math.inf
    x[11, : k // 2] = -math.inf
    x[17, 0] = -math.inf
    for algorithm in ("compiled", "sort", "michelot"):
        info = sg.sparsemax(x, algorithm=algorithm, return_info=True)
        assert torch.isnan(info.output[3]).all() and info.support_size[3] == 0
        assert (info.output[5] == 0).all() and info.threshold[5] == -math.inf
        assert info.output[8, 2] == info.output[8, 4] == 0.5 and info.support_size[8] == 2
        ordinary = [i for i in range(40) if i not in (3, 5, 8)]
        finite = x[ordinary].clone()
        expected = sparsemax_bisect(finite.numpy())
        np.testing.assert_allclose(info.output[ordinary].numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("k", [_kernels.LONG_ROW, 5000, _kernels.SEED_LENGTH * 2 + 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_long_rows_find_a_nan_anywhere(k, dtype):
    # The candidate pass is the only pass that reads a long row whole: a NaN of
    # either sign in the seed, in a chunk after it, in a chunk's last block or in
    # the tail after the last full chunk must make its row NaN.
    positions = [1, min(_kernels.SEED_LENGTH + 5, k // 3), k // 2 + 63, k - 64, k - 1, k - 3]
    x = torch.randn(2 * len(positions) + 1, k, dtype=dtype)
    for i, j in enumerate(positions):
        x[2 * i, j] = math.nan
        x[2 * i + 1, j] = -torch.tensor(math.nan, dtype=dtype)  # the sign bit set
    assert torch.signbit(x[1, positions[0]])
    info = sg.sparsemax(x, algorithm="compiled", return_info=True)
    assert torch.isnan(info.output[:-1]).all()
    assert (info.support_size[:-1] == 0).all()
    expected = sparsemax_bisect(x[-1:].double())[0]
    np.testing.assert_allclose(info.output[-1].double(), expected, atol=3e-6)


@pytest.mark.parametrize("k", [_kernels.LONG_ROW, 70000])
def test_long_rows_keep_an_entry_a_hair_above_the_floor(k):
    # The chunk test compares float32 entries with top − 1/scale rounded to float32;
    # an entry a hair above the float64 floor is in the support (with a tiny weight).
    scale = 3.0
    floor = 1.0 - 1.0 / scale
    x = np.full((1, k), -10.0, dtype=np.float32)
    x[0, 5] = 1.0
    x[0, k - 70] = np.float32(floor)  # the nearest float32 is above the floor
    assert float(x[0, k - 70]) > floor
    result = _ops.project(torch.from_numpy(x), torch.tensor([[scale]]), "compiled")
    assert result.output[0, k - 70] > 0 and result.support_size[0] == 2
    expected = sparsemax_bisect(scale * x.astype(np.float64))
    np.testing.assert_allclose(result.output.double().numpy(), expected, atol=1e-7)


@pytest.mark.parametrize("k", [_kernels.LONG_ROW - 1, 16385, 65536])
def test_float32_rows_with_a_large_flat_support_sum_to_one(k, algorithm):
    # Half the row ties in the support, each weight ~1/k: τ is the sum of thousands of
    # equal gaps, which summed in float32 drifted (the output summed to 1.047 at 65,536)
    x = torch.full((1, k), -0.5)
    x[0, 0] = 1.5
    x[0, 1 : k // 2] = 0.5
    x = x * 0.1234567
    out = sg.sparsemax(x, algorithm=algorithm)[0].double()
    expected = torch.from_numpy(sparsemax_bisect(x.double())[0])
    support = expected > 0
    assert torch.equal(out > 0, support)
    assert abs(out.sum().item() - 1) < 2e-3
    torch.testing.assert_close(out[support], expected[support], rtol=2e-3, atol=0)


@pytest.mark.parametrize("k", [_kernels.LONG_ROW - 1, 65536])
def test_the_backward_of_a_large_float32_support_takes_an_exact_mean(k):
    # g − mean_S g, the mean over thousands of entries: summed in float32 it drifted
    generator = np.random.default_rng(0)
    p = np.zeros((1, k), np.float32)
    p[0, : k // 2] = 1.0 / (k // 2)
    g = (generator.random((1, k)) + 10.0).astype(np.float32)
    grad = np.empty_like(p)
    _kernels.backward_rows(p, g, np.ones(1), np.array([k // 2]), grad, 1)
    support = p[0] > 0
    g64 = g[0].astype(np.float64)
    expected = np.where(support, g64 - g64[support].mean(), 0.0)
    np.testing.assert_allclose(grad[0], expected, rtol=0, atol=4e-7)


@pytest.mark.parametrize("k", [37, _kernels.LONG_ROW * 2])  # short; long (a small support)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_backward_with_a_moment_gives_each_rows_scale_term_and_limit(k, dtype):
    p, g, scale, support = scaled_vjp_cases(k, dtype)
    grad, moment = np.empty_like(p), np.empty(6)
    _kernels.backward_rows(p, g, scale, support, grad, 1, moment)
    expected, expected_moment = scaled_vjp_reference(p, g, scale)
    tolerance = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(grad, expected, rtol=tolerance, atol=tolerance)
    assert np.isnan(grad[3, [2, 5, 11]]).all() and np.isinf(grad[4]).sum() == 3
    np.testing.assert_allclose(moment, expected_moment, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_moment_per_scale_is_the_scales_gradient(dtype):
    # what the backward of a given scale (a learnt λ) takes from the kernel's one call
    from sparsegen._projection import scaled_vjp_compiled

    p, g, scale, support = (torch.tensor(a) for a in scaled_vjp_cases(37, np.float64))
    p, g, scale = p.to(dtype), g.to(dtype), scale.to(dtype)[:, None]
    _, moment = scaled_vjp_compiled(p, support[:, None], g, scale)
    _, gradient = scaled_vjp_compiled(p, support[:, None], g, scale, per_scale=True)
    divisor = torch.where(torch.isfinite(scale) & (scale != 0), scale, 1.0)
    expected = scaled_vjp_reference(p.double().numpy(), g.double().numpy(), scale.double())[1]
    np.testing.assert_allclose(gradient[:, 0], expected / divisor[:, 0].double().numpy(), 1e-6)
    assert torch.equal(gradient, moment / divisor) and gradient[3:].eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sum_signs_are_those_of_the_kept_sums(dtype):
    # what sparsecone's and sparsehourglass's backward keeps of the scores: the sign of
    # each slice's kept sum (0 for a NaN's, as torch's sign) and how many entries it keeps
    big = torch.finfo(dtype).max / 2
    x = torch.tensor(
        [[1.0, -3.0, 1.5], [2.0, -1.0, 0.5], [math.nan, 1.0, 2.0], [0.0, 0.0, 0.0],
         [big, big, -1.0], [big, big, -math.inf], [-5.0, 1.0, 9.0]],
        dtype=dtype,
    )  # fmt: skip
    mask = torch.tensor([[True, True, True]] * 6 + [[True, False, False]])
    for keep in (None, mask):
        sign, count = _projection.sum_signs_compiled(x, keep)
        kept = x if keep is None else x.masked_fill(~keep, 0.0)
        expected = kept.double().sum(-1, keepdim=True).sign()  # (float64 holds 2·big of float32)
        if dtype == torch.float64:  # the overflowed sum, in units of SUM_UNIT
            expected[4:6] = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
        assert sign.dtype == torch.float64 and sign.equal(expected)
        expected_count = torch.full((7, 1), 3.0) if keep is None else keep.sum(-1, keepdim=True)
        assert count.equal(expected_count.double())


def _rows_to_sum(dtype):
    big = torch.finfo(dtype).max * 0.75  # (two overflow a float64 sum)
    return torch.tensor(
        [[1.0, -3.0, 1.5, 0.25], [math.nan, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0],
         [big, big, -1.0, 3.0], [big, big, -math.inf, 1.0], [math.inf, -math.inf, 1.0, 2.0],
         [-5.0, 1.0, 9.0, 1e-30], [1e-3, 2e-3, -4e-3, 1e3]],
        dtype=dtype,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kept_sums_by_the_kernel_equal_torchs(dtype):
    # sparsecone's and sparsehourglass's scale, with a gradient, sums the scores in one
    # numba read where torch takes a float64 copy: the same sums, counts and units
    # (overflowed float64 sums in units of SUM_UNIT), and the same gradient
    x = _rows_to_sum(dtype)
    rows = torch.tensor([[True, True, False, True]] * 7 + [[False] * 4])
    for mask in (None, rows, rows[:1]):  # (one row of the mask broadcast over the others)
        leaf = x.clone().requires_grad_()
        total, k, unit = _projection.kept_sum(leaf, mask)
        assert type(total.grad_fn).__name__ == "_KeptSumFunctionBackward"
        torch_leaf = x.clone().requires_grad_()
        expected = _projection.kept_sum_torch(torch_leaf, mask)
        assert torch.equal(k.double(), torch.as_tensor(expected[1]).double().expand_as(k))
        expected_unit = torch.as_tensor(expected[2]).double().expand_as(unit)
        torch.testing.assert_close(
            unit * total, expected_unit * expected[0], rtol=1e-15, atol=0, equal_nan=True
        )  # (a sum of NaN or ±inf is one in any unit)
        finite = torch.isfinite(total)
        torch.testing.assert_close(unit[finite], expected_unit[finite])
        torch.testing.assert_close(total[finite], expected[0][finite], rtol=1e-15, atol=0)
        # (the gradient of a total in its own unit: the finite totals')
        weights = torch.where(finite, torch.randn_like(total), 0.0)
        grad = torch.autograd.grad(torch.where(finite, total * weights, 0).sum(), leaf)[0]
        expected_grad = torch.autograd.grad(
            torch.where(finite, expected[0] * weights, 0).sum(), torch_leaf
        )[0]
        assert grad.dtype == dtype
        torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=0)


def test_an_overflowed_float64_sum_is_taken_in_units_of_sum_unit_on_both_paths():
    # one unit, a power of two, for the numba kernel (its own constant: numba's cache is
    # keyed on the kernel modules alone), torch and Triton; float64 on every path
    from sparsegen import _kernels

    assert _kernels.SUM_UNIT == _projection.SUM_UNIT == 2.0**64
    x = _rows_to_sum(torch.float64)
    for total, _, unit in (_projection.kept_sum(x, None), _projection.kept_sum_torch(x, None)):
        assert unit.dtype == torch.float64
        # (any sum not finite, a NaN one too: no other pass looks at the scores)
        assert unit[1:6:2].eq(_projection.SUM_UNIT).all() and unit[4] == unit[3]
        assert unit[[0, 2, 6, 7]].eq(1).all()
        # big + big − 1 + 3, each term divided exactly: 2·big/unit, the ±1 and 3 lost
        assert total[3] == torch.finfo(torch.float64).max * 0.75 / 2.0**64 * 2


def test_the_scale_from_the_kernels_sum_equals_torchs_bit_for_bit():
    # Kq in float64 on both paths, for a float32 q too (a 0-d K does not promote it), so
    # that eager calls agree with traced, compiled and CUDA ones
    g = torch.Generator().manual_seed(3)
    x = torch.randn(500, 40, generator=g)
    q = torch.rand(500, 1, generator=g) * 3
    strided = x.t().contiguous().t()  # the same scores, not contiguous: torch's sum
    for mirror in (True, False):
        by_kernel = _projection.slice_scale(x.abs() + 0.1, q, mirror, None)
        by_torch = _projection.slice_scale(strided.abs() + 0.1, q, mirror, None)
        assert torch.equal(by_kernel, by_torch)


def test_kept_sums_by_the_kernel_differentiate_twice():
    z = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 7) > 0.3
    for keep in (None, mask):

        def scale(t, keep=keep):
            return _projection.slice_scale(t, 0.5, True, keep)

        assert type(_projection.kept_sum(z, keep)[0].grad_fn).__name__.startswith("_KeptSum")
        torch.autograd.gradcheck(scale, z)
        torch.autograd.gradgradcheck(scale, z)
    # a transform takes torch's sum, which it can trace
    batched = torch.func.vmap(lambda t: _projection.kept_sum(t, None)[0])(z.detach())
    torch.testing.assert_close(batched, z.detach().sum(-1, keepdim=True))


def test_per_row_scales_and_nan_scale():
    x = torch.randn(33, 100, dtype=torch.float64)
    lam = torch.linspace(-3, 0.95, 33, dtype=torch.float64)[:, None]
    out = sg.sparsegen_lin(x, lam=lam, algorithm="compiled")
    for i in (0, 16, 32):
        np.testing.assert_allclose(out[i], sparsemax_bisect(x[i], lam[i].item()), atol=1e-12)
    scale = torch.ones(33, 1, dtype=torch.float64)
    scale[4] = math.nan
    result = _ops.project(x, scale, "compiled")
    assert torch.isnan(result.output[4]).all() and torch.isfinite(result.output[5]).all()


@pytest.mark.parametrize("k", [5, 300, _kernels.LONG_ROW, 5000])
@pytest.mark.parametrize("mirror", [True, False], ids=["hourglass", "cone"])
def test_sum_scales_computed_in_the_kernel(k, mirror):
    # The compiled path computes α (α̂) itself; the reference computes it in NumPy.
    q = 0.5
    x = torch.randn(2 * _kernels.ROW_BLOCK + 5, k, dtype=torch.float64) * 2
    x[7] += 10.0 / k  # a positive and a negative sum, each away from 0
    x[9] -= 10.0 / k
    x[11] -= 2 * q + x[11].mean()  # Σx + Kq < 0: outside sparsecone's domain
    total = x.numpy().sum(-1, keepdims=True)
    alpha = (1 + k * q) / ((np.abs(total) if mirror else total) + k * q)
    expected = sparsemax_bisect(np.where(alpha > 0, alpha, 1) * x.numpy())
    expected[alpha[:, 0] <= 0] = math.nan
    x[3, 1] = math.nan
    x[5, 2] = math.inf  # α = 0, yet the +inf score takes the mass (the limit), on every path
    expected[3] = math.nan
    expected[5] = 0.0
    expected[5, 2] = 1.0
    mapping = sg.sparsehourglass if mirror else sg.sparsecone
    for dtype, atol in ((torch.float64, 1e-12), (torch.float32, 3e-6)):
        for algorithm in ("compiled", "sort"):
            out = mapping(x.to(dtype), q=q, algorithm=algorithm, return_info=True)
            np.testing.assert_allclose(out.output.double(), expected, atol=atol)
            finite = ~torch.isnan(out.output).any(-1)
            assert torch.equal(out.support_size[finite], (out.output[finite] > 0).sum(-1))
    assert mirror or torch.isnan(sg.sparsecone(x, q=q)[11]).all()


@pytest.mark.parametrize("k", [5, 300, _kernels.LONG_ROW, 5000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_scales_give_the_limit_where_the_maxima_share_the_mass(k, dtype):
    # Scales beyond the dtype's range (α̂ at tiny q overflows float32) or so
    # large that 1/scale is lost next to the maximum (λ → 1 at large scores).
    generator = torch.Generator().manual_seed(k)
    x = torch.randint(-5, 6, (6, k), generator=generator).to(dtype)
    x[:, -1] -= x.sum(-1)  # Σ x = 0 exactly (small integers): α̂ = (1 + Kq)/(Kq)
    at_top = (x == x.amax(-1, keepdim=True)).double()
    limit = (at_top / at_top.sum(-1, keepdim=True)).numpy()
    lam = 1 - (1e-12 if dtype == torch.float32 else 1e-15)
    for algorithm in ("compiled", "sort", "michelot"):
        hourglass = sg.sparsehourglass(x, q=1e-300, algorithm=algorithm)
        np.testing.assert_allclose(hourglass.double().numpy(), limit, atol=1e-6)
        lin = sg.sparsegen_lin(x * 1000, lam=lam, algorithm=algorithm)
        np.testing.assert_allclose(lin.double().numpy(), limit, atol=1e-6)


@pytest.mark.parametrize("k", [50, 1000, 5000])
def test_rows_that_need_many_newton_steps(k):
    # -(i/K)^0.1 is among the slowest shapes for Newton from below (9 steps at K = 1000).
    x = -((torch.arange(k, dtype=torch.float64) / k) ** 0.1)
    x = torch.stack([x, x.flip(0), x * 0.5])
    check(x)
    check(x, lam=0.9)


@pytest.mark.parametrize("passes", [1, 2, 3])
def test_torch_michelot_sort_finish(monkeypatch, passes):
    # Rows still moving after the last pass take the sort threshold; short rows
    # (K + 1 <= passes) never need it.
    monkeypatch.setattr(_projection, "MICHELOT_PASSES", passes)
    x = torch.randn(9, 50, dtype=torch.float64)
    x[2] = 0.0  # converged at once
    out = sg.sparsemax(x, algorithm="michelot")
    np.testing.assert_allclose(out, sparsemax_bisect(x), atol=1e-12)
    short = torch.randn(5, passes - 1, dtype=torch.float64)
    if passes > 1:
        np.testing.assert_allclose(
            sg.sparsemax(short, algorithm="michelot"), sparsemax_bisect(short), atol=1e-12
        )


# Each of the kernels' parallel launches (the suite's workers run one thread each, so
# these are where the parallel kernels run): short and long rows, forward and backward, the
# cone's scale computed in the kernel and the transforms fused.
THREADED = {
    "sparsemax": lambda x: sg.sparsemax(x, algorithm="compiled", return_info=True),
    "sparsecone": lambda x: sg.sparsecone(x.abs() + 0.1, q=0.3, algorithm="compiled"),
    "sparsegen_exp": lambda x: sg.sparsegen_exp(x, lam=0.2, algorithm="compiled"),
    "sparsegen_sq": lambda x: sg.sparsegen_sq(x, lam=0.2, algorithm="compiled"),
}


@pytest.mark.parametrize("k", [300, 4 * _kernels.LONG_ROW])
@pytest.mark.parametrize("mapping", THREADED)
def test_threads_give_the_same_answer(mapping, k):
    x = torch.randn(max(8, 4 * _kernels.PARALLEL_MIN_ELEMENTS // k), k)
    g = torch.randn_like(x)

    def outputs():
        z = x.clone().requires_grad_()
        result = THREADED[mapping](z)
        output = result.output if mapping == "sparsemax" else result
        (output * g).sum().backward()
        info = (result.support_size,) if mapping == "sparsemax" else ()
        without_grad = THREADED[mapping](x)  # long rows: the transform fused in the solve
        without_grad = without_grad.output if mapping == "sparsemax" else without_grad
        return (output.detach(), z.grad, without_grad, *info)

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = outputs()
        torch.set_num_threads(2)
        two = outputs()
        # numba's thread count is per calling thread: another Python thread sets its own
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            other = pool.submit(outputs).result()
    finally:
        torch.set_num_threads(previous)
    for result in (two, other):
        for got, expected in zip(result, one, strict=True):
            assert torch.equal(got, expected)


def test_backward_paths_agree():
    # The torch backward (run by "sort"/"michelot") and the numba one (run by "compiled").
    for k in (10, 3000):
        x = torch.randn(6, k, dtype=torch.float64)
        v = torch.randn(6, k, dtype=torch.float64)
        lam = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
        grads = []
        for algorithm in ("compiled", "sort", "michelot"):
            z = x.clone().requires_grad_()
            lam.grad = None
            (sg.sparsegen_lin(z, lam=lam, algorithm=algorithm) * v).sum().backward()
            hourglass = x.clone().requires_grad_()  # α̂ computed by the kernel, or by torch
            (sg.sparsehourglass(hourglass, q=0.3, algorithm=algorithm) * v).sum().backward()
            cone = (x.abs() + 0.1).requires_grad_()  # inside sparsecone's domain
            (sg.sparsecone(cone, q=0.3, algorithm=algorithm) * v).sum().backward()
            grads.append((z.grad, lam.grad.clone(), hourglass.grad, cone.grad))
        for other in grads[1:]:
            for got, expected in zip(other, grads[0], strict=True):
                torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("k", [_kernels.LONG_ROW, 5000, 70001])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_long_rows_backward_by_support_positions_matches_the_dense_formula(k, dtype):
    # Long rows whose support is under K/16 take the scatter path, wider ones the
    # dense pass: supports at the switch, in the last partial chunk, a NaN row.
    generator = torch.Generator().manual_seed(k)
    x = torch.randn(8, k, dtype=torch.float64, generator=generator) * 3
    x[1] = torch.rand(k, dtype=torch.float64, generator=generator) * 1e-3  # wide support
    for row, size in ((2, k // 16 - 1), (3, k // 16), (4, 1)):
        x[row] = -5.0
        x[row, torch.randperm(k, generator=generator)[:size]] = 1.0  # ties: support `size`
    x[5] = -5.0
    x[5, -3:] = 10.0  # the support in the tail after the last full chunk
    x[6, 7] = math.nan
    info = sg.sparsemax(x.to(dtype), algorithm="compiled", return_info=True)
    assert info.support_size[2] == k // 16 - 1 and info.support_size[3] == k // 16
    assert info.support_size[5] == 3 and info.support_size[1] > k // 16
    g = torch.randn(8, k, dtype=dtype, generator=generator)
    scale = torch.linspace(0.5, 2.0, 8, dtype=dtype)[:, None]
    got = _projection.vjp_compiled(info.output, info.support_size, g, scale)
    expected = _projection.vjp_torch(info.output, info.support_size, g, scale)
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)
    assert (got[6] == 0).all()


def test_forced_torch_path_keeps_float32():
    x = torch.randn(4, 700)
    for algorithm in ("sort", "michelot"):
        out = sg.sparsemax(x, algorithm=algorithm)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, sg.sparsemax(x, algorithm="compiled"), atol=2e-6, rtol=0)


def test_compiled_rejects_what_it_cannot_take():
    with pytest.raises(ValueError, match="runs on CPU float32/float64"):
        _ops.project(torch.randn(3, 4, dtype=torch.bfloat16), None, "compiled")


def test_flat_long_rows_overflow_the_candidate_buffer():
    # More candidates than the long-row buffer holds: the row is solved in place.
    k = _kernels.CANDIDATES * 3
    x = torch.rand(3, k, dtype=torch.float64) * 1e-3
    x[1, ::2] = 0.0
    buffer = np.empty(_kernels.candidate_capacity(k))
    index = np.empty(buffer.shape[0], dtype=np.int64)
    assert (
        _kernels._candidates(x.numpy(), None, 0, x[0].max().item(), -1.0, False, buffer, index)[1]
        == -1
    )  # overflow
    out = check(x)
    assert (out.support_size > 1000).all()
    check(x, dtype=torch.float32, atol=1e-6)


@pytest.mark.parametrize("k", [_kernels.LONG_ROW, 4096, 20000])
def test_rows_with_more_than_a_sixteenth_as_candidates_are_solved_in_place(k):
    # A scale of 1/4 puts most Gaussian scores within 1/scale of the maximum.
    x = torch.randn(4, k, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    buffer = np.empty(_kernels.candidate_capacity(k))
    index = np.empty(buffer.shape[0], dtype=np.int64)
    assert buffer.shape[0] < k // 8
    assert (
        _kernels._candidates(x.numpy(), None, 0, x[0].max().item(), -4.0, False, buffer, index)[1]
        == -1
    )  # overflow
    assert (
        _kernels._candidates(x.numpy(), None, 0, x[0].max().item(), -0.01, False, buffer, index)[1]
        > 0
    )  # a few
    check(x, lam=-3.0)
    check(x, lam=-3.0, dtype=torch.float32, atol=1e-6)


@pytest.mark.parametrize("k", [_kernels.LONG_ROW, 8192, 70000])
def test_flat_rows_start_newton_from_a_sampled_threshold_on_either_side(k):
    # A flat row, solved in place, first takes the Newton step from τ estimated on evenly
    # spaced entries: from above τ (the sample holds the row's high entries) the tangent's
    # root is below it, as from below; both must end at the exact τ
    m = _kernels.candidate_capacity(k)
    sampled = np.arange(m) * k // m
    g = torch.Generator().manual_seed(k)
    x = torch.rand(6, k, dtype=torch.float64, generator=g) * 1e-3
    x[0, sampled] += 0.5  # the sample holds the high entries: the estimate is above τ
    x[1] += 0.5
    x[1, sampled] = 0.0  # the sample holds the low ones: below τ
    x[2] = torch.randn(k, dtype=torch.float64, generator=g) * 0.02  # near τ
    x[3, sampled[::2]] += 0.3  # half the sample high
    x[4, :] = x[4, :1]  # all tied: a guess of the exact τ
    x[5] = torch.linspace(0, 0.9, k, dtype=torch.float64)  # sorted
    reference = sparsemax_bisect(x)
    rows, sides = x.numpy(), []
    for r in range(6):
        gaps, support = rows[r] - rows[r].max(), reference[r] > 0
        exact = (gaps - reference[r])[support].mean()  # p = v − τ on the support
        guess = _kernels._sampled_threshold(rows, r, rows[r].max(), 1.0, np.empty(m))
        sides.append(np.sign(guess - exact))
    assert sides[0] > 0 and sides[1] < 0, sides  # both sides taken
    out = check(x)
    assert (out.support_size > 100).all() or k == _kernels.LONG_ROW
    check(x, lam=-3.0)
    check(x, dtype=torch.float32, atol=1e-6)
    keep = torch.rand(x.shape, generator=g) > 0.1  # the masked row's copy, in place too
    masked = sg.sparsemax(x, mask=keep, algorithm="compiled")
    expected = sparsemax_bisect(x.masked_fill(~keep, -math.inf))
    np.testing.assert_allclose(masked.numpy(), expected, atol=1e-12)


def _steps_on_a_copy(rows, r, scale, m):
    """Whether the in-place solver copies row ``r``'s gaps above its bound out (as
    ``_project_row_in_place`` decides, from the gaps above the sampled guess)."""
    top = float(rows[r].max())
    guess = _kernels._sampled_threshold(rows, r, top, scale, np.empty(m))
    bound = _kernels._newton_start(top, np.sort(rows[r])[-2], scale)
    _, n = _kernels._sum_above(rows, r, top, scale, guess)
    return guess > bound and _kernels._copy_pays(n, m, rows.shape[1])


@pytest.mark.parametrize("lam", [0.0, -3.0])
def test_flat_rows_take_newtons_steps_on_a_copy_of_the_gaps_above_a_bound(lam):
    # A flat row whose gaps above the Newton step from the sampled guess (a bound below τ)
    # are few takes its further steps on a copy of them, which must hold every gap a
    # step counts, as the roundings put them (a float32 gap just above the bound, say);
    # the others take them on the row. Both end at the exact τ.
    k = 70_000
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, k, dtype=torch.float64, generator=g) * 0.002
    x[1] *= 30  # a support of tens
    x[2] = (x[2] * 1000).round() / 1000 * 3  # hundreds, tied in groups
    x[3] = torch.rand(k, dtype=torch.float64, generator=g) * 0.001  # thousands
    m = _kernels.candidate_capacity(k)
    copied = [_steps_on_a_copy(x.numpy(), r, 1 / (1 - lam), m) for r in range(4)]
    assert any(copied) and not all(copied), copied
    check(x, lam=lam)
    check(x, lam=lam, dtype=torch.float32, atol=1e-6)
    keep = torch.rand(x.shape, generator=g) > 0.1  # masked: solved in a copy of the row
    masked = sg.sparsegen_lin(x, lam=lam, mask=keep, algorithm="compiled")
    expected = sparsemax_bisect(x.masked_fill(~keep, -math.inf) / (1 - lam))
    np.testing.assert_allclose(masked.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("k", [2_500, 40_000])
def test_a_prefix_that_misjudges_the_row_costs_time_never_the_answer(k):
    # Whether a long row is flat (solved in place) or sparse (its candidates copied out)
    # is judged from its first entries; rows whose prefix says the opposite of the rest
    # take the other path, and still end at the exact τ (and where the copy overflows,
    # in place after all).
    g = torch.Generator().manual_seed(11)
    sample = _kernels.FLAT_SAMPLE
    x = torch.randn(6, k, dtype=torch.float64, generator=g)
    x[0, :sample] = 3 + 0.01 * x[0, :sample]  # a flat prefix, a sparse row: its top is last
    x[0, -1] = 10.0
    x[1, sample:] = 0.01 * x[1, sample:]  # a sparse prefix, a flat rest just below its top
    x[1, sample:] += x[1, :sample].max() - 0.05
    x[2] = x[2].sort(descending=True).values  # a sorted row: its top in the prefix
    x[3] = x[3].sort().values  # and after it
    x[4, :sample] = -30.0  # a prefix far below the rest: every entry of it a non-candidate
    x[5, : sample // 8] = 2.0  # a plateau of ties at the top, in the prefix
    for lam in (0.0, -2.0, 0.6):
        check(x, lam=lam)
        check(x, lam=lam, dtype=torch.float32, atol=2e-6)
    keep = torch.rand(x.shape, generator=g) > 0.2
    masked = sg.sparsegen_lin(x, lam=-2.0, mask=keep, algorithm="compiled")
    expected = sparsemax_bisect(x.masked_fill(~keep, -math.inf) / 3.0)
    np.testing.assert_allclose(masked.numpy(), expected, atol=1e-12)


CONCURRENT = """
import concurrent.futures, numba, torch, sparsegen as sg
torch.set_num_threads(2)
x = torch.randn(64, 1024)  # 65,536 elements: parallel launches
g = torch.randn(64, 1024)
expected = sg.sparsemax(x)
def work(_):
    for _ in range(30):
        leaf = x.clone().requires_grad_()
        out = sg.sparsemax(leaf)
        out.backward(g)
        assert torch.equal(out, expected)
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    list(pool.map(work, range(4)))
print(numba.threading_layer())
"""


@pytest.mark.parametrize("layer", ["workqueue", "omp", "tbb"])
def test_concurrent_calls_never_abort(layer):
    # Four Python threads launching parallel kernels at once; the workqueue layer
    # (numba's fallback without TBB or OpenMP) aborts the process if two launches meet.
    env = {**os.environ, "NUMBA_THREADING_LAYER": layer}  # (the kernels from numba's cache)
    result = subprocess.run(
        [sys.executable, "-c", CONCURRENT], capture_output=True, text=True, env=env, timeout=600
    )
    if result.returncode and "No threading layer could be loaded" in result.stderr:
        pytest.skip(f"numba's {layer} layer is not installed here")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == layer


@pytest.mark.parametrize("k", [1, 7, 64, 300, _kernels.LONG_ROW, 5000])
@pytest.mark.parametrize(
    "mapping",
    [
        lambda x, mask, a: sg.sparsemax(x, mask=mask, algorithm=a, return_info=True),
        lambda x, mask, a: sg.sparsegen_lin(x, lam=0.6, mask=mask, algorithm=a, return_info=True),
        lambda x, mask, a: sg.sparsecone(x.abs(), q=0.5, mask=mask, algorithm=a, return_info=True),
        lambda x, mask, a: sg.sparsehourglass(x, q=0.5, mask=mask, algorithm=a, return_info=True),
        # and the compiled transforms, which take the mask too
        lambda x, mask, a: sg.sparsegen_exp(x, lam=0.2, mask=mask, algorithm=a, return_info=True),
        lambda x, mask, a: sg.sparsegen_sq(x, lam=0.2, mask=mask, algorithm=a, return_info=True),
        lambda x, mask, a: sg.sum_normalization_pp(x, mask=mask, algorithm=a, return_info=True),
    ],
)
def test_masks_inside_the_kernel_match_the_torch_path(k, mapping):
    # The kernel reads the mask itself (no masked_fill); the sort path fills -inf in torch.
    generator = torch.Generator().manual_seed(k)
    x = torch.randn(2 * _kernels.ROW_BLOCK + 3, k, dtype=torch.float64, generator=generator)
    mask = torch.rand(x.shape, generator=generator) > 0.3
    mask[0] = False  # a fully masked row: zeros
    x[1, 0], mask[1, 0] = math.nan, False  # a masked NaN is ignored
    x[2, 0], mask[2, 0] = math.nan, True  # a kept NaN: a NaN row, masked entries still 0
    x[3, 0], mask[3, 0] = math.inf, False  # a masked +inf is ignored
    if k > 8:
        x[1, -1], mask[1, -1] = -math.nan, False  # also where the seed does not reach
        mask[4, : k // 2] = False  # long rows: a seed prefix all masked
        x[5, k // 3], mask[5, k // 3] = 100.0, False  # the largest score masked
        x[6] = 1e-4 * x[6]  # flat: a long row's candidates overflow, solved in a copy
    compiled = mapping(x, mask, "compiled")
    reference = mapping(x, mask, "sort")
    torch.testing.assert_close(compiled.output, reference.output, equal_nan=True)
    torch.testing.assert_close(compiled.support_size, reference.support_size)
    assert torch.equal(compiled.output[0], torch.zeros(k, dtype=x.dtype))
    assert (compiled.output[~mask] == 0).all()
    assert torch.isfinite(compiled.output[1]).all()
    if k > 1:
        assert torch.isnan(compiled.output[2][mask[2]]).all()


@pytest.mark.parametrize("k", [6, _kernels.LONG_ROW + 1])
@pytest.mark.parametrize("mirror", [False, True])
def test_masked_sum_scale_gradients(k, mirror):
    # The fused α/α̂ sums the kept entries only, and so does its gradient.
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3, k, dtype=torch.float64, generator=generator) + 0.1
    mask = torch.rand(3, k, generator=generator) > 0.4
    mask[:, 0] = True
    f = sg.sparsehourglass if mirror else sg.sparsecone
    expected = sg.sparsemax(
        x * _projection.ConeScale(0.7, mirror).of(x, mask).detach(), mask=mask, algorithm="sort"
    )
    torch.testing.assert_close(f(x, q=0.7, mask=mask), expected)
    if k < 50:
        leaf = x.clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda z: f(z, q=0.7, mask=mask), (leaf,))
        assert torch.autograd.gradgradcheck(lambda z: f(z, q=0.7, mask=mask), (leaf,))


def test_vmap_over_a_batched_mask():
    x = torch.randn(4, 3, 10, dtype=torch.float64)
    mask = torch.rand(4, 3, 10) > 0.3
    expected = sg.sparsecone(x.abs(), q=1.0, mask=mask)
    vmapped = torch.vmap(lambda a, m: sg.sparsecone(a, q=1.0, mask=m))(x.abs(), mask)
    torch.testing.assert_close(vmapped, expected)


@pytest.mark.parametrize("k", [9, _kernels.LONG_ROW + 3])
@pytest.mark.parametrize("f", [sg.sparsecone, sg.sparsehourglass])
@pytest.mark.parametrize("algorithm", ["compiled", "sort"])
def test_per_slice_q_computed_in_the_projection(k, f, algorithm):
    # Without grad a tensor q goes into the projection (q=None, q in scale); with grad the scale
    # is computed in torch: both must agree, masked or not, q = 0 and Σz = 0 included.
    generator = torch.Generator().manual_seed(k)
    x = torch.randn(7, k, dtype=torch.float64, generator=generator)
    x = x.abs() + 0.1 if f is sg.sparsecone else x
    q = torch.rand(7, 1, dtype=torch.float64, generator=generator) * 3
    q[0] = 0.0
    if f is sg.sparsehourglass:
        x[1] = torch.linspace(-1, 1, k, dtype=torch.float64)  # Σz = 0 ...
        q[1] = 0.0  # ... at q = 0: the maxima share the mass
    q_before = q.clone()
    for mask in (None, torch.rand(7, k, generator=generator) > 0.3):
        fused = f(x, q=q, mask=mask, algorithm=algorithm)
        leaf = x.clone().requires_grad_()
        in_torch = f(leaf, q=q, mask=mask, algorithm=algorithm).detach()
        torch.testing.assert_close(fused, in_torch)
        if f is sg.sparsehourglass and mask is None:
            assert fused[1, -1] == 1.0  # the limit: the one maximum takes the mass
    assert torch.equal(q, q_before)  # the kernel overwrites a copy, never the caller's q


def test_per_slice_q_through_the_operator_refuses_a_gradient_for_q():
    x = torch.randn(3, 5, dtype=torch.float64)
    q = torch.ones(3, 1, dtype=torch.float64, requires_grad=True)
    with pytest.raises(NotImplementedError, match="per-slice q"):
        _ops.ProjectFunction.apply(x, q, "hourglass", None, "compiled", None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fill_masked_matches_masked_fill(dtype):
    # The compiled select pass that replaces masked_fill where nothing records a gradient.
    x = torch.randn(5, 6, 7, dtype=dtype)
    x[0, 0, 0], x[1, 1, 1] = math.nan, math.inf
    for mask in (torch.rand(5, 6, 7) > 0.4, torch.rand(6, 1) > 0.5, torch.rand(7) > 0.5):
        for z in (x, x.transpose(0, 2)):  # non-contiguous input
            m = mask if z is x else mask.expand(x.shape).transpose(0, 2)
            for value in (-math.inf, 0.0):
                filled = _ops.fill_masked(z, m, value)
                assert filled.dtype == z.dtype and filled.shape == z.shape
                torch.testing.assert_close(filled, z.masked_fill(~m, value), equal_nan=True)
    leaf = x.clone().requires_grad_()  # a gradient is recorded: torch's masked_fill
    assert _ops.fill_masked(leaf, mask, 0.0).grad_fn is not None
    assert _ops.fill_masked(x, None, 0.0) is x


def _ulps(value: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Distance in units in the last place of ``value``'s dtype (0 where both are equal)."""
    spacing = np.spacing(np.abs(reference).astype(value.dtype))
    return np.where(value == reference, 0.0, np.abs(value - reference) / spacing)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=60, deadline=None)
@given(st.data())
def test_expm1_polynomial_within_two_ulps(dtype, data):
    # The vectorised expm1 of sparsegen-exp's gap, against NumPy's in float64 (rounded
    # to the dtype): every magnitude from subnormal to where e^d − 1 rounds to −1.
    bits = 32 if dtype is np.float32 else 64
    gaps = data.draw(
        st.lists(st.floats(-800, 0, width=bits, allow_subnormal=True), min_size=1, max_size=70)
    )
    x = np.array([[0.0, *gaps, -1e-30, -0.3465, -0.3466, -87.5, -708.5, -np.inf]], dtype=dtype)
    out, top = np.empty_like(x), np.empty(1)
    _transform_kernels.transform_rows(x, None, _transform_kernels.EXP_GAP, out, top, 1)
    reference = np.expm1(x.astype(np.float64)).astype(dtype)
    assert top[0] == 0.0
    assert _ulps(out, reference).max() <= 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 5, 16, 37, _kernels.LONG_ROW + 9])
def test_transforms_match_their_torch_formulas(dtype, k):
    # One compiled pass each for sparsegen-exp's, -sq's and sum-normalization++'s
    # transforms; torch's formulas (in float64) are the reference, tops included.
    x, mask = transform_inputs(dtype, k)
    for keep in (None, mask):
        for kind in ("exp_gap", "square_gap", "ratio"):
            out, out_top = _projection.transform_compiled(x, keep, kind)
            assert_transform_matches(out, out_top, x, keep, kind)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 37, 5000])
@pytest.mark.parametrize("kind", ["exp_gap", "square_gap"])
def test_transform_backward_kernel_matches_the_derivative_and_the_torch_formulas(kind, k, dtype):
    # ∂gap/∂z with the slice's top a constant (its derivative cancels in the projection):
    # e^{z−top} and 2z/top², 0 at masked entries and at infinite scores (their slices
    # are limits). Against float64 autograd of the reference transform on the ordinary
    # rows, and the torch formulas (the backward that double backward records) on all.
    x, mask = transform_inputs(dtype, k)
    grad = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for keep in (None, mask):
        gap, top = _projection.transform_compiled(x, keep, kind)
        saved = gap if kind == "exp_gap" else x
        result = _projection.transform_backward_compiled(saved, keep, grad.to(dtype), top, kind)

        z = x.double().requires_grad_()
        kept = z if keep is None else z.masked_fill(~keep, -math.inf if kind == "exp_gap" else 0)
        reference = torch.expm1(kept - top.double()) if kind == "exp_gap" else (kept / top) ** 2
        (expected,) = torch.autograd.grad(reference, z, grad)
        ordinary = [0, 5] if keep is None else [0]  # (large rows: e^(z−top) underflows)
        tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
        torch.testing.assert_close(result[ordinary].double(), expected[ordinary], **tolerance)

        bridge = torch.ones_like(gap, requires_grad=True)  # the torch formulas, recorded
        with torch.enable_grad():
            formulas = _ops._TransformFunction.backward(
                _formula_context(kind, dtype, saved, top, keep), grad.to(dtype) * bridge, None
            )[0]
        torch.testing.assert_close(result, formulas.detach(), rtol=0, atol=0, equal_nan=True)


class _formula_context:
    """What :class:`sparsegen._ops._TransformFunction`'s backward reads from its context."""

    def __init__(self, kind, dtype, saved, top, mask):
        self.kind, self.dtype, self.kernels = kind, dtype, "compiled"
        self.saved_tensors = (saved, top, mask)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("k", [5, 37, 5000])
def test_masked_transforms_over_many_row_blocks(k, threads):
    # Masked rows are transformed a block of rows at a time: blocks that end mid-batch, a
    # last partial block, and parallel ranges that start mid-block.
    x, mask = transform_inputs(torch.float64, k)
    blocks = 3 * _transform_kernels.MASKED_BLOCK_ELEMENTS // (8 * k)
    reps = max(blocks, 2 * _kernels.PARALLEL_MIN_ELEMENTS // (8 * k)) + 1
    x = x.repeat(reps, 1) + torch.arange(8 * reps, dtype=x.dtype)[:, None] % 7
    mask = mask.repeat(reps, 1)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for kind in ("exp_gap", "square_gap", "ratio"):
            out, out_top = _projection.transform_compiled(x, mask, kind)
            assert_transform_matches(out, out_top, x, mask, kind)
    finally:
        torch.set_num_threads(previous)


def test_transforms_run_in_torch_where_the_kernel_does_not():
    # Traced, compiled, transformed or another algorithm: the caller's torch code.
    x = torch.randn(3, 4, dtype=torch.float64)
    long = torch.randn(3, _kernels.LONG_ROW)
    assert _ops.project_transformed_rows(long, None, "exp_gap", 0.5, "sort") is None
    assert _ops.project_transformed_rows(long[:, :-1], None, "exp_gap", 0.5, "auto") is None
    lam = torch.tensor(0.5, requires_grad=True)
    assert _ops.project_transformed_rows(long, None, "exp_gap", lam, "auto") is None
    assert _ops.project_transformed_rows(long, None, "exp_gap", 0.5, "auto") is not None
    assert _ops.transform_rows(x, None, "exp_gap", "sort") is None
    assert _ops.transform_rows(x[:, :0], None, "exp_gap", "auto") is None
    assert _ops.transform_rows(x.requires_grad_(), None, "ratio", "auto") is None
    gap, top = _ops.transform_rows(x, None, "square_gap", "auto")
    assert gap.grad_fn is not None and not top.requires_grad


@pytest.mark.parametrize("k", [_kernels.LONG_ROW, 5000, _kernels.SEED_LENGTH * 2 + 77])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mapping", [sg.sparsegen_exp, sg.sparsegen_sq], ids=["exp", "sq"])
def test_long_rows_projected_from_the_scores_match_transform_then_project(mapping, dtype, k):
    # Without a gradient, sparsegen-exp's and -sq's long rows find their candidates on
    # the scores and transform only those; with one, the row is transformed, then
    # projected. Both must agree, on every branch of the first.
    generator = torch.Generator().manual_seed(k)
    x = (2 * torch.randn(12, k, generator=generator, dtype=torch.float64)).to(dtype)
    x[1] *= 1e-3  # a flat row: more candidates than room, solved in a transformed copy
    x[2, 5] = math.nan
    x[3, 7] = math.inf
    x[4] = -math.inf
    x[5] = 0.0  # sq: no finite positive maximum of |z|
    x[6, -1] = x[6].max() + 3  # the maximum past the seed: the floor rises
    x[7, -2] = -(x[7].abs().max() + 3)  # sq: the largest |z| negative, past the seed
    x[8, -3:] = 40.0  # a support in the tail after the last full chunk
    x[9] *= 30  # exp: a huge scale, the maximum alone
    x[10, : k // 2] = -math.inf  # -inf entries in the seed
    # two entries, the second's gap -0.9 at λ = 0.5 (scale 2), just inside the floor -1
    exp = mapping is sg.sparsegen_exp
    x[11] = -30.0 if exp else 0.01
    x[11, k // 3] = 0.0 if exp else 1.0
    x[11, k - 5] = math.log(0.55) if exp else math.sqrt(0.55)
    lams = [0.5, -1e6, torch.linspace(-3, 0.95, 12, dtype=dtype)[:, None]]  # -1e6: s ≤ 1
    assert mapping(x[11:], lam=0.5, return_info=True).support_size.item() == 2
    mask = torch.rand(x.shape, generator=generator) > 0.2
    mask[0] = False  # fully masked
    mask[3, 7] = False  # a masked +inf is ignored
    mask[6, -1] = False  # the maximum past the seed masked
    mask[9, : k // 2] = False  # a seed all masked
    mask[11] = True
    for lam, keep in itertools.product(lams, (None, mask)):
        fused = mapping(x, lam=lam, mask=keep, return_info=True)
        graded = mapping(x.clone().requires_grad_(), lam=lam, mask=keep, return_info=True)
        atol = 2e-6 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(
            fused.output, graded.output.detach(), atol=atol, rtol=0, equal_nan=True
        )
        assert torch.equal(fused.support_size, graded.support_size)
        torch.testing.assert_close(
            fused.threshold, graded.threshold.detach(), rtol=1e-5, atol=1e-6, equal_nan=True
        )
    # against the float64 formula, on rows whose transform does not overflow
    z = x[[0, 6, 8, 11]].double()
    g = torch.exp(z) if exp else z**2
    expected = sparsemax_bisect((g / 0.5).numpy())
    got = mapping(x[[0, 6, 8, 11]], lam=0.5).double().numpy()
    np.testing.assert_allclose(got, expected, atol=3e-6 if dtype == torch.float32 else 1e-9)
    # along another dimension, in half precision
    half = x[[0, 6]].T.contiguous().half()
    torch.testing.assert_close(
        mapping(half, lam=0.5, dim=0), mapping(half.float(), lam=0.5, dim=0).half()
    )


@pytest.mark.parametrize("k", [2, 15, 16, 17, 64, 200])
def test_newton_starts_below_the_threshold_from_the_top_two(k):
    # Newton starts at the top two's threshold, found in the max pass's eight lanes: the
    # second largest itself, or a lower bound on it when both fall in one lane.
    generator = torch.Generator().manual_seed(k)
    x = torch.randn(6, k, dtype=torch.float64, generator=generator)
    x[0, 0], x[0, min(8, k - 1)] = 5.0, 4.9  # one lane (for k >= 16): the bound is lower
    x[1, 0], x[1, k - 1] = 5.0, 4.9  # the tail
    x[2, :2] = 7.0  # tied maxima
    x[3] *= 1e-3  # a wide support: the top two's threshold is far below
    x[4, 1] = 1e6  # the rest far below: the support is the maximum alone
    rows = x.numpy()
    for r in range(rows.shape[0]):
        top, second = _kernels._row_top_two(rows, r, k)
        ordered = np.sort(rows[r])[::-1]
        assert top == ordered[0] and second <= ordered[1]
        assert second == ordered[1] or k >= 16
    check(x)
    check(x, lam=0.9)
    check(x, lam=-5.0)


FORKED = """
import multiprocessing, numpy as np, torch, sparsegen as sg
sg.sparsemax(torch.randn(64, 4096))  # a parallel launch: the omp layer is running
def child(seed):
    # NumPy for the data and the check: torch's own parallel ops share the limit
    x = np.random.default_rng(seed).standard_normal((64, 4096), dtype=np.float32)
    return float(sg.sparsemax(torch.from_numpy(x)).numpy().sum(dtype=np.float64))
context = multiprocessing.get_context("fork")
process = context.Process(target=child, args=(0,))
process.start()
process.join(120)
assert process.exitcode == 0, process.exitcode
with context.Pool(2) as pool:
    print(pool.map_async(child, range(4)).get(timeout=120))
"""


@pytest.mark.parametrize("first", ["sparsegen", "torch"])
def test_a_forked_child_projects_after_a_parallel_call(first):
    # GNU OpenMP cannot start threads in a child forked after it ran: numba aborted
    # the child ("fork() called from a process already using GNU OpenMP") and a
    # fork Pool hung. numba's omp layer shares torch's libgomp, so a parallel torch op
    # in the parent is enough ("torch": no sparsegen call before the fork). The child
    # runs the kernels on its own thread.
    code = FORKED
    if first == "torch":
        code = code.replace(
            "sg.sparsemax(torch.randn(64, 4096))",
            "torch.set_num_threads(2); torch.randn(512, 4096).exp().sum()",
        )
    env = {**os.environ, "NUMBA_THREADING_LAYER": "omp"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    sums = [float(s) for s in result.stdout.strip().strip("[]").split(",")]
    np.testing.assert_allclose(sums, 64.0, rtol=1e-6)


def test_the_cache_is_keyed_on_every_kernel_source(tmp_path, monkeypatch):
    # A cached kernel that inlines another module's function must not outlive an edit
    # of that module: every kernel module's functions carry one stamp of all sources.
    from sparsegen import _numba_cache

    stamps = {
        f._cache._impl.locator.get_source_stamp()
        for f in (_kernels._sum_above, _transform_kernels._divided_rows)
    }
    assert stamps == {_numba_cache.sources_stamp()}
    for name in _numba_cache.KERNEL_MODULES:
        (tmp_path / name).write_bytes((_numba_cache.PACKAGE / name).read_bytes())
    monkeypatch.setattr(_numba_cache, "PACKAGE", tmp_path)
    _numba_cache.sources_stamp.cache_clear()
    try:
        assert _numba_cache.sources_stamp() in stamps  # the same sources
        kernels = tmp_path / "_kernels.py"
        kernels.write_text(kernels.read_text() + "\n# an edit\n")
        _numba_cache.sources_stamp.cache_clear()
        assert _numba_cache.sources_stamp() not in stamps
    finally:
        _numba_cache.sources_stamp.cache_clear()


def test_every_module_that_caches_kernels_is_in_the_stamp():
    from sparsegen import _numba_cache

    cached = {p.name for p in _numba_cache.PACKAGE.rglob("*.py") if "cache=True" in p.read_text()}
    assert cached <= set(_numba_cache.KERNEL_MODULES)


THREADS_KEPT = """
import torch, sparsegen as sg
torch.set_num_threads(2)
sg.sparsemax(torch.randn(4096, 64))  # large enough for the parallel kernels
print(torch.get_num_threads())
"""


def test_a_parallel_call_keeps_torchs_thread_count():
    # numba's omp layer shares torch's libgomp: starting it set GNU OpenMP's thread count,
    # which torch reads, to NUMBA_NUM_THREADS
    env = {
        **os.environ,
        "NUMBA_THREADING_LAYER": "omp",
        "NUMBA_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", THREADS_KEPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["2"]


def test_a_call_of_many_rows_leaves_no_buffer_behind():
    # the shared ones (the scale of a call without one) are not grown to a call's size
    held = _projection._ones.nbytes
    sg.sparsemax(torch.randn(_projection._ones.shape[0] * 2 + 1, 2))
    assert _projection._ones.nbytes == held
