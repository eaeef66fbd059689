"""The Triton transforms of sparsegen-exp, -sq and sum-normalization++
(sparsegen._triton_transform) against torch's formulas in float64, on both paths: rows on
chip ("short") and rows split into chunks across programs ("split", forced at small K by
lowering the launcher's limits); and sparsegen-exp's and -sq's projection straight from the
scores (sparsegen._triton_projection.project_transformed_triton) against the float64
mappings. Without a GPU the kernels run in Triton's interpreter on CPU tensors, so the
sizes here are small."""

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from reference import assert_transform_matches, transform_inputs

import sparsegen as sg
from sparsegen import _ops
from sparsegen._projection import transform_backward_compiled
from sparsegen._triton_projection import project_transformed_triton
from sparsegen._triton_transform import transform_backward_triton, transform_triton
from sparsegen._validation import compute_dtype

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PATHS = {"short": {}, "split": {"max_short_k": 0, "chunk": 16}}
KINDS = ("exp_gap", "square_gap", "ratio")
# The kernels compute half types in float32 and round once to the dtype.
TOLERANCE = {
    torch.float32: {},
    torch.float64: {},
    torch.float16: {"rtol": 1e-3, "atol": 1e-3},
    torch.bfloat16: {"rtol": 8e-3, "atol": 8e-3},
}
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("k", [1, 7, 37])
@pytest.mark.parametrize("dtype", TOLERANCE, ids=str)
def test_transforms_match_their_torch_formulas(dtype, k, path):
    x, mask = transform_inputs(dtype, k)
    x, mask = x.to(DEVICE), mask.to(DEVICE)
    for keep in (None, mask):
        for kind in KINDS:
            out, top = transform_triton(x, keep, kind, **PATHS[path])
            assert_transform_matches(out.cpu(), top.cpu(), x.cpu(), _cpu(keep), kind,
                                     **TOLERANCE[dtype])  # fmt: skip


def _cpu(t):
    return None if t is None else t.cpu()


def test_the_exp_gap_keeps_its_precision_near_zero():
    # expm1, not exp − 1: gaps of 1e-7 below the top keep their relative precision
    x = torch.tensor([[0.0, -1e-7, -1e-4, -0.5, -30.0, -200.0]], device=DEVICE)
    out, _ = transform_triton(x, None, "exp_gap")
    expected = torch.expm1(x.double().cpu())
    torch.testing.assert_close(out.cpu().double(), expected, rtol=4e-7, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_exp_gap_where_e_to_the_gap_is_subnormal(dtype):
    # Kahan's (u − 1)·x/log u with a subnormal u = e^x: log u far off, −1.006 for −100
    lowest = -110.0 if dtype == torch.float32 else -750.0
    x = torch.linspace(lowest, 0.0, 4001, dtype=dtype, device=DEVICE)[None]
    out, _ = transform_triton(x, None, "exp_gap")
    expected = torch.expm1(x.double().cpu())
    torch.testing.assert_close(out.cpu().double(), expected, rtol=4e-7, atol=1e-7)


def test_any_strides_and_batch_shape():
    x = torch.randn(3, 40, 5, device=DEVICE).transpose(1, 2)  # (3, 5, 40), not contiguous
    mask = (torch.rand(1, 1, 40, device=DEVICE) > 0.2).expand(3, 5, 40)
    for path in PATHS.values():
        out, top = transform_triton(x, mask, "square_gap", **path)
        assert out.shape == x.shape and top.shape == (3, 5, 1)
        assert_transform_matches(out.cpu(), top.cpu(), x.cpu(), mask.cpu(), "square_gap")


@pytest.mark.parametrize(
    "batch",
    [(2, 1, 1), (1, 3, 5), (2, 1, 5)],
    ids=["key padding", "per head and row", "three strides"],
)
def test_masks_broadcast_over_rows(batch):
    # read in place where the mask's rows take two strides at most, from a copy beyond
    x = torch.randn(2, 3, 5, 40, device=DEVICE)
    mask = torch.rand(*batch, 40, device=DEVICE) > 0.3
    full = mask.expand(x.shape)
    for path in PATHS.values():
        for kind in KINDS:
            out, top = transform_triton(x, mask, kind, **path)
            assert_transform_matches(out.cpu(), top.cpu(), x.cpu(), full.cpu(), kind)
    for kind in PROJECTED:
        torch.testing.assert_close(
            project_transformed_triton(x, mask, kind, 0.4),
            project_transformed_triton(x, full.contiguous(), kind, 0.4),
            rtol=0, atol=0,
        )  # fmt: skip


def test_empty_inputs_launch_nothing():
    for shape in ((0, 5), (3, 0), (2, 0, 4)):
        out, top = transform_triton(torch.empty(shape, device=DEVICE), None, "square_gap")
        assert out.shape == shape and top.shape == (*shape[:-1], 1)
        assert bool((top == 1).all())


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        transform_triton(torch.randn(2, 3, device=DEVICE), None, "cube_gap")


@pytest.mark.parametrize(
    "mapping", [sg.sparsegen_exp, sg.sparsegen_sq], ids=["exp", "sq"]
)  # fmt: skip
def test_the_mappings_take_the_kernel_and_its_gradient(mapping):
    # algorithm="triton": the transform is this kernel (with _ops' derivative), the
    # projection Triton's; both equal the torch path's outputs and gradients in float64
    x = torch.randn(4, 9, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert _ops.transform_rows(x.detach(), None, "exp_gap", "triton") is not None
    lam = 0.3
    fused = mapping(x, lam=lam, algorithm="triton")
    torch_path = mapping(x, lam=lam, algorithm="sort")
    torch.testing.assert_close(fused, torch_path)
    weights = torch.randn_like(fused)
    (grad,) = torch.autograd.grad((fused * weights).sum(), x)
    (expected,) = torch.autograd.grad((torch_path * weights).sum(), x)
    torch.testing.assert_close(grad, expected)
    assert torch.autograd.gradcheck(lambda t: mapping(t, lam=lam, algorithm="triton"), (x,))


def test_sum_normalization_plus_plus_takes_the_kernel():
    x = torch.randn(5, 11, dtype=torch.float64, device=DEVICE)
    fused = sg.sum_normalization_pp(x, algorithm="triton")
    torch.testing.assert_close(fused, sg.sum_normalization_pp(x, algorithm="sort"))
    assert math.isclose(float(fused.sum(-1).min()), 1.0, rel_tol=1e-12)


def _derivative_reference(saved, keep, grad, top, kind):
    """``grad · ∂gap/∂z`` in float64 by the formulas: ``e^{z−top}`` (the gap plus 1) or
    ``2z/top²``; 0 at an infinite gap or score beside a finite ``grad``, at masked entries."""
    s, g, t = saved.double(), grad.double(), top.double()
    dropped = s.isinf() & g.isfinite()
    if kind == "exp_gap":
        return torch.where(dropped & (s > 0), 0.0, g * (s + 1))
    dropped = dropped if keep is None else dropped | ~keep
    return torch.where(dropped, 0.0, g * 2 * s / t**2)


@pytest.mark.parametrize("k, chunk", [(7, 4096), (37, 4096), (37, 16)],
                         ids=["short", "block of rows", "chunks of a row"])  # fmt: skip
@pytest.mark.parametrize("dtype", TOLERANCE, ids=str)
def test_the_derivative_kernel_matches_the_formulas_and_the_cpu_kernel(dtype, k, chunk):
    # one pass where torch's formulas take six on a GPU; float32 and float64 equal the
    # numba kernel's bit for bit (the same roundings), on special rows too
    x, mask = transform_inputs(dtype, k)
    x, mask = x.to(DEVICE), mask.to(DEVICE)
    grad = torch.randn(x.shape, dtype=compute_dtype(dtype), device=DEVICE)
    grad[0, 0] = math.nan
    for keep in (None, mask):
        for kind in ("exp_gap", "square_gap"):
            gap, top = transform_triton(x, keep, kind)
            saved = gap if kind == "exp_gap" else x
            got = transform_backward_triton(saved, keep, grad, top, kind, chunk=chunk)
            assert got.dtype == compute_dtype(dtype)
            expected = _derivative_reference(saved, keep, grad, top, kind)
            torch.testing.assert_close(got.double(), expected, equal_nan=True,
                                       **TOLERANCE[dtype])  # fmt: skip
            if dtype in (torch.float32, torch.float64):
                numba = transform_backward_compiled(saved.cpu(), _cpu(keep), grad.cpu(),
                                                    top.cpu(), kind)  # fmt: skip
                torch.testing.assert_close(got.cpu(), numba, equal_nan=True, rtol=0, atol=0)


def test_the_derivative_kernel_reads_any_strides():
    x = torch.randn(3, 40, 5, device=DEVICE).transpose(1, 2)  # (3, 5, 40), not contiguous
    mask = (torch.rand(1, 1, 40, device=DEVICE) > 0.2).expand(3, 5, 40)
    grad = torch.randn(5, 3, 40, device=DEVICE).transpose(0, 1)  # another layout
    for kind in ("exp_gap", "square_gap"):
        gap, top = transform_triton(x, mask, kind)
        saved = gap if kind == "exp_gap" else x
        for chunk in (4096, 16):
            got = transform_backward_triton(saved, mask, grad, top, kind, chunk=chunk)
            expected = _derivative_reference(saved, mask, grad, top, kind)
            torch.testing.assert_close(got.double(), expected)
    assert (
        transform_backward_triton(x[:, :0], None, grad[:, :0], top[:, :0], "exp_gap").numel() == 0
    )


# ---------------------------------------------------------------- projected from the scores

PROJECTED = {"exp_gap": sg.sparsegen_exp, "square_gap": sg.sparsegen_sq}


@pytest.mark.parametrize("dtype", TOLERANCE, ids=str)
@pytest.mark.parametrize("kind", PROJECTED)
def test_projection_from_the_scores_matches_the_float64_mapping(kind, dtype):
    # Without a gradient to record, sparsegen-exp's and -sq's rows on chip are projected
    # straight from the scores (the gaps never written); the float64 mapping by sort, which
    # transforms then projects, is the reference: outputs, thresholds, supports, special rows.
    x, mask = transform_inputs(dtype, 37)
    x, mask = x.to(DEVICE), mask.to(DEVICE)
    mapping = PROJECTED[kind]
    per_row = torch.linspace(-0.5, 0.8, 8, device=DEVICE)[:, None]
    for keep, lam in ((None, 0.3), (mask, 0.3), (mask, per_row.to(dtype))):
        assert _ops.project_transformed_rows(x, keep, kind, lam, "triton") is not None
        got = mapping(x, lam=lam, mask=keep, algorithm="triton", return_info=True)
        lam64 = lam if isinstance(lam, float) else lam.double()
        expected = mapping(x.double(), lam=lam64, mask=keep, algorithm="sort", return_info=True)
        assert got.output.dtype == dtype
        tolerance = {"atol": 1e-6, "rtol": 0} if not TOLERANCE[dtype] else TOLERANCE[dtype]
        torch.testing.assert_close(got.output.double(), expected.output, equal_nan=True,
                                   **tolerance)  # fmt: skip
        if dtype in (torch.float32, torch.float64):  # (halves may round a tie apart)
            assert torch.equal(got.support_size, expected.support_size)


def test_projection_from_the_scores_leaves_gradients_and_long_rows_to_the_composition():
    # A gradient to λ with half scores (whose output's digits would not give its moment),
    # or no path to recompute for double backward: the transform, then the projection
    x = torch.randn(3, 40, dtype=torch.float64, device=DEVICE)
    unfused = sg.sparsegen_exp
    lam = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert _ops.project_transformed_rows(x, None, "exp_gap", lam, "triton", unfused) is not None
    half = x.to(torch.bfloat16)
    assert _ops.project_transformed_rows(half, None, "exp_gap", lam, "triton", unfused) is None
    assert _ops.project_transformed_rows(x.requires_grad_(), None, "exp_gap", 0.3, "triton") is None
    assert _ops.project_transformed_rows(x, None, "exp_gap", 0.3, "triton", unfused) is not None
    assert _ops.project_transformed_rows(x.detach(), None, "exp_gap", 0.3, "sort") is None
    assert project_transformed_triton(x.detach(), None, "exp_gap", 0.3, max_short_k=32) is None
    assert project_transformed_triton(x.detach(), None, "ratio", 0.3) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", PROJECTED)
def test_projection_from_the_scores_takes_the_scores_gradient_in_one_vjp_launch(
    kind, dtype, monkeypatch
):
    # With a gradient to the scores only (a float or a fixed per-row λ), the rows on chip
    # are still projected from the scores, and the backward is the VJP through the
    # transform's derivative: against the float64 mapping by sort, special rows included
    # (half scores too, computed in float32 and rounded)
    x, mask = transform_inputs(dtype, 37)
    x, mask = x.to(DEVICE), mask.to(DEVICE)
    g = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    mapping = PROJECTED[kind]
    per_row = torch.linspace(-0.5, 0.8, 8, device=DEVICE)[:, None]
    cases = ((None, 0.3), (mask, 0.3), (mask, per_row))
    expected = []
    for keep, lam in cases:
        z64 = x.double().requires_grad_()
        out = mapping(z64, lam=lam if isinstance(lam, float) else lam.double(), mask=keep,
                      algorithm="sort")  # fmt: skip
        expected.append((out, *torch.autograd.grad(out, z64, g.to(DEVICE))))
    from sparsegen import _triton_projection

    vjp = _triton_projection.vjp_triton
    calls = []
    monkeypatch.setattr(_ops._TransformFunction, "apply", lambda *a: pytest.fail("unfused"))
    monkeypatch.setattr(
        _triton_projection, "vjp_triton", lambda *a, **kw: calls.append(kw) or vjp(*a, **kw)
    )
    for (keep, lam), (out64, grad64) in zip(cases, expected, strict=True):
        z = x.clone().requires_grad_()
        out = mapping(z, lam=lam if isinstance(lam, float) else lam.to(dtype), mask=keep,
                      algorithm="triton")  # fmt: skip
        (grad,) = torch.autograd.grad(out, z, g.to(DEVICE, dtype))
        tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
        rows = list(range(8))
        if dtype == torch.bfloat16:
            tolerance = {"atol": 8e-3, "rtol": 8e-3}
            # row 5's maxima, tied at 7008, share a scale capped at float32's largest, not
            # float64's: the gradient is off by the cap there, as documented
            rows.remove(5)
        torch.testing.assert_close(out.double(), out64, equal_nan=True, **tolerance)
        torch.testing.assert_close(grad[rows].double(), grad64[rows], equal_nan=True, **tolerance)
    assert len(calls) == len(cases) and all(call["transform"] is not None for call in calls)


LEARNT_LAMS = {  # λ for scores of shape (4, 3, 30)
    "one a row": torch.linspace(-1.5, 0.9, 12).reshape(4, 3, 1),
    "one a head, shared by the batch": torch.tensor([0.4, -0.7, 0.95]).reshape(1, 3, 1),
    "one for all": torch.tensor(0.6),
}


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", list(LEARNT_LAMS))
@pytest.mark.parametrize("kind", PROJECTED)
def test_a_learnt_lam_is_differentiated_by_the_same_vjp_launch(kind, name, masked, monkeypatch):
    # projected from the scores with a learnt λ too: the VJP's moment c ∂L/∂c gives λ's
    # gradient, moment/(1 − λ) (∂c/∂λ = c/(1 − λ)); against the float64 mapping by sort
    from sparsegen import _triton_projection

    # (scores close enough for supports of several entries: a λ's gradient that is not 0)
    x = torch.randn(4, 3, 30, generator=torch.Generator().manual_seed(21)) * 0.5
    g = torch.randn(4, 3, 30, generator=torch.Generator().manual_seed(22))
    x, g = x.to(DEVICE), g.to(DEVICE)
    mask = x > -0.3 if masked else None
    mapping = PROJECTED[kind]
    z64, lam64 = x.double().requires_grad_(), LEARNT_LAMS[name].double().requires_grad_()
    reference = mapping(z64, lam=lam64, mask=mask, algorithm="sort")
    expected = torch.autograd.grad(reference, (z64, lam64), g.double())
    monkeypatch.setattr(_ops._TransformFunction, "apply", lambda *a: pytest.fail("unfused"))
    vjp, calls = _triton_projection.scaled_vjp_triton, []
    monkeypatch.setattr(
        _triton_projection, "scaled_vjp_triton",
        lambda *a, **kw: calls.append(kw["transform"] is not None) or vjp(*a, **kw),
    )  # fmt: skip
    z, lam = x.clone().requires_grad_(), LEARNT_LAMS[name].to(DEVICE).requires_grad_()
    out = mapping(z, lam=lam, mask=mask, algorithm="triton")
    got = torch.autograd.grad(out, (z, lam), g)
    assert calls == [True]
    torch.testing.assert_close(out.double(), reference.detach(), atol=2e-6, rtol=0)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=2e-5)
    assert got[1].abs().max() > 0


@pytest.mark.parametrize("kind", PROJECTED)
def test_a_learnt_lam_s_double_backward_recomputes_at_the_kept_scores_and_lam(kind):
    # recorded, the backward differentiates the transform, then the projection, at the kept
    # scores and λ: the kernel's gradients, and second derivatives gradgradcheck checks
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    lam = torch.tensor([[0.2], [-0.5], [0.7]], dtype=torch.float64)
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    inputs = (x.to(DEVICE).requires_grad_(), lam.to(DEVICE).requires_grad_())

    def mapped(z, lam):
        return PROJECTED[kind](z, lam=lam, algorithm="triton")

    recorded = torch.autograd.grad(mapped(*inputs), inputs, g.to(DEVICE), create_graph=True)
    by_kernel = torch.autograd.grad(mapped(*inputs), inputs, g.to(DEVICE))
    for a, b in zip(recorded, by_kernel, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradgradcheck(mapped, inputs)


@pytest.mark.parametrize("kind", PROJECTED)
def test_projection_from_the_scores_differentiates_twice(kind):
    # Double backward recomputes the transform, then the projection, at the kept scores:
    # the second derivative is the float64 sort path's
    x = torch.randn(4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weights = torch.randn(4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    results = []
    for algorithm in ("triton", "sort"):
        z = x.to(DEVICE).requires_grad_()
        out = PROJECTED[kind](z, lam=0.2, algorithm=algorithm)
        (grad,) = torch.autograd.grad((out * weights.to(DEVICE)).sum(), z, create_graph=True)
        results.append(torch.autograd.grad((grad * grad).sum(), z)[0])
    torch.testing.assert_close(results[0], results[1])
    assert results[1].abs().max() > 0


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.floats(-30, 30) | st.sampled_from([-math.inf, math.inf]), min_size=1,
                 max_size=9),
        min_size=1, max_size=4,
    ).filter(lambda rows: len({len(row) for row in rows}) == 1),
    lam=st.floats(-2.0, 0.9),
    kind=st.sampled_from(list(PROJECTED)),
)  # fmt: skip
def test_projection_from_the_scores_is_the_float64_mapping_for_any_rows(rows, lam, kind):
    # Any scores, ±inf included: the fused float64 projection is the sort path's, and a
    # distribution (or a row of the special-value rules).
    x = torch.tensor(rows, dtype=torch.float64, device=DEVICE)
    got = PROJECTED[kind](x, lam=lam, algorithm="triton")
    expected = PROJECTED[kind](x, lam=lam, algorithm="sort")
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12, equal_nan=True)
    assert bool((got >= 0).all())
