"""The Triton projection and its VJP (sparsegen._triton_projection) against the float64
references of tests/reference.py, against project_torch/vjp_torch in float64, and against
values worked out by hand for the special rows and ties.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1,
set before triton is imported), so the sizes here are small. Every forward test runs rows
held on chip a block at a time ("short") and rows split into chunks across programs
("split"), most also the split path's candidate overflow ("overflow"), forced at small K by
lowering the launcher's limits; every backward test runs rows on chip and rows split into
chunks ("split").
"""

import functools
import math
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from host_reads import HostReads, checked_as_on_a_device, refuse_host_reads
from reference import (
    scaled_sparsemax_reference,
    scaled_vjp_cases,
    scaled_vjp_reference,
    sparsemax_bisect,
)

import sparsegen as sg
from sparsegen import _ops
from sparsegen._projection import ConeScale, project_torch, vjp_compiled, vjp_torch
from sparsegen._triton_projection import (
    cone_vjp_triton,
    project_triton,
    scaled_vjp_triton,
    vjp_triton,
)

inf, nan = math.inf, math.nan
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
# Absolute tolerance on outputs in [0, 1] against float64 (of the dtype-rounded input):
# the kernel computes in float32, so half types are off by their output's rounding.
ATOL = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-12}
# The forward's paths: rows on chip ("short"); rows split into chunks of 64 across programs,
# forced at small K by lowering the launcher's limits (K = 300 takes 5 chunks), with room
# for every candidate ("split") or one slot a row, so that a row of more than one candidate
# overflows into the streaming Newton fallback ("overflow"). The interpreter runs the split
# path's programs one by one, so the two largest tests leave "overflow" to the others.
SPLIT = {"max_short_k": 0, "chunk": 64}
PATHS = {
    "short": {},
    "split": {**SPLIT, "candidates": 4096},
    "overflow": {**SPLIT, "candidates": 1},
}
MAIN_PATHS = ["short", "split"]
# The backward's: rows on chip, or split into chunks of 32 across programs.
VJP_PATHS = {"short": {}, "split": {"max_short_k": 0, "chunk": 32}}
KS = [1, 2, 7, 33, 300]
# The interpreter runs tl.sum/tl.max as NumPy reductions, which warn about the inf and NaN
# of the special rows that these tests feed on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in reduce:RuntimeWarning")


def _project(z, scale=None, cone=None, mask=None, path="short", **kwargs):
    return project_triton(z, scale, cone, mask=mask, **PATHS[path], **kwargs)


def _vjp(output, support, grad, scale, path):
    return vjp_triton(output, support, grad, scale, **VJP_PATHS[path])


def _np(t):
    return t.detach().cpu().double().numpy()


def _masked_reference(z, scale, keep):
    """sparsemax(scale · z) per row over the kept finite entries, 0 elsewhere (float64)."""
    z, scale, keep = np.asarray(z, float), np.asarray(scale, float), np.asarray(keep)
    out = np.zeros_like(z)
    for r in np.ndindex(z.shape[:-1]):
        kept = keep[r] & np.isfinite(z[r])
        if kept.any():
            out[r][kept] = sparsemax_bisect(z[r][kept] * scale[r].reshape(()))
    return out


def _check_invariants(z, out, tau, support, scale, atol):
    """support counts the positive outputs; a finite row sums to 1; the returned τ gives
    the output back: clamp(c·z − τ, 0) == output."""
    assert support.dtype == torch.int64 and support.shape == z.shape[:-1]
    assert torch.equal(support, (out > 0).sum(-1))
    out64, z64 = _np(out), _np(z)
    c = (
        np.ones((*z.shape[:-1], 1))
        if scale is None
        else np.broadcast_to(_np(scale), (*tau.shape, 1))
    )
    finite = np.isfinite(out64).all(-1)
    np.testing.assert_allclose(out64[finite].sum(-1), 1.0, atol=10 * atol + 1e-12)
    scaled = np.where(np.isneginf(z64), -inf, c * np.where(np.isneginf(z64), 0, z64))
    rebuilt = np.clip(scaled - _np(tau)[..., None], 0, None)
    rows = finite & np.isfinite(_np(tau))
    tau_atol = 20 * atol * np.maximum(1, np.abs(_np(tau)))[rows][..., None]
    assert np.all(np.abs(rebuilt[rows] - out64[rows]) <= tau_atol)


@pytest.mark.parametrize("path", MAIN_PATHS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_forward_against_float64_references(path, k, dtype):
    dtype = DTYPES[dtype]
    g = torch.Generator().manual_seed(k)
    z = (torch.randn(3, 4, k, generator=g) * 2).to(dtype).to(DEVICE)
    out, tau, support, computed = _project(z, path=path)
    assert out.dtype == dtype and out.shape == z.shape and computed is None
    assert tau.dtype == dtype and tau.shape == z.shape[:-1]
    atol = ATOL[dtype]
    expected = sparsemax_bisect(_np(z))
    np.testing.assert_allclose(_np(out), expected, atol=atol, rtol=0)
    torch_out, torch_tau, torch_support, _ = project_torch(z.double(), None, None, "sort")
    np.testing.assert_allclose(_np(out), _np(torch_out), atol=atol, rtol=0)
    np.testing.assert_allclose(
        _np(tau), _np(torch_tau), atol=4 * atol * (1 + 4 * abs(_np(z)).max())
    )
    if dtype in (torch.float32, torch.float64):  # supports agree away from rounding at τ
        assert torch.equal(support.cpu(), torch_support.cpu())
    _check_invariants(z, out, tau, support, None, atol)


@pytest.mark.parametrize("path", MAIN_PATHS)
def test_three_dimensional_transposed_and_strided_inputs(path):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(5, 3, 9, generator=g).to(DEVICE)
    for z in (base.transpose(0, 2), base[..., ::2], base.permute(2, 0, 1)[1:]):
        assert not z.is_contiguous()
        out, tau, support, _ = _project(z, path=path)
        np.testing.assert_allclose(_np(out), sparsemax_bisect(_np(z)), atol=2e-6, rtol=0)
        _check_invariants(z, out, tau, support, None, 2e-6)
        # a mask and a scale broadcast along the batch
        mask = torch.ones(z.shape[-1], dtype=torch.bool, device=DEVICE)
        mask[1] = False
        scale = torch.full((*z.shape[-2:-1], 1), 2.5, device=DEVICE)
        out, tau, support, _ = _project(z, scale=scale, mask=mask, path=path)
        expected = _masked_reference(
            _np(z), np.full(z.shape[:-1], 2.5), _np(mask.expand(z.shape)) > 0
        )
        np.testing.assert_allclose(_np(out), expected, atol=1e-5, rtol=0)
        assert torch.all(out[..., 1] == 0)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_given_scale_with_zero_and_inf(path, dtype):
    dtype = DTYPES[dtype]
    g = torch.Generator().manual_seed(2)
    z = torch.randn(6, 11, generator=g).to(dtype)
    z[2, 4] = -inf  # stays -inf (output 0) under every scale, 0 included
    z[3, :3] = -inf
    scale = torch.tensor([0.5, 3.0, 0.0, 0.0, 40.0, inf], dtype=dtype)[:, None]
    out, tau, support, _ = _project(z.to(DEVICE), scale=scale.to(DEVICE), path=path)
    z64, c64 = _np(z), _np(scale)
    expected = _masked_reference(z64, c64[:, 0].clip(max=1e300), np.ones(z.shape, bool))
    # scale 0: the finite entries share the mass; inf (capped): the maximum takes it all
    expected[2] = np.where(np.isfinite(z64[2]), 1 / 10, 0)
    expected[3] = np.where(np.isfinite(z64[3]), 1 / 8, 0)
    expected[5] = (z64[5] == z64[5].max()).astype(float)
    atol = ATOL[dtype]
    np.testing.assert_allclose(_np(out), expected, atol=atol, rtol=0)
    torch_out, torch_tau, _, _ = project_torch(z.double(), scale.double(), None, "sort")
    np.testing.assert_allclose(_np(out), _np(torch_out), atol=atol, rtol=0)
    assert torch.equal(support.cpu(), (out > 0).sum(-1).cpu())
    np.testing.assert_allclose(_np(tau)[:5], _np(torch_tau)[:5], atol=50 * atol, rtol=0)
    _check_invariants(z[:5], out[:5], tau[:5], support[:5], scale[:5], atol)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("scale_kind", ["given", "cone", "hourglass"])
def test_half_scores_with_scales_beyond_the_half_range(path, scale_kind):
    # float16 scores near 0 differ by 1e-7: scales past float16's largest value (65504),
    # a given 1e20 or the cones' α at a tiny sum and q, still separate them, since the
    # kernels compute in float32: neither the scale's cap nor the cone's computed scale is
    # float16's (they made every such row nearly uniform).
    g = torch.Generator().manual_seed(7)
    z = (torch.randn(4, 17, generator=g) * 1e-6).half()
    scale = cone = None
    if scale_kind == "given":
        scale = torch.tensor([1e20, 1e6, 7e4, 3.0])[:, None]
    else:
        cone = ConeScale(1e-30, mirror=scale_kind == "hourglass")
    out, _, support, computed = _project(z.to(DEVICE), scale, cone, path=path)
    if cone is None:
        c64 = _np(scale)
    else:
        c64, _ = _cone_reference(_np(z), 1e-30, cone.mirror, np.ones(z.shape, bool))
        c64 = c64[:, None]
        assert computed.dtype == torch.float32
        np.testing.assert_allclose(_np(computed), c64, rtol=1e-6)
    expected = _masked_reference(_np(z), c64, np.ones(z.shape, bool))
    np.testing.assert_allclose(_np(out), expected, atol=ATOL[torch.float16], rtol=0)
    assert (support.cpu()[:2] < 17).all()  # the scale separates the scores
    torch_out = project_torch(z, scale, cone, "sort")[0]  # torch's code computes so too
    np.testing.assert_allclose(_np(torch_out), expected, atol=ATOL[torch.float16], rtol=0)


def _cone_reference(z, q, mirror, keep):
    """α over the kept entries (1 for none; NaN where sparsecone's denominator is ≤ 0), and
    sparsemax(α z) over the kept entries, NaN at the kept entries of a NaN-α row (float64)."""
    total = np.where(keep, z, 0).sum(-1)
    k = keep.sum(-1)
    s = np.abs(total) if mirror else total
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = (1 + k * q) / (s + k * q)
    if not mirror:
        alpha = np.where(s + k * q > 0, alpha, nan)
    alpha = np.where(k == 0, 1.0, alpha)
    out = _masked_reference(z, np.nan_to_num(alpha), keep)
    out[np.isnan(alpha)] = np.where(keep[np.isnan(alpha)], nan, 0.0)
    return alpha, out


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("q_kind", ["float", "per-row"])
@pytest.mark.parametrize("masked", [False, True])
def test_cone_scale(path, mirror, q_kind, masked):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 3, 13, generator=g)
    z[1, 2] = -4 - torch.rand(13, generator=g)  # Σz + Kq < 0: sparsecone's α is NaN
    keep = torch.rand(z.shape, generator=g) > 0.3
    keep[0, 1] = False  # a fully masked row: scale 1, zeros, τ = -inf, support 0
    if not masked:
        keep = torch.ones_like(keep)
    q = 0.5 if q_kind == "float" else torch.tensor([[0.5], [2.0], [0.1]])
    q_rows = np.broadcast_to(np.asarray(q if q_kind == "float" else _np(q)[:, 0]), (2, 3))
    mask = keep.to(DEVICE) if masked else None
    cone = ConeScale(q if q_kind == "float" else q.to(DEVICE), mirror)
    factor = torch.empty(2, 3, 1, device=DEVICE)
    out, tau, support, computed = _project(
        z.to(DEVICE), cone=cone, mask=mask, path=path, factor=factor
    )
    alpha, expected = _cone_reference(_np(z), q_rows, mirror, _np(keep) > 0)
    assert computed.shape == (2, 3, 1) and computed.dtype == torch.float32
    np.testing.assert_allclose(_np(computed)[..., 0], alpha, rtol=1e-6, equal_nan=True)
    # what the backward takes of the scores: ∂α/∂z_i ÷ α² = −1/(1 + Kq), times the sign of
    # Σz for the mirror (0 for the fully masked row's empty sum)
    sums, kept = np.where(_np(keep) > 0, _np(z), 0).sum(-1), (_np(keep) > 0).sum(-1)
    expected_factor = -(np.sign(sums) if mirror else 1.0) / (1 + kept * q_rows)
    np.testing.assert_allclose(_np(factor)[..., 0], expected_factor, rtol=1e-6)
    np.testing.assert_allclose(_np(out), expected, atol=2e-6, rtol=0, equal_nan=True)
    torch_result = project_torch(
        z.double(),
        None,
        cone._replace(q=q if q_kind == "float" else q.double()),
        "sort",
        keep if masked else None,
    )
    np.testing.assert_allclose(_np(out), _np(torch_result[0]), atol=2e-6, rtol=0, equal_nan=True)
    np.testing.assert_allclose(_np(tau), _np(torch_result[1]), atol=2e-5, rtol=1e-6, equal_nan=True)
    assert torch.equal(support.cpu(), (out > 0).sum(-1).cpu())
    if not mirror:  # the NaN row: NaN at its kept entries, 0 at the masked ones
        assert torch.isnan(tau[1, 2]) and support[1, 2] == 0
    if masked:
        assert computed[0, 1, 0] == 1 and torch.all(out[0, 1] == 0)
        assert tau[0, 1] == -inf and support[0, 1] == 0
    if q_kind == "float" and not masked:  # the repository's own reference for α
        rows = np.isfinite(alpha)
        np.testing.assert_allclose(
            _np(out)[rows], scaled_sparsemax_reference(_np(z), q, mirror)[rows], atol=2e-6
        )


@pytest.mark.parametrize("path", list(PATHS))
def test_cone_scale_of_float64_sums_that_overflow(path):
    z = torch.tensor(
        [[1.7e308, 1.1e308, 1.6e308, 1e308], [3e38, 2e38, 3.2e38, 1e38]], dtype=torch.float64
    )
    cone = ConeScale(2.0, False)
    out, tau, support, computed = _project(z, cone=cone, path=path)
    torch_out, torch_tau, torch_support, torch_scale = project_torch(z, None, cone, "sort")
    assert torch.all(computed > 0) and torch.all(torch.isfinite(computed))
    torch.testing.assert_close(computed, torch_scale, rtol=1e-12, atol=0)
    torch.testing.assert_close(out, torch_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(tau, torch_tau, rtol=1e-12, atol=1e-12)
    assert torch.equal(support, torch_support)


@pytest.mark.parametrize("path", MAIN_PATHS)
@pytest.mark.parametrize("mirror", [False, True])
def test_a_float_q_reaches_the_kernel_with_all_its_float64_digits(path, mirror):
    # (passed as its bits: a float argument would reach the kernel as float32, and 1/3
    # there moves α by about 1e-8)
    z = torch.rand(3, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    for q in (1 / 3, 0.1, 1e-300, 7e300, 5e-324):
        cone = ConeScale(q, mirror)
        computed = _project(z.to(DEVICE), cone=cone, path=path)[3]
        expected = project_torch(z, None, cone, "sort")[3]
        torch.testing.assert_close(computed.cpu(), expected, rtol=1e-15, atol=0)


@pytest.mark.parametrize("path", MAIN_PATHS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_a_number_scale_reaches_the_kernels_as_the_tensor_of_it_does(dtype, path):
    # (passed as its float64 bits, and rounded to the compute dtype in the kernel, as the
    # tensor filled for it had been)
    dtype = DTYPES[dtype]
    z = torch.randn(5, 300, generator=torch.Generator().manual_seed(9)).to(DEVICE, dtype)
    for number in (1 / 3, 7.0, 1e30):
        tensor = torch.tensor(number, dtype=torch.promote_types(dtype, torch.float32))
        expected = _project(z, scale=tensor.to(DEVICE), path=path)
        got = _project(z, scale=number, path=path)
        for a, b in zip(got[:3], expected[:3], strict=True):
            assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
        if dtype != torch.bfloat16:
            grad = torch.randn(z.shape, generator=torch.Generator().manual_seed(1)).to(z)
            by_number = _vjp(got[0], None, grad, number, path)
            assert torch.equal(by_number, _vjp(got[0], None, grad, tensor.to(DEVICE), path))


SPECIAL_ROWS = [
    # (scores, scale, expected output, expected τ)
    ([1.0, nan, 0.0, 2.0, 0.5], 1.0, [nan] * 5, nan),
    ([inf, 0.0, 1.0, 2.0, 3.0], 1.0, [1, 0, 0, 0, 0], inf),
    ([inf, 0.0, inf, -inf, inf], 1.0, [1 / 3, 0, 1 / 3, 0, 1 / 3], inf),
    ([inf, nan, inf, 0.0, 0.0], 1.0, [nan] * 5, nan),
    ([-inf] * 5, 1.0, [0] * 5, -inf),
    ([1.0, -inf, 0.0, 1.5, -inf], 1.0, [0.25, 0, 0, 0.75, 0], 0.75),
    ([0.0, 1.0, 2.0, 3.0, 4.0], nan, [nan] * 5, nan),  # a NaN scale: a NaN row
    ([0.0, inf, 2.0, 3.0, 4.0], nan, [0, 1, 0, 0, 0], inf),  # unless +inf scores share
    ([-inf] * 5, nan, [0] * 5, -inf),  # or there is nothing to share
]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_special_rows(path, dtype):
    dtype = DTYPES[dtype]
    z = torch.tensor([row for row, *_ in SPECIAL_ROWS], dtype=dtype, device=DEVICE)
    scale = torch.tensor([[s] for _, s, *_ in SPECIAL_ROWS], dtype=dtype, device=DEVICE)
    expected = np.array([e for *_, e, _ in SPECIAL_ROWS], dtype=float)
    expected_tau = np.array([t for *_, t in SPECIAL_ROWS])
    for s, rows in ((scale, slice(None)), (None, slice(0, 6))):
        out, tau, support, _ = _project(z[rows], scale=s, path=path)
        np.testing.assert_allclose(_np(out), expected[rows], atol=1e-3, equal_nan=True)
        np.testing.assert_allclose(_np(tau), expected_tau[rows], atol=1e-3, equal_nan=True)
        assert support.tolist() == np.nan_to_num(expected[rows] > 0).sum(-1).tolist()
    # a mask hides a NaN; in a NaN row the masked entries stay 0
    mask = torch.tensor(
        [[True, False, True, True, True], [False, True, True, True, True]], device=DEVICE
    )
    out, tau, support, _ = _project(z[[0, 0]], mask=mask, path=path)
    np.testing.assert_allclose(
        _np(out[0]),
        sparsemax_bisect(_np(z[0, [0, 2, 3, 4]]))[[0, 0, 1, 2, 3]] * [1, 0, 1, 1, 1],
        atol=1e-3,
    )
    assert torch.isnan(out[1, 1:]).all() and out[1, 0] == 0 and torch.isnan(tau[1])
    assert support.tolist() == [int((out[0] > 0).sum()), 0]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_ties_at_tau(path, dtype):
    dtype = DTYPES[dtype]
    rows = [
        ([1.0, 1.0, 0.0, 0.0], 1.0, [0.5, 0.5, 0, 0]),
        ([3.0, 3.0, 3.0, 3.0], 1.0, [0.25] * 4),
        ([1.0, 0.5, 0.5, 0.5], 2.0, [1, 0, 0, 0]),  # three entries exactly at τ = −1
        ([2.0, 1.5, 1.5, -1.0], 2.0, [1, 0, 0, 0]),
        ([0.5, 0.5, 0.25, 0.0], 4.0, [0.5, 0.5, 0, 0]),  # the third at τ
    ]
    z = torch.tensor([r for r, *_ in rows], dtype=dtype, device=DEVICE)
    scale = torch.tensor([[s] for _, s, _ in rows], dtype=dtype, device=DEVICE)
    out, tau, support, _ = _project(z, scale=scale, path=path)
    np.testing.assert_allclose(_np(out), np.array([e for *_, e in rows]), atol=0, rtol=0)
    assert support.tolist() == [2, 4, 1, 1, 2]
    torch.testing.assert_close(
        out.double().sum(-1), torch.ones(5, dtype=torch.float64, device=DEVICE)
    )
    # long flat rows: every entry at the maximum, and two levels
    flat = torch.full((2, 300), 0.7, dtype=dtype, device=DEVICE)
    flat[1, ::3] = 1.7
    out, tau, support, _ = _project(flat, path=path)
    assert support.tolist() == [300, 100]
    np.testing.assert_allclose(_np(tau), _np(flat.amax(-1)) - [1 / 300, 1 / 100], atol=ATOL[dtype])
    np.testing.assert_allclose(_np(out[0]), 1 / 300, rtol=ATOL[dtype] * 10)
    np.testing.assert_allclose(_np(out[1, ::3]), 1 / 100, rtol=ATOL[dtype] * 10)
    assert torch.all(out[1].reshape(100, 3)[:, 1:] == 0)


TIED_AT_TAU = {  # float32 rows whose rounding puts entries at τ (an audit's differential)
    "third at τ": [1.0, 2 / 3, 1 / 3, 0.0],
    "3,000 tied at τ": [0.6666666865348816, 0.0] + [-0.1666666567325592, -5.0, -5.0] * 3000,
    "support 4, 1, 4, …": [5 / 3, 2 / 3, 2 / 3, 2 / 3],
    "support 4, 1, 4, … and K odd": [5 / 3, 2 / 3, 2 / 3, 2 / 3, -10.0],
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("row", list(TIED_AT_TAU))
def test_entries_tied_at_tau_get_the_cpu_kernels_support(row, path):
    # A float32 sum of the gaps put τ an ulp below the tied entries, which stayed in the
    # support (3,000 ties: a support of 3,002 and a sum of 1.0002); a support that rounding
    # grows back (4, 1, 4, …) stopped the CPU kernel at its last step, which K's parity
    # chose. Both now sum in float64 and keep the τ of the last step that shrank the
    # support: the same output, support and gradient.
    z = torch.tensor([TIED_AT_TAU[row]], device=DEVICE)
    out, _, support, _ = _project(z, path=path)
    cpu = sg.sparsemax(z.cpu(), algorithm="compiled", return_info=True)
    assert support.tolist() == cpu.support_size.tolist()
    assert torch.equal(out.cpu(), cpu.output)
    assert abs(out.double().sum().item() - 1) < 1e-6
    g = torch.arange(z.shape[-1], dtype=torch.float32, device=DEVICE)[None] % 7
    torch.testing.assert_close(
        _vjp(out, support, g, None, "short" if path == "short" else "split").cpu(),
        vjp_compiled(cpu.output, cpu.support_size, g.cpu(), None),
    )


@pytest.mark.parametrize("path", list(PATHS))
def test_newton_runs_until_the_support_stops_changing(path):
    # Each Newton step from τ = −1 drops one entry: 10 steps for 10 entries, so a solver
    # that stops after a fixed few passes leaves τ measurably low.
    chain = [0.0, 0.0]
    while True:
        n, t = len(chain) + 1, (sum(chain) - 1) / len(chain)
        v = min(t, n * chain[-1] - (n - 1) * t) - 1e-6
        if v <= -1:
            break
        chain.append(v)
    y = np.array(chain)
    tau, support, steps = -1.0, None, 0
    while True:
        steps += 1
        above = y > tau
        if above.sum() == support:
            break
        support, tau = above.sum(), (y[above].sum() - 1) / above.sum()
    assert steps >= 10
    z = torch.tensor([chain + [-3.0] * 23, chain[::-1] + [-inf] * 23], dtype=torch.float64)
    out, tau, support, _ = _project(z.to(DEVICE), path=path)
    np.testing.assert_allclose(_np(out), sparsemax_bisect(_np(z)), atol=1e-12, rtol=0)
    np.testing.assert_allclose(_np(tau), [-0.5, -0.5], atol=1e-12, rtol=0)
    assert support.tolist() == [2, 2]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("path", list(PATHS))
def test_random_rows_with_special_values_against_project_torch(seed, path):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 40))
    z = np.round(rng.normal(size=(5, k)) * 3, 1)  # rounding makes ties
    specials = rng.random(z.shape)
    z[specials < 0.08] = -inf
    z[(specials > 0.97)] = inf
    z[specials > 0.995] = nan
    keep = rng.random(z.shape) > 0.2
    scale = rng.choice([0.0, 0.3, 1.0, 7.0], size=(5, 1))
    z32 = torch.tensor(z, dtype=torch.float32)
    keep_t, scale_t = torch.tensor(keep), torch.tensor(scale, dtype=torch.float32)
    out, tau, support, _ = _project(
        z32.to(DEVICE), scale_t.to(DEVICE), mask=keep_t.to(DEVICE), path=path
    )
    ref_out, ref_tau, _, _ = project_torch(z32.double(), scale_t.double(), None, "sort", keep_t)
    np.testing.assert_allclose(_np(out), _np(ref_out), atol=2e-6, rtol=0, equal_nan=True)
    np.testing.assert_allclose(_np(tau), _np(ref_tau), atol=2e-5, rtol=1e-6, equal_nan=True)
    assert torch.equal(support.cpu(), (out > 0).sum(-1).cpu())
    for mirror in (False, True):  # the cone's scale from the kept entries, as torch's
        cone = ConeScale(float(rng.uniform(0.1, 2.0)), mirror)
        out, tau, support, computed = _project(
            z32.to(DEVICE), cone=cone, mask=keep_t.to(DEVICE), path=path
        )
        ref = project_torch(z32.double(), None, cone, "sort", keep_t)
        np.testing.assert_allclose(_np(computed), _np(ref[3]), rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(_np(out), _np(ref[0]), atol=2e-6, rtol=0, equal_nan=True)


def _split(z, scale=None, cone=None, mask=None, candidates=4096):
    return project_triton(z, scale, cone, mask=mask, **SPLIT, candidates=candidates)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_split_candidate_overflow_falls_back_to_streaming_newton(dtype):
    dtype = DTYPES[dtype]
    g = torch.Generator().manual_seed(5)
    z = torch.rand(4, 300, generator=g) * 0.5  # every gap within 1/c of the maximum...
    z[3, 40:] -= 3.0  # ...but in the last row, where only the first 40 are candidates
    scale = torch.tensor([[1.0], [1.9], [0.0], [1.0]])
    z, scale = z.to(dtype).to(DEVICE), scale.to(dtype).to(DEVICE)
    ref_out, ref_tau, ref_support, _ = project_torch(z.double(), scale.double(), None, "sort")
    expected = _masked_reference(_np(z), _np(scale)[:, 0], np.ones(z.shape, bool))
    atol = ATOL[dtype]
    results = {}
    # 1 slot: every row overflows; 40: the last row fits exactly; 299: the last row fits,
    # the others overflow by one; None: the default, a quarter of the row (75)
    for candidates in (1, 40, 299, None):
        out, tau, support, _ = _split(z, scale, candidates=candidates)
        np.testing.assert_allclose(_np(out), expected, atol=atol, rtol=0)
        np.testing.assert_allclose(_np(out), _np(ref_out), atol=atol, rtol=0)
        np.testing.assert_allclose(_np(tau), _np(ref_tau), atol=20 * atol, rtol=0)
        assert torch.equal(support.cpu(), (out > 0).sum(-1).cpu())
        assert torch.equal(support.cpu(), ref_support.cpu())
        _check_invariants(z, out, tau, support, scale, atol)
        results[candidates] = out
    assert support[2] == 300 and torch.all(out[2] == out[2, 0])  # scale 0: all share
    for out in results.values():  # the fallback and the candidates agree to rounding
        np.testing.assert_allclose(_np(out), _np(results[1]), atol=atol, rtol=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_streaming_newton_starts_from_a_sampled_threshold_on_either_side(dtype, monkeypatch):
    # An overflowed (flat) row starts Newton from the step at τ estimated on 16 evenly
    # spaced entries (the CPU kernel's estimate), below τ whether the estimate was above
    # (the sample holds the row's high entries) or below (its low ones)
    from sparsegen import _kernels
    from sparsegen import _triton_projection as module

    monkeypatch.setattr(module, "FLAT_SAMPLE", 16)
    k, m = 300, 16
    sampled = np.arange(m) * k // m
    g = torch.Generator().manual_seed(11)
    z = torch.rand(5, k, generator=g, dtype=torch.float64) * 1e-3
    z[0] += torch.linspace(0.4, 0.5, k, dtype=torch.float64)
    z[0, sampled] += 0.1  # the estimate above τ, with entries between them
    z[1] += 0.5
    z[1, sampled] = 0.0  # below
    z[2] = torch.randn(k, generator=g, dtype=torch.float64) * 0.05
    z[3, sampled[::2]] += 0.3
    z[4] = torch.linspace(0, 0.9, k, dtype=torch.float64)
    rows, sides = z.numpy(), []
    expected = sparsemax_bisect(rows)
    for r in range(rows.shape[0]):
        gaps, support = rows[r] - rows[r].max(), expected[r] > 0
        exact = (gaps - expected[r])[support].mean()
        guess = _kernels._sampled_threshold(rows, r, rows[r].max(), 1.0, np.empty(m))
        sides.append(np.sign(guess - exact))
    assert sides[0] > 0 and sides[1] < 0, sides
    z = z.to(DTYPES[dtype]).to(DEVICE)
    atol = ATOL[z.dtype]
    for mask in (None, torch.rand(z.shape, generator=g) > 0.1):
        keep = np.ones(z.shape, bool) if mask is None else mask.numpy()
        m_dev = None if mask is None else mask.to(DEVICE)
        out, tau, support, _ = _split(z, mask=m_dev, candidates=1)  # every row overflows
        reference = _masked_reference(_np(z), np.ones(5), keep)
        np.testing.assert_allclose(_np(out), reference, atol=atol, rtol=0)
        assert torch.equal(support.cpu(), (out > 0).sum(-1).cpu())
        if mask is None:
            _check_invariants(z, out, tau, support, None, atol)


@pytest.mark.parametrize("candidates", [5, 4, None])
def test_split_candidates_from_several_chunks(candidates):
    # Five candidates, one in each chunk of 64 (the last one partial), the rest far below.
    z = torch.full((4, 300), -4.0, dtype=torch.float64)
    cols = [5, 70, 140, 200, 299]
    z[:, cols] = torch.tensor([0.2, 0.5, 0.1, 0.45, 0.3], dtype=torch.float64)
    z[1] = z[1].flip(0)
    z[2, 3] = -inf
    z[3, 64:] = -inf  # one candidate, in the first chunk
    scale = torch.tensor([[1.0], [1.0], [3.0], [1.0]], dtype=torch.float64)  # 4 candidates
    out, tau, support, _ = _split(z.to(DEVICE), scale.to(DEVICE), candidates=candidates)
    expected = sparsemax_bisect(_np(z) * _np(scale))
    np.testing.assert_allclose(_np(out), expected, atol=1e-12, rtol=0)
    ref_out, ref_tau, ref_support, _ = project_torch(z, scale, None, "sort")
    np.testing.assert_allclose(_np(out), _np(ref_out), atol=1e-12, rtol=0)
    np.testing.assert_allclose(_np(tau), _np(ref_tau), atol=1e-12, rtol=0)
    assert support.tolist() == ref_support.tolist() == [4, 4, 2, 1]
    assert torch.all(out[0, cols[:2] + cols[3:]] > 0) and torch.all(out[1, 299 - 140] == 0)


@pytest.mark.parametrize("candidates", [4096, 2])
def test_split_masked_and_special_rows_among_long_rows(candidates):
    g = torch.Generator().manual_seed(6)
    z = torch.randn(9, 300, generator=g, dtype=torch.float64) * 2
    keep = torch.rand(z.shape, generator=g) > 0.25
    z[1, 250] = nan  # a NaN row (in its fourth chunk)
    keep[1, 250] = True
    z[2, [3, 280]] = inf  # +inf scores share the mass
    keep[2, [3, 280]] = True
    z[3] = -inf  # nothing finite
    z[4, 100] = 50.0  # the maximum masked out, and a NaN hidden by the mask
    z[4, 200] = nan
    keep[4, [100, 200]] = False
    keep[5] = False  # a fully masked row
    keep[6, :290] = False  # ten kept entries, all in the last chunk
    z[7, 128:192] = z[7, 128:192].abs() + 9.0  # the candidates all in the third chunk
    scale = torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0, 1.0, 0.5, 1.0, nan], dtype=torch.float64)
    scale = scale[:, None]
    for mask in (None, keep):
        m = None if mask is None else mask.to(DEVICE)
        out, tau, support, _ = _split(z.to(DEVICE), scale.to(DEVICE), mask=m, candidates=candidates)
        ref_out, ref_tau, ref_support, _ = project_torch(z, scale, None, "sort", mask)
        np.testing.assert_allclose(_np(out), _np(ref_out), atol=1e-12, rtol=0, equal_nan=True)
        np.testing.assert_allclose(_np(tau), _np(ref_tau), atol=1e-12, rtol=0, equal_nan=True)
        assert torch.equal(support.cpu(), ref_support.cpu())
        for r in (1, 8):  # NaN rows: NaN at the kept entries
            assert torch.isnan(out[r]).sum() == (300 if mask is None else int(keep[r].sum()))
        assert out[2, 3] == out[2, 280] == 0.5 and tau[2] == inf
        assert torch.all(out[3] == 0) and tau[3] == -inf
        if mask is not None:
            assert torch.all(out[4, [100, 200]] == 0) and torch.isfinite(out[4]).all()
            assert torch.all(out[5] == 0) and tau[5] == -inf and support[5] == 0
            assert torch.all(out[6, :290] == 0) and out[6].sum() == pytest.approx(1, abs=1e-12)
            kept = _np(keep) > 0
            expected = _masked_reference(_np(z)[4:8], _np(scale)[4:8, 0], kept[4:8])
            np.testing.assert_allclose(_np(out)[4:8], expected, atol=1e-12, rtol=0)
        assert torch.all(out[7, :128] == 0) and torch.all(out[7, 192:] == 0)


@pytest.mark.parametrize("mirror", [False, True])
def test_split_cone_scale_of_long_rows_and_float64_sums_that_overflow(mirror):
    g = torch.Generator().manual_seed(7)
    z = torch.randn(3, 300, generator=g, dtype=torch.float64)
    z[1] = 1e306 * (1 + torch.rand(300, generator=g, dtype=torch.float64))  # Σz overflows
    z[2] = torch.rand(300, generator=g, dtype=torch.float64) * 1.7e308
    z[2, 7] = -math.inf  # (Σz = -inf, whatever order the others' partial sums overflow in)
    keep = torch.rand(z.shape, generator=g) > 0.2
    keep[2, 7] = True
    q = torch.tensor([[0.5], [2.0], [1e-3]], dtype=torch.float64)
    for mask in (None, keep):
        m = None if mask is None else mask.to(DEVICE)
        cone = ConeScale(q.to(DEVICE), mirror)
        out, tau, support, computed = _split(z.to(DEVICE), cone=cone, mask=m)
        ref_out, ref_tau, ref_support, ref_scale = project_torch(
            z, None, ConeScale(q, mirror), "sort", mask
        )
        assert torch.all(computed[1] > 0) and torch.all(torch.isfinite(computed[:2]))
        assert computed[2] == 0 if mirror else computed[2].isnan()  # α̂ → 0; α: its domain
        torch.testing.assert_close(computed.cpu(), ref_scale, rtol=1e-12, atol=0, equal_nan=True)
        torch.testing.assert_close(out.cpu(), ref_out, rtol=0, atol=1e-12, equal_nan=True)
        torch.testing.assert_close(tau.cpu(), ref_tau, rtol=1e-12, atol=1e-12, equal_nan=True)
        assert torch.equal(support.cpu(), ref_support)


def test_split_rows_of_more_chunks_than_a_block_of_partials(monkeypatch):
    from sparsegen import _triton_projection as module

    g = torch.Generator().manual_seed(8)
    z = torch.randn(2, 300, generator=g, dtype=torch.float64) * 3
    z[1] = 1e306 * (1 + torch.rand(300, generator=g, dtype=torch.float64))  # Σz overflows
    keep = torch.rand(z.shape, generator=g) > 0.2
    grad = torch.randn(2, 300, generator=g, dtype=torch.float64)
    cone = ConeScale(0.5, False)
    monkeypatch.setattr(module, "MAX_PART_BLOCK", 2)  # 5 chunks: 3 blocks of partials
    out, tau, support, computed = _split(z, cone=cone, mask=keep)
    ref_out, ref_tau, ref_support, ref_scale = project_torch(z, None, cone, "sort", keep)
    torch.testing.assert_close(computed, ref_scale, rtol=1e-12, atol=0)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(tau, ref_tau, rtol=1e-12, atol=1e-12)
    assert torch.equal(support, ref_support)
    flat = torch.randn(2, 300, generator=g, dtype=torch.float64) / 20
    output = torch.tensor(sparsemax_bisect(flat.numpy()))  # supports over every chunk
    assert all((output[:, i : i + 64] > 0).any(-1).all() for i in range(0, 300, 64))
    result = vjp_triton(output, None, grad, None, **SPLIT)
    np.testing.assert_allclose(_np(result), _vjp_reference(_np(output), _np(grad), 1.0), atol=1e-12)


def test_split_capacity():
    from sparsegen._triton_projection import MAX_CANDIDATES, _capacity

    assert _capacity(300, None) == 75 and _capacity(2, None) == 1
    assert _capacity(1 << 20, None) == MAX_CANDIDATES
    assert _capacity(300, 4096) == 300 and _capacity(300, 0) == 1


def test_short_rows_come_in_blocks_that_leave_no_processor_idle(monkeypatch):
    from sparsegen import _triton_projection as tp

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    # the interpreter runs programs one by one: blocks as large as the elements allow
    assert tp.processors(cpu) == 1
    assert tp._short_blocks(4096, 16, 4096, cpu) == (256, 16, 4)
    assert tp._short_blocks(3, 16, 4096, cpu) == (4, 16, 4)
    monkeypatch.setattr(tp, "processors", lambda device: 132)  # an H200's SMs
    # 4096 rows of 16: 16 rows a program (256 programs), not 256 (16 programs)
    assert tp._short_blocks(4096, 16, 4096, cuda) == (16, 16, 4)
    assert tp._short_blocks(1024, 512, 4096, cuda) == (4, 512, 4)
    assert tp._short_blocks(16384, 1024, 4096, cuda) == (4, 1024, 4)  # 4096 programs already
    assert tp._short_blocks(8192, 8192, 4096, cuda) == (1, 8192, 8)
    assert tp._short_blocks(64, 16384, 4096, cuda) == (1, 16384, 16)
    assert tp._short_blocks(3, 16, 4096, cuda) == (1, 16, 4)  # fewer rows than processors


HALF_MAPPINGS = {
    "sparsemax": lambda x, lam: sg.sparsemax(x, algorithm="triton"),
    "sparsegen_lin": lambda x, lam: sg.sparsegen_lin(x, lam=0.99999, algorithm="triton"),
    "tensor lam": lambda x, lam: sg.sparsegen_lin(x, lam=lam, algorithm="triton"),
    "fixed tensor lam": lambda x, lam: sg.sparsegen_lin(x, lam=lam.detach(), algorithm="triton"),
    "sparsecone": lambda x, lam: sg.sparsecone(x.abs(), q=0.5, algorithm="triton"),
    "sparsehourglass": lambda x, lam: sg.sparsehourglass(x, q=1e-3, algorithm="triton"),
    "tensor q": lambda x, lam: sg.sparsehourglass(x, q=lam + 1.5, algorithm="triton"),
    "sparsegen_exp": lambda x, lam: sg.sparsegen_exp(x, lam=lam, algorithm="triton"),
    "sparsegen_sq": lambda x, lam: sg.sparsegen_sq(x, lam=0.5, algorithm="triton"),
}


@pytest.mark.parametrize("name", HALF_MAPPINGS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_scores_reach_the_kernels_and_give_float32_s_result_rounded(name, dtype):
    # The mappings that project their scores directly send half scores to the kernels
    # as they are (no float32
    # copy in or out: test_cuda_routes checks that on CUDA), which compute in
    # float32: the float32 call's output, gradient and λ's gradient, rounded to the half
    # type once. (Triton's interpreter truncates to bfloat16, a GPU rounds to nearest:
    # one ulp apart.)
    dtype = DTYPES[dtype]
    g = torch.Generator().manual_seed(8)
    x = (torch.randn(5, 40, generator=g) * 2).to(dtype)
    x[1, :4] = x[1, 4]  # ties at the top
    upstream = torch.randn(5, 40, generator=g).to(dtype)
    lam = torch.linspace(-1.0, 0.9, 5)[:, None]
    results = []
    for scores in (x, x.float()):
        leaf, lam_leaf = scores.clone().requires_grad_(), lam.clone().requires_grad_()
        out = HALF_MAPPINGS[name](leaf.to(DEVICE), lam_leaf.to(DEVICE))
        (out * upstream.to(out.dtype).to(DEVICE)).sum().backward()
        results.append((out.cpu(), leaf.grad, lam_leaf.grad))
    with torch.no_grad():  # (sparsegen-exp and -sq project from the scores themselves)
        results.append(
            [HALF_MAPPINGS[name](t.to(DEVICE), lam.to(DEVICE)).cpu() for t in (x, x.float())]
        )
    (out, grad, grad_lam), (out32, grad32, grad_lam32), (no_grad, no_grad32) = results
    assert out.dtype == grad.dtype == no_grad.dtype == dtype
    one_ulp = 0 if dtype == torch.float16 or DEVICE == "cuda" else 1
    for got, expected in ((out, out32), (no_grad, no_grad32)):
        ulp = torch.finfo(dtype).eps * expected.abs().clamp(min=2**-14)
        assert ((got.double() - expected.to(dtype).double()).abs() <= one_ulp * ulp).all()
    rtol = 2 * torch.finfo(dtype).eps
    torch.testing.assert_close(grad.float(), grad32.to(dtype).float(), atol=0, rtol=rtol)
    if grad_lam is not None:
        torch.testing.assert_close(grad_lam, grad_lam32, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_sum_normalization_pp_reads_half_scores_as_they_are(dtype, monkeypatch):
    # Without a gradient its ratio transform reads the half scores (no float32 copy
    # first) and writes float32 ratios, which the projection takes: the float32
    # computation's output, rounded once.
    from sparsegen import _triton_transform

    read = []
    transform = _triton_transform.transform_triton
    monkeypatch.setattr(
        _triton_transform,
        "transform_triton",
        lambda z, *args, **kwargs: read.append(z) or transform(z, *args, **kwargs),
    )
    x = (torch.randn(6, 50, generator=torch.Generator().manual_seed(3)) * 3).to(DTYPES[dtype])
    with torch.no_grad():
        out = sg.sum_normalization_pp(x.to(DEVICE), algorithm="triton").cpu()
    assert len(read) == 1 and read[0].dtype == x.dtype
    expected = sg.sum_normalization_pp(x.float(), algorithm="sort").to(x.dtype)
    one_ulp = torch.finfo(x.dtype).eps * expected.double().abs()
    assert ((out.double() - expected.double()).abs() <= one_ulp).all()


def test_info_keep_scale_and_empty_inputs():
    z = torch.randn(4, 5, device=DEVICE)
    cone = ConeScale(1.0, True)
    full = project_triton(z, None, cone)
    out, tau, support, computed = project_triton(z, None, cone, info=False, keep_scale=False)
    assert tau is None and support is None and computed is None
    torch.testing.assert_close(out, full[0])
    # an empty input never reaches the kernels: the operator answers it
    empty = torch.empty(3, 0, device=DEVICE)
    out, tau, support, computed = _ops._project(empty, None, cone, "triton")
    assert out.shape == (3, 0) and tau.shape == (3,) and support.tolist() == [0, 0, 0]
    assert computed.shape == (3, 1)


# Masks broadcast over the rows of (2, 3, 4, K) scores, and whether their rows take at most
# two strides, so that the kernels read them in place rather than from a copy.
ROW_BROADCAST_MASKS = {
    "key padding (B, 1, 1, K)": ((2, 1, 1), True),
    "one per query (L, K)": ((4,), True),
    "one per head (B, H, 1, K)": ((2, 3, 1), True),
    "one for all (K,)": ((), True),
    "per batch and query (B, 1, L, K)": ((2, 1, 4), False),
}


# (the overflow's streaming pass reads the mask through the same row_start as the split path)
@pytest.mark.parametrize("path", MAIN_PATHS)
@pytest.mark.parametrize("name", list(ROW_BROADCAST_MASKS))
def test_masks_broadcast_over_rows_are_read_in_place(name, path):
    from sparsegen._triton_projection import _mask_arg

    batch, in_place = ROW_BROADCAST_MASKS[name]
    k = 70
    z = torch.randn(2, 3, 4, k, device=DEVICE)
    mask = torch.rand(*batch, k, device=DEVICE) > 0.3
    keep = np.broadcast_to(mask.cpu().numpy(), z.shape)
    out = _project(z, mask=mask, path=path)[0]
    expected = _masked_reference(_np(z), np.ones((*z.shape[:-1], 1)), keep)
    np.testing.assert_allclose(_np(out), expected, atol=ATOL[torch.float32])
    # the cone's scale sums the kept scores: its kernels read the mask too
    cone = ConeScale(1.0, True)
    copied = mask.expand(z.shape).contiguous()
    torch.testing.assert_close(
        _project(z, cone=cone, mask=mask, path=path),
        _project(z, cone=cone, mask=copied, path=path),
        rtol=0, atol=0,
    )  # fmt: skip
    assert (_mask_arg(mask, z, 24, k)[0].data_ptr() == mask.data_ptr()) == in_place


class _LaunchedTensors:
    """The storage of the tensors passed to each kernel launched through ``wrap_triton``,
    in order (placeholder pointers included)."""

    def __init__(self, module, monkeypatch):
        self.launches = []
        real = module.wrap_triton

        def wrap(kernel):
            return _Launcher(real(kernel), self.launches)

        monkeypatch.setattr(module, "wrap_triton", wrap)

    def all_read(self, t: torch.Tensor, position: int = 0) -> bool:
        """Whether every launch was passed ``t``'s storage itself as its tensor argument
        at ``position`` (0: the scores; 1: the VJP's gradient, after the output)."""
        return bool(self.launches) and all(ptrs[position] == t.data_ptr() for ptrs in self.launches)

    def written(self, t: torch.Tensor) -> bool:
        """Whether the last launch was passed ``t``'s storage: the kernels wrote ``t`` itself,
        not a buffer copied into it afterwards."""
        return bool(self.launches) and t.data_ptr() in self.launches[-1]


class _Launcher:
    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append([a.data_ptr() for a in args if isinstance(a, torch.Tensor)])
            return self.kernel[grid](*args, **kwargs)

        return launch


# Scores whose rows need two strides, as (storage shape, view): (B, C, H, W) along C (a
# segmentation model's classes: outer stride CHW, inner 1, entries HW apart), and every
# other slice of a batch along its dimension 1.
STRIDED_SCORES = {
    "along dim 1 of (B, C, H, W)": ((3, 70, 4, 5), lambda x: x.movedim(1, -1)),
    "every other slice, along dim 1": ((6, 70, 20), lambda x: x.movedim(1, -1)[::2]),
}


@pytest.mark.parametrize("path", MAIN_PATHS)
@pytest.mark.parametrize("layout", list(STRIDED_SCORES))
def test_scores_and_gradients_along_any_dim_are_read_in_place(layout, path, monkeypatch):
    from sparsegen import _triton_projection as module

    shape, view = STRIDED_SCORES[layout]
    launched = _LaunchedTensors(module, monkeypatch)
    storage = torch.randn(shape, device=DEVICE)
    z = view(storage)
    out, _, support, _ = _project(z, path=path)
    expected = _masked_reference(_np(z), np.ones((*z.shape[:-1], 1)), np.ones(z.shape, bool))
    np.testing.assert_allclose(_np(out), expected, atol=ATOL[torch.float32])
    assert launched.all_read(storage)
    # written in the layout torch.empty_like gives the scores (in_layout): no copy after
    assert out.stride() == torch.empty_like(z).stride() and launched.written(out)
    # the backward reads the output and its gradient in place, and writes the same layout
    launched.launches.clear()
    grad_storage = torch.randn(shape, device=DEVICE)
    got = _vjp(out, support, view(grad_storage), None, path)
    expected = vjp_torch(out.double(), support, view(grad_storage).double(), None)
    np.testing.assert_allclose(_np(got), _np(expected), atol=1e-5)
    assert launched.all_read(out) and launched.all_read(grad_storage, position=1)
    assert got.stride() == out.stride() and launched.written(got)


@pytest.mark.parametrize(
    "mapping",
    [
        sg.sparsemax,
        functools.partial(sg.sparsehourglass, q=0.5),
        functools.partial(sg.sparsegen_exp, lam=0.2),
    ],
)
def test_the_mappings_project_along_any_dim_in_place(mapping, monkeypatch):
    from sparsegen import _triton_projection as module

    launched = _LaunchedTensors(module, monkeypatch)
    x = torch.randn(3, 70, 4, 5, device=DEVICE)
    with torch.no_grad():  # sparsegen-exp then transforms in the projection's kernel
        out = mapping(x, dim=1, algorithm="triton")
    torch.testing.assert_close(out, mapping(x, dim=1, algorithm="sort"))
    assert launched.all_read(x)
    assert out.stride() == x.stride() and launched.written(out)  # the input's layout, in place


def _virtual(elements: int, dtype: torch.dtype) -> torch.Tensor:
    """A tensor spanning ``elements`` that only the entries written occupy (``empty``: the
    pages untouched stay virtual), or a skip where the machine could not map it."""
    span = elements * torch.empty((), dtype=dtype).element_size()
    if os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") < 2 * span:
        pytest.skip(f"maps {span >> 30} GiB of virtual memory")
    return torch.empty(elements, dtype=dtype, device=DEVICE)


def _spaced(values: list, dtype: torch.dtype, stride: int = 2**30) -> torch.Tensor:
    """One row of ``values`` whose entries lie ``stride`` apart."""
    row = _virtual(stride * (len(values) - 1) + 1, dtype).as_strided((1, len(values)), (1, stride))
    return row.copy_(torch.tensor([values]))


def test_split_grids_stay_within_cuda_s_limits():
    # CUDA caps a grid's second and third axes at 65,535: a row of more than 2²⁸ entries
    # (65,535 chunks of 4,096) put its chunks there, and could not launch
    from sparsegen._triton_projection import LONG_CHUNK, split_launch

    for rows, k in ((1, 2**30), (3, 65_535 * LONG_CHUNK + 1), (2**20, 20_000)):
        launch = split_launch(rows, k, LONG_CHUNK)
        assert launch.grid[0] == rows * launch.chunks < 2**31 and launch.grid[1:] == ()


def test_rows_past_the_kernels_32_bit_counts_take_the_torch_path(monkeypatch):
    # Rows near 2³¹ entries: the chunk count (K + CHUNK − 1) wrapped negative and the int32
    # counts of the support and the candidates overflowed. Past the limit, "triton" is
    # refused with the limit named, and a backward takes the torch path (as does "auto" on
    # CUDA). The limit is lowered here to a row of 40 entries.
    from sparsegen import _projection
    from sparsegen._triton_projection import LONG_CHUNK

    assert _projection.TRITON_MAX_ROW + LONG_CHUNK < 2**31
    monkeypatch.setattr(_projection, "TRITON_MAX_ROW", 39)
    x = torch.randn(3, 40, dtype=torch.float64).to(DEVICE)
    with pytest.raises(ValueError, match="rows of at most 39 entries"):
        sg.sparsemax(x, algorithm="triton")
    assert _projection.resolve_algorithm("auto", x) != "triton"
    calls = _triton_vjp_calls(monkeypatch)
    out = sg.sparsemax(x[:, :39].float().requires_grad_(), algorithm="triton")
    out.sum().backward()
    assert calls  # (39 entries: the kernels)
    calls.clear()
    output = sg.sparsemax(x).float()
    support = (output > 0).sum(-1)
    ones = torch.ones_like(output)
    gradient = _ops._project_backward_kernel(output, support, ones, None, True)
    assert not calls and torch.equal(gradient, torch.zeros_like(output))


def test_a_dynamic_row_length_exports_without_a_guard_on_the_row_limit():
    # comparing a symbolic length with the limit added a guard, and torch.export of a
    # dynamic length (no maximum given) failed on it
    class Mapping(torch.nn.Module):
        def forward(self, x):
            return sg.sparsemax(x, algorithm="triton")

    dims = {"x": {0: torch.export.Dim("batch"), 1: torch.export.Dim("length")}}
    example = torch.randn(3, 40, device=DEVICE)
    exported = torch.export.export(Mapping(), (example,), dynamic_shapes=dims)
    x = torch.randn(5, 70, device=DEVICE)
    torch.testing.assert_close(exported.module()(x), sg.sparsemax(x))


# the streamed Newton steps: more candidates than the slots a row has
@pytest.mark.parametrize(
    "path",
    [{}, {"max_short_k": 1, "chunk": 2}, {"max_short_k": 1, "chunk": 2, "candidates": 1}],
    ids=["on chip", "split", "split, streamed Newton"],
)
def test_offsets_past_two_to_the_31_entries_are_64_bit(path):
    # rows along a dim of stride 2³⁰: col · stride was int32 in the short kernels and in the
    # split path's streamed Newton steps, and read out of bounds (a segmentation fault in
    # the interpreter, 2 GiB before the scores or the mask on a GPU)
    scores = _spaced([1.0, 0.5, 1.25], torch.float16)
    out, _, support, _ = project_triton(scores, None, None, **path)
    assert out.tolist() == [[0.375, 0.0, 0.625]] and support.tolist() == [2]
    keep = _spaced([False, True, True], torch.bool, stride=2**30 + 8)
    out, _, support, _ = project_triton(scores, None, None, mask=keep, **path)
    assert out.tolist() == [[0.0, 0.125, 0.875]] and support.tolist() == [2]
    knobs = {key: value for key, value in path.items() if key != "candidates"}
    grad = _spaced([1.0, 2.0, 3.0], torch.float16)
    assert vjp_triton(out, support, grad, None, **knobs).tolist() == [[0.0, -0.5, 0.5]]
    from sparsegen._triton_transform import transform_triton

    gaps, top = transform_triton(scores, None, "exp_gap", **knobs)
    assert top.item() == 1.25
    torch.testing.assert_close(gaps, torch.expm1(scores.float() - 1.25))


@pytest.mark.parametrize(
    ("triton_version", "numpy_version", "runs"),
    [("3.6.0", "2.4.6", False), ("3.6.0", "2.3.5", True), ("3.8.0", "2.4.6", True),
     ("3.10.1", "3.0.0", True)],
)  # fmt: skip
def test_an_interpreter_that_cannot_run_is_named_with_its_fix(
    monkeypatch, triton_version, numpy_version, runs
):
    from sparsegen import _projection

    monkeypatch.setattr(_projection.importlib.metadata, "version", lambda name: triton_version)
    monkeypatch.setattr(_projection.np, "__version__", numpy_version)
    trouble = _projection._interpreter_trouble()
    assert (trouble is None) == runs
    if not runs:
        assert "triton>=3.7 or numpy<2.4" in trouble and triton_version in trouble
        monkeypatch.setattr(_projection, "_INTERPRETER_TROUBLE", trouble)
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        with pytest.raises(RuntimeError, match=r"numpy<2\.4"):
            _projection.triton_interpreted()
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        assert not _projection.triton_interpreted()  # only the interpreter is refused


def test_a_triton_without_metadata_is_not_refused(monkeypatch):
    from sparsegen import _projection

    def missing(name):
        raise _projection.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(_projection.importlib.metadata, "version", missing)
    assert _projection._interpreter_trouble() is None


def _vjp_reference(p, g, c):
    """c · s ⊙ (g − mean_S g), S = {p > 0}, per row in float64 (the Jacobian's transpose
    c (diag(s) − s sᵀ/|S|) applied to g)."""
    s = p > 0
    count = np.maximum(s.sum(-1, keepdims=True), 1)
    mean = np.where(s, g, 0).sum(-1, keepdims=True) / count
    return c * np.where(s, g - mean, 0)


@pytest.mark.parametrize("path", MAIN_PATHS)
def test_a_large_flat_float32_support_sums_to_one_forward_and_backward(path):
    # Half the row ties in the support, each weight ~1/k: τ and the backward's mean are
    # sums of thousands of equal terms, whose float32 rounding drifts (the CPU kernel's
    # did); at full size on a GPU, at 2,047 in the interpreter
    k = 65536 if DEVICE == "cuda" else 2047
    z = torch.full((1, k), -0.5)
    z[0, 0] = 1.5
    z[0, 1 : k // 2] = 0.5
    z = (z * 0.1234567).to(DEVICE)
    out = _project(z, path=path)[0][0].cpu().double()
    expected = torch.from_numpy(sparsemax_bisect(_np(z))[0])
    support = expected > 0
    assert torch.equal(out > 0, support) and abs(out.sum().item() - 1) < 2e-3
    torch.testing.assert_close(out[support], expected[support], rtol=2e-3, atol=0)
    grad = torch.rand(1, k, generator=torch.Generator().manual_seed(0)) + 10.0
    p = out.float()[None]
    result = _vjp(
        p.to(DEVICE), None, grad.to(DEVICE), None, "split" if path == "split" else "short"
    )
    expected_grad = _vjp_reference(p.double().numpy(), grad.double().numpy(), 1.0)
    np.testing.assert_allclose(_np(result), expected_grad, rtol=0, atol=4e-7)


@pytest.mark.parametrize("path", list(VJP_PATHS))
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_vjp_against_references(path, k, dtype):
    dtype = DTYPES[dtype]
    g = torch.Generator().manual_seed(10 + k)
    z = torch.randn(2, 3, k, generator=g) * 3
    output = torch.tensor(sparsemax_bisect(z.numpy())).to(dtype)
    grad = torch.randn(2, 3, k, generator=g).to(dtype)
    scale = torch.tensor([0.0, 1.0, 2.5], dtype=dtype)[:, None]  # broadcast over the batch
    wrong_support = torch.zeros(2, 3, dtype=torch.int64)  # ignored: S is counted from output
    for c in (None, scale):
        result = _vjp(
            output.to(DEVICE),
            wrong_support.to(DEVICE),
            grad.to(DEVICE),
            None if c is None else c.to(DEVICE),
            path,
        )
        assert result.dtype == dtype and result.shape == output.shape
        c64 = 1.0 if c is None else _np(c)
        expected = _vjp_reference(_np(output), _np(grad), c64)
        tol = {torch.float32: 2e-6, torch.float64: 1e-12}.get(dtype, 0.05)
        np.testing.assert_allclose(_np(result), expected, atol=tol * 3, rtol=tol)
        torch_result = vjp_torch(
            output.double(), wrong_support, grad.double(), None if c is None else c.double()
        )
        np.testing.assert_allclose(_np(result), _np(torch_result), atol=tol * 3, rtol=tol)


@pytest.mark.parametrize("path", list(VJP_PATHS))
def test_vjp_of_transposed_grad_ties_and_zero_support(path):
    z = torch.tensor([[1.0, 1.0, 0.0, 0.0, -1.0], [-inf] * 5, [2.0, 0.0, 2.0, 2.0, 0.0]])
    output = torch.tensor(np.nan_to_num(sparsemax_bisect(np.nan_to_num(z.numpy(), neginf=-50.0))))
    output[1] = 0.0  # an all -inf row: no support, gradient 0
    grad = torch.randn(5, 3).T  # non-contiguous
    result = _vjp(output.to(DEVICE), None, grad.to(DEVICE), torch.tensor(3.0, device=DEVICE), path)
    expected = _vjp_reference(output.numpy().astype(float), grad.numpy().astype(float), 3.0)
    np.testing.assert_allclose(_np(result), expected, atol=1e-6)
    assert torch.all(result[1] == 0)
    # ∂/∂z of ⟨g, sparsemax(c z)⟩ by finite differences, on the rows with a support
    z = torch.randn(2, 6, dtype=torch.float64)
    c = torch.tensor([[0.7], [2.0]], dtype=torch.float64)
    out, _, support, _ = project_triton(z.to(DEVICE), c.to(DEVICE), None, **VJP_PATHS[path])
    g = torch.randn(2, 6, dtype=torch.float64)
    analytic = _vjp(out, support, g.to(DEVICE), c.to(DEVICE), path)
    eps = 1e-7
    numeric = torch.zeros_like(z)
    for j in range(6):
        step = torch.zeros_like(z)
        step[:, j] = eps
        plus = sparsemax_bisect(((z + step) * c).numpy())
        minus = sparsemax_bisect(((z - step) * c).numpy())
        numeric[:, j] = torch.tensor(((plus - minus) * g.numpy()).sum(-1) / (2 * eps))
    np.testing.assert_allclose(_np(analytic), numeric.numpy(), atol=1e-5)


PUBLIC_GRADIENTS = {
    "sparsemax": lambda x, **kw: sg.sparsemax(x, **kw),
    "sparsegen_lin, learnt tensor lam": lambda x, **kw: sg.sparsegen_lin(
        x, lam=torch.tensor(0.3, dtype=x.dtype, requires_grad=True), **kw
    ),
    "sparsecone": lambda x, **kw: sg.sparsecone(x, q=0.5, **kw),
    "sparsehourglass": lambda x, **kw: sg.sparsehourglass(x, q=0.5, **kw),
    "sparsegen_exp": lambda x, **kw: sg.sparsegen_exp(x, lam=0.2, **kw),
    "masked, along dim 0": lambda x, **kw: sg.sparsemax(x, dim=0, mask=x.T[:1].T > -1, **kw),
}


@pytest.mark.parametrize("path", list(VJP_PATHS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_vjp_with_a_moment_gives_each_rows_scale_term_and_limit(dtype, path):
    # The backward of a scale that takes a gradient in one launch: c·u, each row's moment,
    # and the limit of a row whose scale is 0, inf or NaN (as the numba kernel's)
    dtype = DTYPES[dtype]
    p, g, scale, _ = scaled_vjp_cases(70, np.float64)
    to = {"dtype": dtype, "device": DEVICE}
    result, moment = scaled_vjp_triton(
        torch.tensor(p, **to), None, torch.tensor(g, **to), torch.tensor(scale, **to)[:, None],
        **VJP_PATHS[path],
    )  # fmt: skip
    assert result.dtype == dtype and moment.shape == (6, 1) and moment.dtype == dtype
    expected, expected_moment = scaled_vjp_reference(p, g, scale)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(_np(result), expected, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(_np(moment)[:, 0], expected_moment, rtol=tolerance, atol=tolerance)
    # per_scale: the scale's gradient, the moment divided by a usable scale (0 elsewhere)
    _, gradient = scaled_vjp_triton(
        torch.tensor(p, **to), None, torch.tensor(g, **to), torch.tensor(scale, **to)[:, None],
        per_scale=True, **VJP_PATHS[path],
    )  # fmt: skip
    divisor = np.where(np.isfinite(scale) & (scale != 0), scale, 1.0)
    np.testing.assert_allclose(_np(gradient)[:, 0], expected_moment / divisor, rtol=tolerance)
    assert torch.equal(gradient, moment / torch.tensor(divisor, **to)[:, None])  # as torch divides


@pytest.mark.parametrize("path", list(VJP_PATHS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("masked", [False, True])
def test_the_cone_vjp_adds_the_scales_term_at_the_kept_entries(masked, dtype, path):
    # Sparsecone's and sparsehourglass's whole backward, in one launch on chip: c·u plus
    # factor · c · moment at every kept entry, off the support too; a scale that is not
    # finite counts as 0 (its slice the limit: no gradient), and so does a 0 one; and the
    # moment itself, or times ∂ log α/∂q: a learnt q's gradient
    dtype = DTYPES[dtype]
    p, g, scale, _ = scaled_vjp_cases(70, np.float64)
    factor = np.array([-0.3, 0.2, -0.5, -0.0, 0.4, -0.1])
    keep = np.random.default_rng(2).random(p.shape) > 0.3
    keep[:, [2, 5, 11]] = True  # (the support is kept)
    keep = keep if masked else np.ones(p.shape, dtype=bool)
    to = {"dtype": dtype, "device": DEVICE}
    result, got_moment = cone_vjp_triton(
        torch.tensor(p, **to), torch.tensor(g, **to), torch.tensor(scale, **to)[:, None],
        torch.tensor(factor, **to)[:, None], torch.tensor(keep, device=DEVICE) if masked else None,
        **VJP_PATHS[path],
    )  # fmt: skip
    assert result.dtype == dtype and result.shape == p.shape
    c = np.where(np.isfinite(scale), scale, 0.0)
    grad, moment = scaled_vjp_reference(p, g, c)
    expected = grad + np.where(keep, (factor * c * moment)[:, None], 0.0)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(_np(result), expected, rtol=tolerance, atol=tolerance)
    assert got_moment.shape == (p.shape[0], 1)
    np.testing.assert_allclose(_np(got_moment)[:, 0], moment, rtol=tolerance, atol=tolerance)
    slope = torch.linspace(-2.0, 3.0, p.shape[0], **to)[:, None]  # (∂ log α/∂q a row)
    same, q_gradient = cone_vjp_triton(
        torch.tensor(p, **to), torch.tensor(g, **to), torch.tensor(scale, **to)[:, None],
        torch.tensor(factor, **to)[:, None], torch.tensor(keep, device=DEVICE) if masked else None,
        q_slope=slope, **VJP_PATHS[path],
    )  # fmt: skip
    torch.testing.assert_close(same, result, rtol=0, atol=0, equal_nan=True)
    expected_q = moment * _np(slope)[:, 0]
    np.testing.assert_allclose(_np(q_gradient)[:, 0], expected_q, rtol=tolerance, atol=tolerance)
    off_support = _np(result)[0, p[0] == 0]  # the term, at the kept entries only
    assert np.all(_np(result)[4:] == 0) and np.all((off_support != 0) == keep[0, p[0] == 0])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_half_vjp_takes_its_moment_from_the_kept_scores(dtype):
    # half outputs hold three or four digits: with the forward's scores, the moment is
    # c Σ_S u_j z_j over the finite ones, in float32 (as the torch path's _support_moment),
    # and the scale's gradient that over c, beside c·u rounded to the half type once
    dtype = DTYPES[dtype]
    z = (torch.randn(6, 50, generator=torch.Generator().manual_seed(60)) * 2).to(dtype)
    z[2, 5] = inf  # (its row the limit: the finite support's moment)
    scale = torch.tensor([0.5, 2.0, 1.0, 7.0, 0.1, 3.0])[:, None]
    g = torch.randn(6, 50, generator=torch.Generator().manual_seed(61)).to(dtype)
    output = _project(z.to(DEVICE), scale=scale.to(DEVICE))[0]
    args = (output, None, g.to(DEVICE), scale.to(DEVICE))
    grad, gradient = scaled_vjp_triton(*args, per_scale=True, scores=z.to(DEVICE))
    p, g64, z64 = _np(output), g.double().numpy(), z.double().numpy()
    expected_grad, _ = scaled_vjp_reference(p, g64, scale.double().numpy())
    u = expected_grad / scale.double().numpy()
    expected = np.where((p > 0) & np.isfinite(z64), u * z64, 0.0).sum(1)
    assert grad.dtype == dtype and gradient.dtype == torch.float32
    np.testing.assert_allclose(_np(gradient)[:, 0], expected, rtol=1e-5, atol=1e-5)
    ulp = torch.finfo(dtype).eps * torch.tensor(expected_grad).abs().clamp(min=2**-14)
    assert ((grad.double().cpu() - torch.tensor(expected_grad)).abs() <= ulp).all()
    with pytest.raises(ValueError, match="rows held on chip"):
        scaled_vjp_triton(*args, scores=z.to(DEVICE), **VJP_PATHS["split"])


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", ["sparsecone", "sparsehourglass"])
def test_the_cones_backward_takes_the_forwards_factor_and_one_vjp_call(name, masked, monkeypatch):
    # On a device the sign of the sum and the count of kept entries come from the forward's
    # kernel, not from torch ops reading the scores again, and the whole backward from the
    # cone's VJP (no numba kernel there: as on CUDA)
    from sparsegen import _projection, _triton_projection

    x = torch.rand(5, 40, generator=torch.Generator().manual_seed(3)).to(DEVICE) - 0.2
    mask = x > 0 if masked else None
    z64 = x.double().requires_grad_()
    reference = PUBLIC_GRADIENTS[name](z64, mask=mask, algorithm="sort")
    (expected,) = torch.autograd.grad(reference, z64, torch.ones_like(reference).cumsum(-1))
    monkeypatch.setattr(_projection, "compilable", lambda t: False)
    monkeypatch.setattr(_ops, "compilable", lambda t: False)
    monkeypatch.setattr(_ops, "_cone_factor", lambda *args: pytest.fail("the factor recomputed"))
    monkeypatch.setattr(
        _triton_projection, "scaled_vjp_triton", lambda *a, **k: pytest.fail("the unfused VJP")
    )
    calls = _triton_vjp_calls(monkeypatch)
    z = x.clone().requires_grad_()
    out = PUBLIC_GRADIENTS[name](z, mask=mask, algorithm="triton")
    (grad,) = torch.autograd.grad(out, z, torch.ones_like(out).cumsum(-1))
    assert calls == [1]
    torch.testing.assert_close(grad.double(), expected, atol=1e-5, rtol=1e-5)


def test_a_number_lam_fills_no_tensor_on_the_triton_path(monkeypatch):
    # sparsegen-lin's 1/(1 − λ) of a float λ goes to the kernels as a number, forward and
    # backward: a tensor filled for it would be a launch more on a GPU
    x = torch.randn(5, 40, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    g = torch.randn(5, 40, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    z64 = x.double().requires_grad_()
    expected = sg.sparsegen_lin(z64, lam=0.4, algorithm="sort")
    (expected_grad,) = torch.autograd.grad(expected, z64, g.double())
    monkeypatch.setattr(_ops, "number_tensor", lambda *a: pytest.fail("a tensor filled"))
    z = x.clone().requires_grad_()
    out = sg.sparsegen_lin(z, lam=0.4, algorithm="triton")
    (grad,) = torch.autograd.grad(out, z, g)
    with torch.no_grad():
        inference = sg.sparsegen_lin(x, lam=0.4, algorithm="triton")
    torch.testing.assert_close(out.double(), expected.detach(), atol=2e-6, rtol=0)
    torch.testing.assert_close(grad.double(), expected_grad, atol=1e-5, rtol=1e-5)
    assert torch.equal(inference, out.detach())


@pytest.mark.parametrize("path", MAIN_PATHS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_kernels_compute_sparsegen_lin_s_scale_from_lam(dtype, path):
    # c = 1/(1 − λ) from λ one a row, rounded as torch.reciprocal rounds it, NaN where λ
    # is not < 1 (the functional layer's rule on a device); and λ's gradient c² ∂L/∂c,
    # the VJP's moment times c, 0 where c is not finite
    dtype = DTYPES[dtype]
    z = (torch.randn(6, 300, generator=torch.Generator().manual_seed(12)) * 2).to(DEVICE, dtype)
    lam = torch.tensor([[0.3], [-2.0], [0.999], [1 / 3], [1.0], [nan]]).to(DEVICE, dtype)
    c = torch.reciprocal(1 - torch.where(lam < 1, lam, nan))
    got = _project(z, scale=lam, path=path, lin=True)
    expected = _project(z, scale=c, path=path)
    for a, b in zip(got[:3], expected[:3], strict=True):
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
    assert torch.equal(got[3].nan_to_num(7.0), c.nan_to_num(7.0))
    grad = torch.randn(z.shape, generator=torch.Generator().manual_seed(2)).to(z)
    knobs = VJP_PATHS[path]
    by_lam = scaled_vjp_triton(got[0], None, grad, c, per_scale=True, lin=True, **knobs)
    by_scale = scaled_vjp_triton(got[0], None, grad, c, per_scale=True, **knobs)
    assert torch.equal(by_lam[0].nan_to_num(7.0), by_scale[0].nan_to_num(7.0))
    chained = torch.where(torch.isfinite(c), by_scale[1] * c * c, 0.0)
    torch.testing.assert_close(by_lam[1], chained, rtol=1e-6, atol=0)
    assert by_lam[1][[0, 1, 3]].abs().min() > 0  # (0.999's c = 1000 keeps one entry: 0)
    assert torch.equal(by_lam[1][4:], torch.zeros_like(c[4:]))


LEARNT_LAMS = {  # λ for scores of shape (4, 3, 30), each with its gradient
    "one a row": torch.linspace(-1.5, 0.9, 12).reshape(4, 3, 1),
    "one a head, shared by the batch": torch.tensor([0.4, -0.7, 0.95]).reshape(1, 3, 1),
    "one for all": torch.tensor(0.6),
}


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", list(LEARNT_LAMS))
def test_a_learnt_lam_takes_one_kernel_each_way_and_gives_both_gradients(name, masked, monkeypatch):
    # its scale computed in the forward's kernel, both gradients from the VJP's one call:
    # no torch op computes 1/(1 − λ) or its derivative (each a launch on a GPU)
    from sparsegen import functional

    x = (torch.randn(4, 3, 30, generator=torch.Generator().manual_seed(21)) * 2).to(DEVICE)
    g = torch.randn(4, 3, 30, generator=torch.Generator().manual_seed(22)).to(DEVICE)
    mask = x > -1 if masked else None
    z64, lam64 = x.double().requires_grad_(), LEARNT_LAMS[name].double().requires_grad_()
    reference = sg.sparsegen_lin(z64, lam=lam64, mask=mask, algorithm="sort")
    expected = torch.autograd.grad(reference, (z64, lam64), g.double())
    monkeypatch.setattr(functional, "_inverse_one_minus", lambda *a: pytest.fail("torch's 1/(1−λ)"))
    monkeypatch.setattr(_ops, "_lin_vjp_recorded", lambda *a: pytest.fail("torch's VJP"))
    calls = _triton_vjp_calls(monkeypatch)
    z, lam = x.clone().requires_grad_(), LEARNT_LAMS[name].to(DEVICE).requires_grad_()
    out = sg.sparsegen_lin(z, lam=lam, mask=mask, algorithm="triton")
    got = torch.autograd.grad(out, (z, lam), g)
    assert calls == [1]
    torch.testing.assert_close(out.double(), reference.detach(), atol=2e-6, rtol=0)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=2e-5)
    with torch.no_grad():  # and without a gradient to record, the same kernel
        assert torch.equal(sg.sparsegen_lin(x, lam=lam, mask=mask, algorithm="triton"), out)


def test_a_learnt_lam_past_1_gives_nan_rows_and_no_gradient_as_on_a_device(monkeypatch):
    # on a device λ ≥ 1 (or NaN) makes its rows NaN, never a raise: here the kernels'
    # NaN, which the functional layer no longer puts in; the scores' gradient and λ's are
    # those of the torch path, 0 in those rows
    checked_as_on_a_device(monkeypatch)
    x = torch.randn(4, 20, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    g = torch.randn(4, 20, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    lam_values = torch.tensor([[-3.0], [1.0], [nan], [3.0]]).to(DEVICE)  # (a wide support)
    results = []
    for algorithm in ("triton", "sort"):
        z, lam = x.clone().requires_grad_(), lam_values.clone().requires_grad_()
        out = sg.sparsegen_lin(z, lam=lam, algorithm=algorithm)
        results.append((out, *torch.autograd.grad(out, (z, lam), g)))
    (out, grad_z, grad_lam), torch_path = results
    assert torch.isnan(out[1:]).all() and torch.isfinite(out[0]).all()
    assert torch.equal(grad_z[1:], torch.zeros_like(grad_z[1:])) and grad_lam[0].abs() > 0
    assert torch.equal(grad_lam[1:], torch.zeros_like(grad_lam[1:]))
    for a, b in zip(results[0], torch_path, strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5, equal_nan=True)
    monkeypatch.undo()
    if DEVICE == "cpu":  # read on the host, where reading is free: an error
        with pytest.raises(ValueError, match="lam must be < 1"):
            sg.sparsegen_lin(x, lam=lam_values, algorithm="triton")


def test_a_learnt_lam_s_double_backward_runs_through_the_kept_output():
    # recorded (create_graph), the backward gives the kernel's gradients, in torch ops whose
    # own derivatives gradgradcheck checks (it differentiates the recorded backward only)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    lam = torch.tensor([[0.2], [-0.5], [0.7]], dtype=torch.float64)
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    inputs = (x.to(DEVICE).requires_grad_(), lam.to(DEVICE).requires_grad_())

    def mapping(z, lam):
        return sg.sparsegen_lin(z, lam=lam, algorithm="triton")

    recorded = torch.autograd.grad(mapping(*inputs), inputs, g.to(DEVICE), create_graph=True)
    by_kernel = torch.autograd.grad(mapping(*inputs), inputs, g.to(DEVICE))
    for a, b in zip(recorded, by_kernel, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradgradcheck(mapping, inputs)


@pytest.mark.parametrize("path", ["split", "overflow"])
def test_the_split_path_reads_no_buffer_before_writing_it(path, monkeypatch):
    # on a GPU torch.empty holds whatever was there: every buffer the launcher allocates is
    # garbage here, and the result is the same (kernel A zeroes the candidate counters and
    # support counts that kernels B and D add to: a fill of each is a launch more)
    z = torch.randn(3, 300, generator=torch.Generator().manual_seed(50)).to(DEVICE)
    z[1, 7] = inf
    expected = _project(z, path=path)
    empty = torch.empty

    def garbage(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(0.25 if t.is_floating_point() else 7)  # (a gap above any τ)

    monkeypatch.setattr(torch, "empty", garbage)
    got = _project(z, path=path)
    for a, b in zip(got[:3], expected[:3], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", MAIN_PATHS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mirror", [False, True])
def test_the_kernels_write_the_slope_of_log_alpha_to_q(mirror, dtype, path):
    # ∂ log α/∂q = K(S − 1)/((1 + Kq)(S + Kq)), S = Σz (|Σz| mirrored) over the kept entries,
    # in float64 (also at q = 1e150, where the product of the two overflows); 0 where α is
    # not finite: a q out of range
    # (NaN, checked in the kernel: the row NaN), a zero sum at q = 0 (α̂ infinite), a sum
    # outside sparsecone's domain; and for a row that keeps nothing
    dtype = DTYPES[dtype]
    z = torch.rand(10, 300, generator=torch.Generator().manual_seed(31), dtype=torch.float64)
    z[:, :7] -= 0.5  # (signed scores, their sum positive)
    z[4] *= 0.5 / z[4].sum()  # (a small sum at q = 0: α̂ = 1/|Σz|)
    z[8] = -z[8]  # a negative sum: outside sparsecone's domain at q = 0.1 (-150 + 30 < 0)
    z = z.to(dtype)
    huge = 1e150 if dtype == torch.float64 else 1e15  # (slopes of 5e-301, 5e-31)
    q = torch.tensor([0.5, 0.0, 3.0, 1e6, 0.0, huge, nan, -1.0, 0.1, inf], dtype=dtype)[:, None]
    keep = torch.ones(10, 300, dtype=torch.bool)
    keep[1, 150:] = False
    keep[9] = False  # (q = inf is out of range too: NaN either way)
    zero_sum = torch.zeros(1, 300, dtype=dtype)  # α̂ = 1/0 at q = 0
    z, q = torch.cat([z, zero_sum]).to(DEVICE), torch.cat([q, q.new_zeros(1, 1)]).to(DEVICE)
    keep = torch.cat([keep, torch.ones(1, 300, dtype=torch.bool)]).to(DEVICE)
    rows = (z.shape[0], 1)
    factor, slope = (torch.empty(rows, dtype=dtype, device=DEVICE) for _ in range(2))
    cone = ConeScale(q, mirror)
    output, _, _, alpha = _project(z, cone=cone, mask=keep, path=path, factor=factor, q_slope=slope)

    total = np.where(_np(keep) > 0, _np(z), 0.0).sum(1)
    s = np.abs(total) if mirror else total
    k, qs = _np(keep).sum(1), _np(q)[:, 0]
    with np.errstate(all="ignore"):
        expected = k / (1 + k * qs) * ((s - 1) / (s + k * qs))
    undefined = ~np.isfinite(_np(alpha)[:, 0]) | (k == 0)
    expected = _np(torch.tensor(np.where(undefined, 0.0, expected)).to(dtype))
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(_np(slope)[:, 0], expected, rtol=tolerance, atol=0)
    assert np.all(_np(slope)[[0, 2, 3, 5]] != 0)
    nan_rows = [6, 7] + ([] if mirror else [8])  # (the fully masked row 9: zeros)
    assert np.all(undefined[nan_rows]) and torch.isnan(output[nan_rows]).all()
    assert np.all(_np(factor)[[6, 7]] == 0) and torch.isfinite(factor).all()  # (NaN q)
    assert undefined[10]  # (1/0: sparsecone's denominator is not > 0 either)


def _sum_above(low):
    """Scores whose rows sum above ``low``: sparsecone's domain for any q ≥ 0."""

    def scores(*shape, seed):
        z = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2
        return z - z.mean(-1, keepdim=True) + (low + 1) / shape[-1]

    return scores


LEARNT_QS = {  # q for scores of shape (4, 3, 30), each with its gradient
    "one a row": torch.linspace(0.0, 2.5, 12).reshape(4, 3, 1),
    "one a head, shared by the batch": torch.tensor([0.4, 0.05, 7.0]).reshape(1, 3, 1),
    "one for all": torch.tensor(0.6),
}
CONES = {
    "sparsecone": (sg.sparsecone, _sum_above(0.0)),
    "sparsehourglass": (sg.sparsehourglass, _sum_above(-8.0)),
}


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", list(LEARNT_QS))
@pytest.mark.parametrize("mapping", list(CONES))
def test_a_learnt_q_takes_one_kernel_each_way_and_gives_both_gradients(
    mapping, name, masked, monkeypatch
):
    # α, the factor of ∂α/∂z and ∂ log α/∂q from the forward's kernel, both gradients from
    # the VJP's one call: no torch op computes the scale or its derivatives (each a launch
    # on a GPU), nor checks q
    from sparsegen import functional

    f, scores = CONES[mapping]
    x = scores(4, 3, 30, seed=21).to(DEVICE)
    g = torch.randn(4, 3, 30, generator=torch.Generator().manual_seed(22)).to(DEVICE)
    mask = (x > -1) | (torch.arange(30, device=DEVICE) < 2) if masked else None
    z64, q64 = x.double().requires_grad_(), LEARNT_QS[name].double().requires_grad_()
    reference = f(z64, q=q64, mask=mask, algorithm="sort")
    expected = torch.autograd.grad(reference, (z64, q64), g.double())
    monkeypatch.setattr(functional, "slice_scale", lambda *a: pytest.fail("torch's α"))
    monkeypatch.setattr(_ops, "_cone_vjp_recorded", lambda *a: pytest.fail("torch's VJP"))
    checked_as_on_a_device(monkeypatch)  # (q is checked in the kernel: no torch op either)
    monkeypatch.setattr(sg._validation, "checked_parameter", lambda *a: pytest.fail("checked"))
    calls = _triton_vjp_calls(monkeypatch)
    z, q = x.clone().requires_grad_(), LEARNT_QS[name].to(DEVICE).requires_grad_()
    out = f(z, q=q, mask=mask, algorithm="triton")
    got = torch.autograd.grad(out, (z, q), g)
    assert calls == [1]
    torch.testing.assert_close(out.double(), reference.detach(), atol=2e-6, rtol=0)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=2e-5)
    assert got[1].abs().max() > 0
    with torch.no_grad():  # and without a gradient to record, the same kernel
        assert torch.equal(f(x, q=q, mask=mask, algorithm="triton"), out)


def test_a_learnt_q_out_of_range_gives_nan_rows_and_no_gradient_as_on_a_device(monkeypatch):
    # on a device a q that is negative, NaN or infinite makes its rows NaN, never a raise:
    # here the kernels' NaN; q's gradient is the torch path's, 0 in those rows, and so is
    # the scores' (a NaN row passes none, as a NaN score's does; the torch path's is NaN
    # there, its α's slope at a NaN q times 0)
    checked_as_on_a_device(monkeypatch)
    x = torch.randn(4, 20, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    g = torch.randn(4, 20, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    q_values = torch.tensor([[0.7], [-1.0], [nan], [inf]]).to(DEVICE)
    results = []
    for algorithm in ("triton", "sort"):
        z, q = x.clone().requires_grad_(), q_values.clone().requires_grad_()
        out = sg.sparsehourglass(z, q=q, algorithm=algorithm)
        results.append((out, *torch.autograd.grad(out, (z, q), g)))
    (out, grad_z, grad_q), (torch_out, torch_grad_z, torch_grad_q) = results
    assert torch.isnan(out[1:]).all() and torch.isfinite(out[0]).all()
    assert torch.equal(grad_z[1:], torch.zeros_like(grad_z[1:])) and grad_q[0].abs() > 0
    assert torch.equal(grad_q[1:], torch.zeros_like(grad_q[1:]))
    for a, b in ((out, torch_out), (grad_z[0], torch_grad_z[0]), (grad_q, torch_grad_q)):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5, equal_nan=True)
    monkeypatch.undo()
    if DEVICE == "cpu":  # read on the host, where reading is free: an error
        with pytest.raises(ValueError, match="q must be finite and >= 0"):
            sg.sparsehourglass(x, q=q_values, algorithm="triton")


ALONG_DIM_1 = {  # a learnt parameter of shape (4, 1, 5) for scores (4, 30, 5) along dim 1
    "sparsehourglass": lambda z, p, **kw: sg.sparsehourglass(z, q=p, dim=1, **kw),
    "sparsecone": lambda z, p, **kw: sg.sparsecone(z + 1.0, q=p, dim=1, **kw),
    "sparsegen_lin": lambda z, p, **kw: sg.sparsegen_lin(z, lam=p * 0.8, dim=1, **kw),
    "sparsegen_exp": lambda z, p, **kw: sg.sparsegen_exp(z, lam=p * 0.8, dim=1, **kw),
    "sum_normalization_pp": lambda z, p, **kw: sg.sum_normalization_pp(z, dim=1, **kw) * p,
}


@pytest.mark.parametrize("name", list(ALONG_DIM_1))
def test_learnt_parameters_along_another_dim_of_a_strided_input(name):
    # the kernels' paths with a learnt parameter (and sum-normalization++'s) move dim last
    # as views and give the outputs and gradients back in the input's layout
    x = torch.randn(4, 30, 5, generator=torch.Generator().manual_seed(80)) + 0.3
    g = torch.randn(4, 30, 5, generator=torch.Generator().manual_seed(81))
    p = torch.rand(4, 1, 5, generator=torch.Generator().manual_seed(82)) + 0.2
    results = []
    for algorithm, dtype in (("sort", torch.float64), ("triton", torch.float32)):
        # (batch dims last in memory: dim 1 is neither the last nor contiguous)
        z = x.to(DEVICE, dtype).transpose(0, 2).contiguous().transpose(0, 2).requires_grad_()
        parameter = p.to(DEVICE, dtype).requires_grad_()
        out = ALONG_DIM_1[name](z, parameter, algorithm=algorithm)
        results.append((out, *torch.autograd.grad(out, (z, parameter), g.to(DEVICE, dtype))))
    for expected, got in zip(*results, strict=True):
        torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=2e-5)
    assert results[1][1].stride() == results[1][0].stride() == (1, 4, 120)  # (the input's)


@pytest.mark.parametrize("name", ["sparsegen_lin", "sparsehourglass"])
def test_a_learnt_parameter_with_half_scores_takes_one_kernel_each_way(name, monkeypatch):
    # bfloat16 scores, kept for the moment (their output's three digits would not do): the
    # same one kernel each way, both gradients the float32 computation's
    from sparsegen import functional

    x = torch.randn(4, 3, 30, generator=torch.Generator().manual_seed(70)) * 2
    x = x.to(DEVICE, torch.bfloat16).float()  # (the same scores in either dtype)
    g = torch.randn(4, 3, 30, generator=torch.Generator().manual_seed(71)).to(DEVICE)
    g = g.to(torch.bfloat16).float()
    values = torch.linspace(-0.5, 0.8, 12).reshape(4, 3, 1) + (name != "sparsegen_lin")
    keyword = "lam" if name == "sparsegen_lin" else "q"
    f = getattr(sg, name)
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        z, p = x.to(dtype).requires_grad_(), values.to(DEVICE).requires_grad_()
        if dtype == torch.bfloat16:
            for helper in ("_inverse_one_minus", "slice_scale"):
                monkeypatch.setattr(functional, helper, lambda *a, h=helper: pytest.fail(h))
            calls = _triton_vjp_calls(monkeypatch)
        out = f(z, **{keyword: p}, algorithm="triton")
        results.append((out, *torch.autograd.grad(out, (z, p), g.to(dtype))))
    assert calls == [1]
    (out32, grad32, p_grad32), (out, grad, p_grad) = results
    assert out.dtype == grad.dtype == torch.bfloat16
    for got, expected in ((out, out32), (grad, grad32)):  # (rounded once: an ulp)
        ulp = torch.finfo(torch.bfloat16).eps * expected.abs().clamp(min=2**-14)
        assert ((got.float() - expected.to(torch.bfloat16).float()).abs() <= ulp).all()
    torch.testing.assert_close(p_grad, p_grad32, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sparsegen_lin", "sparsehourglass"])
def test_a_tensor_parameter_with_half_scores_is_checked_in_the_kernel_without_a_gradient(
    name, monkeypatch
):
    # without a gradient to record, half scores take the kernels' own check of λ or q too
    # (NaN rows where out of range, no torch op), as the torch path makes them on a device
    checked_as_on_a_device(monkeypatch)
    x = torch.randn(4, 30, generator=torch.Generator().manual_seed(3)).to(DEVICE, torch.bfloat16)
    values = {"sparsegen_lin": [0.3, 2.0, nan, -1.0], "sparsehourglass": [0.3, -1.0, nan, 2.0]}
    parameter = torch.tensor(values[name]).to(DEVICE)[:, None]
    keyword = "lam" if name == "sparsegen_lin" else "q"
    f = functools.partial(getattr(sg, name), x, **{keyword: parameter})
    expected = f(algorithm="sort")
    monkeypatch.setattr(sg._validation, "checked_parameter", lambda *a: pytest.fail("checked"))
    got = f(algorithm="triton")
    assert torch.isnan(got[1:3]).all() and torch.isfinite(got[[0, 3]]).all()
    torch.testing.assert_close(got, expected, atol=8e-3, rtol=0, equal_nan=True)


@pytest.mark.parametrize("mapping", list(CONES))
def test_a_learnt_q_s_double_backward_runs_through_the_kept_output_and_scale(mapping, monkeypatch):
    # recorded (create_graph), the backward gives the kernel's gradients, in torch ops whose
    # own derivatives gradgradcheck checks (through the output and α, both kept: the scores
    # are not, nor does torch compute α from them), a mask's kept count included
    from sparsegen import functional

    monkeypatch.setattr(functional, "slice_scale", lambda *a: pytest.fail("torch's α"))
    f, scores = CONES[mapping]
    x = scores(3, 6, seed=8).double()
    q = torch.tensor([[0.2], [1.5], [0.7]], dtype=torch.float64)
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    mask = torch.ones(3, 6, dtype=torch.bool, device=DEVICE)
    mask[1, 4:] = False
    inputs = (x.to(DEVICE).requires_grad_(), q.to(DEVICE).requires_grad_())

    def mapped(z, q):
        return f(z, q=q, mask=mask, algorithm="triton")

    recorded = torch.autograd.grad(mapped(*inputs), inputs, g.to(DEVICE), create_graph=True)
    by_kernel = torch.autograd.grad(mapped(*inputs), inputs, g.to(DEVICE))
    for a, b in zip(recorded, by_kernel, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradgradcheck(mapped, inputs)


@pytest.mark.parametrize(
    "dtype, masked, k",
    [("float32", False, 30), ("float32", True, 30), ("bfloat16", True, 30),
     ("float64", False, 30), ("float32", True, 20_000)],
)  # fmt: skip
def test_sum_normalization_pp_takes_two_kernels_forward_and_one_back(dtype, masked, k, monkeypatch):
    # the ratio transform (the scores over a power of two u: exact) and the projection,
    # which computes α̂ and its factor; the backward is the cone's one VJP launch at the
    # scores' own scale α̂(z/u)/u: no torch op normalises, sums, cuts or differentiates
    from sparsegen import functional

    dtype = DTYPES[dtype]
    x = (torch.randn(2, 3, k, generator=torch.Generator().manual_seed(40)) * 3).to(DEVICE, dtype)
    g = torch.randn(2, 3, k, generator=torch.Generator().manual_seed(41)).to(DEVICE, dtype)
    mask = x > -1 if masked else None
    z64 = x.double().requires_grad_()
    reference = sg.sum_normalization_pp(z64, mask=mask, algorithm="sort")
    (expected,) = torch.autograd.grad(reference, z64, g.double())
    for helper in ("_power_of_two_at_most", "slice_scale", "_cut_degenerate_slices"):
        monkeypatch.setattr(functional, helper, lambda *a, helper=helper: pytest.fail(helper))
    monkeypatch.setattr(_ops, "_cone_vjp_recorded", lambda *a: pytest.fail("torch's VJP"))
    calls = _triton_vjp_calls(monkeypatch)
    z = x.clone().requires_grad_()
    out = sg.sum_normalization_pp(z, mask=mask, algorithm="triton")
    (grad,) = torch.autograd.grad(out, z, g)
    assert calls == [1] * (1 if k <= 16384 else 2)  # (split rows: through the scaled VJP)
    assert out.dtype == grad.dtype == dtype
    half = dtype == torch.bfloat16  # (rounded once more: output and gradient in bfloat16)
    torch.testing.assert_close(out.double(), reference.detach(), atol=ATOL[dtype], rtol=0)
    tolerance = {"atol": 2e-2, "rtol": 2e-2} if half else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(grad.double(), expected, **tolerance)
    with torch.no_grad():  # and without a gradient to record, the same kernels
        assert torch.equal(sg.sum_normalization_pp(x, mask=mask, algorithm="triton"), out)


def test_sum_normalization_pp_of_subnormal_scores_with_a_gradient_is_exact():
    # float32 subnormals, whose sum a float32 scale 1/|Σz| would overflow: over a power of
    # two first, their ratios are exact, and so is the output (the gradient, about 1/z,
    # overflows float32 there, as documented)
    x = torch.tensor([[3.0, 1.0, -2.0, 5.0], [1.0, 1.0, 1.0, 0.0]]) * 2.0**-149
    z = x.to(DEVICE).requires_grad_()
    out = sg.sum_normalization_pp(z, algorithm="triton")
    expected = sg.sum_normalization_pp(x.double() * 2.0**149, algorithm="sort")
    torch.testing.assert_close(out.double().cpu(), expected, atol=1e-7, rtol=0)
    assert out.grad_fn is not None and out[0, 3] > 0


def test_sum_normalization_pp_s_double_backward_runs_through_the_kept_output_and_scale(
    monkeypatch,
):
    # recorded, the backward's formulas in torch ops at the scores' own scale, which
    # gradgradcheck differentiates (through the output and α̂, kept: torch computes no α̂)
    from sparsegen import functional

    monkeypatch.setattr(functional, "slice_scale", lambda *a: pytest.fail("torch's α̂"))
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    mask = torch.ones(3, 6, dtype=torch.bool, device=DEVICE)
    mask[2, :2] = False
    z = x.to(DEVICE).requires_grad_()

    def mapped(z):
        return sg.sum_normalization_pp(z, mask=mask, algorithm="triton")

    (recorded,) = torch.autograd.grad(mapped(z), z, g.to(DEVICE), create_graph=True)
    (by_kernel,) = torch.autograd.grad(mapped(z), z, g.to(DEVICE))
    torch.testing.assert_close(recorded, by_kernel, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradgradcheck(mapped, (z,))


@pytest.mark.parametrize("name", PUBLIC_GRADIENTS)
def test_the_public_api_s_backward_runs_the_triton_vjp(name, monkeypatch):
    # The operator routes its backward by device; a forward by the Triton kernels on CPU
    # tensors (the interpreter) must not fall back to the numba VJP, or CI never runs the
    # Triton VJP the way CUDA users reach it.
    calls = _triton_vjp_calls(monkeypatch)
    mapping = PUBLIC_GRADIENTS[name]
    x = torch.randn(5, 40, generator=torch.Generator().manual_seed(3)).to(DEVICE) * 2
    weights = torch.randn(5, 40, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    grads = []
    for dtype, algorithm in ((torch.float32, "triton"), (torch.float64, "sort")):
        z = x.to(dtype).requires_grad_()
        out = mapping(z, algorithm=algorithm)
        (grad,) = torch.autograd.grad((out * weights.to(dtype)).sum(), z)
        grads.append(grad)
    assert calls
    torch.testing.assert_close(grads[0].double(), grads[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["sparsemax", "sparsegen_lin, learnt tensor lam", "sparsecone"])
def test_torch_func_vjp_of_the_triton_path(name):
    # The pullback runs after vjp's level has ended, on functorch wrappers that hold no
    # storage a kernel can read: it must take the operator, not launch on them directly.
    mapping = PUBLIC_GRADIENTS[name]
    x = torch.randn(4, 30, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    g = torch.randn(4, 30, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    _, pullback = torch.func.vjp(lambda z: mapping(z, algorithm="triton"), x)
    (got,) = pullback(g)
    leaf = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad((mapping(leaf, algorithm="triton") * g).sum(), leaf)
    torch.testing.assert_close(got, expected)


def test_launchers_take_no_host_synchronisation():
    import inspect

    from sparsegen import _triton_projection as module

    for function in (
        module.project_triton,
        module.scores_source,
        module.rows_arg,
        module._mask_arg,
        module._per_row_args,
        module._project_short,
        module._capacity,
        module._project_split,
        module.vjp_triton,
        module._vjp_split,
        module._per_row,
    ):
        source = inspect.getsource(function)
        for call in (
            ".item(",
            ".cpu(",
            ".tolist(",
            ".numpy(",
            "float(z",
            "int(z",
            ".any(",
            ".all(",
        ):
            assert call not in source, (function.__name__, call)


def _per_row(shape, device, value=0.5, grad=False):
    return torch.full((shape[0], 1), value, device=device, requires_grad=grad)


def _random_mask(shape, device):
    return torch.rand(shape, device=device) > 0.2


# The rows held on chip, and rows split into chunks across programs (K > MAX_SHORT_K).
SYNC_SHAPES = {"cuda": {"short": (64, 300), "split": (4, 100_000)}}
SYNC_SHAPES["cpu"] = {"short": (8, 40), "split": (1, 16_500)}  # the interpreter's sizes
P = functools.partial
# Each mapping and parameter form the sync-free tests run: (rows, factory(shape, device)).
SYNC_FREE = {
    "sparsemax": ("short", lambda s, d: sg.sparsemax),
    "sparsemax split": ("split", lambda s, d: sg.sparsemax),
    "sparsemax along dim 0": ("short", lambda s, d: P(sg.sparsemax, dim=0)),
    "lin": ("short", lambda s, d: P(sg.sparsegen_lin, lam=0.5)),
    "lin tensor": ("short", lambda s, d: P(sg.sparsegen_lin, lam=_per_row(s, d))),
    "lin learnt tensor": ("short", lambda s, d: P(sg.sparsegen_lin, lam=_per_row(s, d, grad=True))),
    "lin learnt module": ("short", lambda s, d: sg.nn.SparsegenLin(lam=0.3, learnable=True).to(d)),
    "exp tensor": ("short", lambda s, d: P(sg.sparsegen_exp, lam=_per_row(s, d))),
    "exp split": ("split", lambda s, d: P(sg.sparsegen_exp, lam=0.2)),
    "sq": ("short", lambda s, d: P(sg.sparsegen_sq, lam=0.2)),
    "sq learnt module": ("short", lambda s, d: sg.nn.SparsegenSq(lam=0.2, learnable=True).to(d)),
    "cone": ("short", lambda s, d: P(sg.sparsecone, q=1.0)),
    "cone per-row q": ("short", lambda s, d: P(sg.sparsecone, q=_per_row(s, d, 2.0))),
    "cone split": ("split", lambda s, d: P(sg.sparsecone, q=1.0)),
    "hourglass tensor": ("short", lambda s, d: P(sg.sparsehourglass, q=_per_row(s, d))),
    "hourglass learnt module": (
        "short",
        lambda s, d: sg.nn.Sparsehourglass(q=0.5, learnable=True).to(d),
    ),
    "hourglass split": ("split", lambda s, d: P(sg.sparsehourglass, q=0.5)),
    "sum_normalization_pp": ("short", lambda s, d: sg.sum_normalization_pp),
    "masked": ("short", lambda s, d: P(sg.sparsemax, mask=_random_mask(s, d))),
    "masked split": ("split", lambda s, d: P(sg.sparsemax, mask=_random_mask(s, d))),
}


def _sync_free_case(name, device):
    """The scores (requiring their gradient) and the mapping of case ``name``."""
    rows, factory = SYNC_FREE[name]
    shape = SYNC_SHAPES[device][rows]
    x = torch.randn(shape, device=device)
    x = (x.abs() if "cone" in name else x).requires_grad_()  # (the cone's domain)
    return x, factory(shape, device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(SYNC_FREE))
def test_forward_and_backward_never_wait_for_the_device(name):
    x, mapping = _sync_free_case(name, "cuda")
    mapping(x).sum().backward()  # warm: the kernels compile on their first call
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mapping(x).square().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.skipif(DEVICE != "cpu", reason="CUDA runs the test above")
@pytest.mark.parametrize("name", list(SYNC_FREE))
def test_forward_and_backward_read_no_value_on_the_host(name, monkeypatch):
    # What the sync-free test checks on CUDA, checked where CI runs: with CPU tensors
    # treated as CUDA's ("auto" takes the Triton kernels, in the interpreter; parameters
    # are checked as on a device, invalid ones made NaN rather than raised), no torch-side
    # code reads a tensor's value, neither in plain eager calls nor through the operators
    # (what a dispatch mode sees).
    from sparsegen import _ops, _projection, functional

    resolve = _projection.resolve_algorithm

    def like_cuda(algorithm, z):
        from_auto = algorithm == "auto" and _projection.tritonable(z)
        return "triton" if from_auto else resolve(algorithm, z)

    for module in (_projection, _ops, functional):
        monkeypatch.setattr(module, "resolve_algorithm", like_cuda)
    checked_as_on_a_device(monkeypatch)
    launched = _triton_vjp_calls(monkeypatch)
    x, mapping = _sync_free_case(name, "cpu")
    with monkeypatch.context() as refused:
        refuse_host_reads(refused)
        mapping(x).square().sum().backward()  # plain eager
    assert launched, "the Triton VJP did not run"
    with HostReads() as seen:
        mapping(x).square().sum().backward()  # through the operators
    assert not seen.reads


def _triton_vjp_calls(monkeypatch):
    """A list that grows by one at each call of the Triton VJP (with or without the scale's
    moment, or the cone's whole VJP)."""
    from sparsegen import _triton_projection as module

    calls = []
    for name in ("vjp_triton", "scaled_vjp_triton", "cone_vjp_triton"):
        vjp = getattr(module, name)
        monkeypatch.setattr(
            module, name, lambda *args, vjp=vjp, **kw: calls.append(1) or vjp(*args, **kw)
        )
    return calls


def _lin_and_hourglass(z, lam, mask):
    import sparsegen as sg

    return sg.sparsegen_lin(z, lam=lam, mask=mask) + sg.sparsehourglass(z, q=0.5)


def _compiled_and_eager(k, backend):
    """Outputs and gradients (to the scores and λ) of a mapping of ``k`` entries a row,
    compiled with ``backend`` (full graph) and eager, and the compiled code's source."""
    from torch._inductor.utils import run_and_get_code

    z = torch.randn(16, k, device=DEVICE)
    lam = torch.full((16, 1), 0.3, device=DEVICE)
    mask = torch.rand(16, k, device=DEVICE) > 0.2
    compiled = torch.compile(_lin_and_hourglass, fullgraph=True, backend=backend)
    results = []
    for run in (compiled, _lin_and_hourglass):
        inputs = (z.clone().requires_grad_(), lam.clone().requires_grad_(), mask)

        def step(run=run, inputs=inputs):
            out = run(*inputs)
            out.square().sum().backward()
            return out, inputs[0].grad, inputs[1].grad

        results.append(run_and_get_code(step) if run is compiled else (step(), []))
    (compiled_results, code), (eager_results, _) = results
    return compiled_results, eager_results, "\n".join(code)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("k", [300, 20000])
def test_compiled_on_cuda_inductor_launches_the_triton_kernels_and_equals_eager(k):
    # On CUDA torch.compile traces into the triton_op operators: inductor's code launches
    # the kernels (rows on chip, or split) and calls no sparsegen operator.
    compiled, eager, code = _compiled_and_eager(k, "inductor")
    for got, expected in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    kernel = "_project_short_kernel" if k <= 16384 else "_split_write_kernel"
    assert kernel in code and "_vjp_" in code
    assert "torch.ops.sparsegen" not in code


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter's route, on CPU")
def test_compiled_interpreted_kernels_run_as_the_opaque_operator_and_equal_eager():
    # The interpreter's kernels cannot be traced into, so under TRITON_INTERPRET=1 the
    # compiled graph calls sparsegen::project with "triton", whose kernels are the same.
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.code)
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    def triton_lin(z, lam, mask):
        import sparsegen as sg

        return sg.sparsegen_lin(z, lam=lam, mask=mask, algorithm="triton")

    z = torch.randn(6, 40)
    lam, mask = torch.full((6, 1), 0.3), torch.rand(6, 40) > 0.2
    compiled = torch.compile(triton_lin, fullgraph=True, backend=backend)
    torch.testing.assert_close(compiled(z, lam, mask), triton_lin(z, lam, mask))
    assert "sparsegen.project.default" in graphs[0] and "project_triton" not in graphs[0]
